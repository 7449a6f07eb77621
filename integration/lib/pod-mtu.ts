// A pod whose MTU is smaller than its cluster's, with real packets on a 2-node harness over a
// jumbo-frame underlay (cluster-overlay-mtu, cluster-native-mtu: the tests are the same, the path is
// not). What does not fit the receiving pod's MTU is handled on its node as a router would handle it
// (fragmented when DF is clear, "fragmentation needed" back to the sender when it is set, so the
// sender learns the path MTU), each segment of a GSO packet included, and only after the pod's policy
// admitted it (bpf/lib/fib.h fits_mtu). Before, the datapath handed such packets to
// bpf_redirect_peer, which on Linux 6.18 delivers them whole (no MTU check at all; kernels that check
// drop them without a word): the pod got packets larger than its MTU, DF or not, and no sender ever
// learnt the path MTU (either file against main's object, 98d8f15: 5 of 16 assertions fail).
import type { Test } from 'tap';
import type { FileCluster } from './cluster-file.ts';
import { eventually, type TestPod } from './cluster.ts';
import { webFromClient } from './cluster-maps.ts';
import { nodeIn, untilListening } from './tcp.ts';
import { frameInfo, sniff } from './raw.ts';
import { handshake } from './probe.ts';

/** The tests, on `fc`'s cluster, whose pods get `podMtu` unless they ask (the underlay's MTU, less
 *  the tunnel's overhead in tunnel mode). */
export function podMtuTests(t: Test, fc: FileCluster, podMtu: number): void {
  const { c, enforce, known } = fc;
  const SMALL = 1500;

  /** One ping of `size` bytes (IP header included), DF set or clear: answered? */
  const ping = (from: TestPod, to: TestPod, size: number, df: boolean) =>
    from.ns.exec('ping', ['-4', '-c', '1', '-W', '3', '-M', df ? 'do' : 'dont', '-s', String(size - 28), to.ip4]).then(
      () => true,
      () => false,
    );

  /** The MTU the sender's kernel has learnt for the path to `to` (its route exception), or 0. */
  const learntMtu = async (from: TestPod, to: TestPod) =>
    Number(/ mtu (\d+)/.exec(await from.ns.exec('ip', ['-4', 'route', 'get', to.ip4]))?.[1] ?? 0);

  t.test("a packet larger than the receiving pod's MTU is forwarded as a router would", async (t) => {
    const [n1, n2] = c.nodes;
    const big = await n1.pod({ app: 'mtu-big' });
    const small = await n2.pod({ app: 'mtu-small' }, undefined, { mtu: SMALL });
    await eventually('pods known', () => known(big) && known(small), 20_000);
    t.match(
      await small.ns.exec('ip', ['-o', 'link', 'show', 'eth0']),
      new RegExp(`mtu ${SMALL} `),
      'the pod has the MTU it asked for',
    );
    const cap = await sniff(small.ns, 30);
    t.ok(await ping(big, small, SMALL, true), 'a packet of its MTU crosses whole (DF)');
    t.ok(await ping(big, small, 3000, false), '3000 bytes with DF clear: fragmented on its node, answered');
    t.equal(await learntMtu(big, small), 0, 'no path MTU learnt so far');
    t.notOk(await ping(big, small, 3000, true), '3000 bytes with DF set: not delivered');
    t.equal(await learntMtu(big, small), SMALL, "but the sender was told (need to frag) and learnt the pod's MTU");
    t.ok(await ping(big, small, podMtu, false), `and ${podMtu} bytes with DF clear still arrive, in fragments`);
    // 1 + 3 + 7 frames as fragments; the capture may still be printing the last ones when ping returns.
    const fromBig = () => cap.frames().filter((f) => f.dir === 'in' && frameInfo(f.frame)?.src === big.ip4);
    await eventually('the capture has every frame', () => fromBig().length >= 11, 10_000, 100).catch(() => undefined);
    await cap.stop();
    const from = fromBig();
    t.ok(from.length >= 11, 'the pod received the packets, in fragments');
    t.same(
      from.filter((f) => f.frame.length > SMALL + 14).map((f) => f.frame.length),
      [],
      'none larger than its MTU (plus the Ethernet header)',
    );
  });

  t.test("a TCP sender told a larger MSS than the pod's MTU (GSO segments above it) learns the MTU", async (t) => {
    const [n1, n2] = c.nodes;
    const big = await n1.pod({ app: 'mtu-gso-big' });
    const small = await n2.pod({ app: 'mtu-gso-small' }, undefined, { mtu: SMALL });
    await eventually('pods known', () => known(big) && known(small), 20_000);
    // The pod advertises an MSS for 8950 bytes though its MTU is 1500 (a pod may set its routes): the
    // sender's segments, GSO packets of ~8.9 KB each, are then larger than its MTU.
    const gw = /default via (\S+)/.exec(await small.ns.exec('ip', ['-4', 'route', 'show', 'default']))![1];
    await small.ns.exec('ip', ['-4', 'route', 'change', 'default', 'via', gw, 'dev', 'eth0', 'advmss', '8910']);
    const sink = nodeIn(
      small.ns,
      `const s = require('net').createServer((c) => { let n = 0; c.on('data', (d) => { n += d.length; if (n >= 4 << 20) c.end('done'); }); });
       s.listen(8090, '0.0.0.0', () => process.stdout.write('listening\\n'));`,
      [],
    );
    t.teardown(() => void sink.kill('SIGKILL'));
    await untilListening(sink, 'sink', 60_000);
    const sent = await big.ns.exec(process.execPath, [
      '-e',
      `const c = require('net').connect(8090, '${small.ip4}', () => c.write(Buffer.alloc(4 << 20)));
       let got = ''; c.on('data', (d) => { got += d; }); c.on('end', () => { process.stdout.write(got); process.exit(0); });
       c.on('error', (e) => { process.stdout.write('error ' + e.code); process.exit(1); });
       setTimeout(() => { process.stdout.write('timeout'); process.exit(2); }, 30000);`,
    ]);
    t.equal(sent, 'done', '4 MiB crossed');
    t.equal(await learntMtu(big, small), SMALL, "the sender was told the pod's MTU (need to frag), as a router tells it");
  });

  t.test("a denied pod's oversized packets are dropped by the policy first: nothing reaches the pod, no ICMP", async (t) => {
    const [n1, n2] = c.nodes;
    const web = await n2.pod({ app: 'web-mtu' }, undefined, { mtu: SMALL });
    const client = await n1.pod({ app: 'client-mtu' });
    const other = await n1.pod({ app: 'other-mtu' });
    const policy = webFromClient('web-mtu', 8091)
      .replace(/app: web$/m, 'app: web-mtu')
      .replace(/app: client$/m, 'app: client-mtu');
    await enforce({ policy, web, port: 8091, admitted: client, denied: other, pods: [web, client, other] });

    const cap = await sniff(web.ns, 30);
    t.notOk(await ping(other, web, 3000, false), 'DF clear: no answer (not even fragments get in)');
    t.notOk(await ping(other, web, 3000, true), 'DF set: no answer');
    t.equal(await learntMtu(other, web), 0, "and no need-to-frag told the denied sender the pod's MTU");
    t.equal(await handshake(other.ns, web.ip4, 8091), 'timeout', 'its TCP handshake still times out');
    await cap.stop();
    t.same(
      cap.frames().filter((f) => f.dir === 'in' && frameInfo(f.frame)?.src === other.ip4),
      [],
      "web's eth0 received nothing from the denied pod",
    );
  });
}
