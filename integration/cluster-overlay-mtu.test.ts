// A pod whose MTU is smaller than the overlay's (tunnel mode over a jumbo-frame underlay: MTU 9000,
// pods get 8950 unless they ask for less): integration/lib/pod-mtu.ts says what is tested and why. The
// short-cut (bpf/vxlan_rx.c) leaves what does not fit the pod to the tunnel device, whose from_tunnel
// hands it to the stack once the pod's policy admitted it; what fits still takes the short-cut.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { podMtuTests } from './lib/pod-mtu.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const fc = clusterForFile(t, { nodes: 2, underlayMtu: 9000 });
podMtuTests(t, fc, 8950);

t.test('what fits a 1500-MTU pod still takes the receive short-cut: the tunnel device sees none of it', async (t) => {
  const [n1, n2] = fc.c.nodes;
  const big = await n1.pod({ app: 'mtu-fast-big' });
  const small = await n2.pod({ app: 'mtu-fast-small' }, undefined, { mtu: 1500 });
  await eventually('pods known', () => fc.known(big) && fc.known(small), 20_000);
  const tunnelRx = () =>
    (
      JSON.parse(
        execFileSync('nsenter', [`--net=${n2.netns.path}`, 'ip', '-s', '-j', 'link', 'show', 'membrane_vxlan'], {
          encoding: 'utf8',
        }),
      ) as { stats64: { rx: { packets: number } } }[]
    )[0].stats64.rx.packets;
  const rx0 = tunnelRx();
  await big.ns.exec('ping', ['-4', '-c', '5', '-i', '0.2', '-W', '3', '-M', 'do', '-s', String(1500 - 28), small.ip4]);
  t.equal(tunnelRx() - rx0, 0, "five pings of the pod's MTU (DF) crossed without the tunnel device");
});
