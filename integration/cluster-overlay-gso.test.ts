// A forged GSO datagram through the overlay, with real packets on the 2-node harness (see
// cluster-overlay-vni.test.ts for single datagrams): one 8 KiB VXLAN skb on the wire, its VNI and inner
// source of our choosing, from a netns of ours on the underlay holding n1's address, is judged like any
// other datagram: by its VNI, never its inner source, against the destination pod's policy, and
// delivered whole or dropped whole, by from_underlay (bpf/vxlan_rx.c) before the tunnel device.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { webFromClient } from './lib/cluster-maps.ts';
import { frameInfo, sendGsoFrame, sniff } from './lib/raw.ts';
import { flowsUntil } from './lib/vxlan.ts';
import type { Flow } from '../shared/src/flows/types.ts';
import { eth, ETH_P, ipv4, PROTO, tcp, TCP_FLAGS } from '../shared/src/bpf/packets.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, enforce } = clusterForFile(t, { nodes: 2 });

const inNs = (path: string, ...args: string[]) => execFileSync('nsenter', [`--net=${path}`, ...args], { encoding: 'utf8' });
/** Packets the node's tunnel device has received (ip -s link). */
const tunnelRx = (path: string) =>
  (JSON.parse(inNs(path, 'ip', '-s', '-j', 'link', 'show', 'membrane_vxlan')) as { stats64: { rx: { packets: number } } }[])[0]
    .stats64.rx.packets;
/** The TCP checksum field of a packet the kernel is to checksum (CHECKSUM_PARTIAL): the pseudo-header sum. */
const pseudoSum = (src: string, dst: string, len: number) => {
  let s = PROTO.TCP + len;
  for (const ip of [src, dst]) for (const [i, x] of ip.split('.').map(Number).entries()) s += i % 2 ? x : x << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
};

t.test("a forged GSO datagram gets the VNI's identity and the pod's policy, as a whole", async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-gso' });
  const client = await n1.pod({ app: 'client-gso' });
  const other = await n1.pod({ app: 'other-gso' });
  const policy = webFromClient('web-gso', 8087)
    .replace(/app: web$/m, 'app: web-gso')
    .replace(/app: client$/m, 'app: client-gso');
  await enforce({ policy, web, port: 8087, admitted: client, denied: other, pods: [web, client, other] });

  // An impostor on the underlay with n1's address (it never answers ARP for it, and knows n2's MAC, so
  // nobody's neighbour entry changes), sending through kernel VXLAN devices of its own (no UDP
  // checksum, as Membrane's nodes send): one per VNI, each fed a TCP GSO frame by a packet socket.
  const imp = c.addExternal();
  const n2mac = (JSON.parse(inNs(n2.netns.path, 'ip', '-j', 'link', 'show', 'eth0')) as { address: string }[])[0].address;
  inNs(imp.ns.path, 'sysctl', '-qw', 'net.ipv4.conf.eth0.arp_ignore=8');
  // No IPv6 on its devices: their router solicitations and MLD reports would cross too.
  inNs(imp.ns.path, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1');
  inNs(imp.ns.path, 'ip', 'addr', 'replace', `${n1.ip}/32`, 'dev', 'eth0');
  inNs(imp.ns.path, 'ip', 'neigh', 'replace', n2.ip, 'lladdr', n2mac, 'dev', 'eth0', 'nud', 'permanent');
  const vxlan = (vni: number) => {
    const dev = `vxg${vni}`;
    const how = ['id', String(vni), 'local', n1.ip, 'remote', n2.ip, 'dstport', '8472', 'noudpcsum', 'nolearning'];
    inNs(imp.ns.path, 'ip', 'link', 'add', dev, 'type', 'vxlan', ...how);
    inNs(imp.ns.path, 'ip', 'link', 'set', dev, 'up');
    return dev;
  };
  let sport = 40000 + crypto.randomInt(0, 20000);
  const payload = crypto.randomBytes(8192);
  /** A data segment of 8 KiB (PSH|ACK, no handshake before it) from `src` to web:8087. */
  const segment = (src: string) => {
    const l4 = Buffer.concat([tcp(++sport, 8087, TCP_FLAGS.PSH | TCP_FLAGS.ACK, crypto.randomInt(1, 2 ** 31), 1), payload]);
    l4.writeUInt16BE(pseudoSum(src, web.ip4, l4.length), 16);
    return {
      sport,
      frame: eth('02:00:00:00:00:02', '02:00:00:00:00:01', ETH_P.IPV4, ipv4({ src, dst: web.ip4, proto: PROTO.TCP }, l4)),
    };
  };
  const at = (port: number) => (f: Flow) => f.l4?.TCP?.sourcePort === port && f.IP?.destination === web.ip4;
  const seenWhole = (cap: Awaited<ReturnType<typeof sniff>>, src: string, port: number) =>
    cap.frames().filter((x) => {
      const i = frameInfo(x.frame);
      return x.dir === 'in' && i?.src === src && i.sport === port;
    });

  const rx0 = tunnelRx(n2.netns.path);
  // 1. VNI of the denied identity, inner source of the allowed one: dropped whole, as the VNI's identity.
  const cap = await sniff(web.ns, 20);
  const s1 = segment(client.ip4);
  await sendGsoFrame(imp.ns, s1.frame, 1398, vxlan(other.endpoint.identity));
  const [f1] = await flowsUntil('n2 reports the forged datagram', n2.observerSocket, at(s1.sport));
  t.equal(f1.verdict, 'DROPPED', `inner source ${client.ip4} (client) under VNI ${other.endpoint.identity} (other): dropped`);
  t.equal(f1.source?.identity, other.endpoint.identity, "the flow names the VNI's identity, not the inner address's");

  // 2. VNI of the allowed identity, inner source of the denied one: admitted as the VNI's, in one piece.
  const s2 = segment(other.ip4);
  await sendGsoFrame(imp.ns, s2.frame, 1398, vxlan(client.endpoint.identity));
  const [f2] = await flowsUntil('n2 reports the second datagram', n2.observerSocket, at(s2.sport));
  t.not(f2.verdict, 'DROPPED', `inner source ${other.ip4} (other) under VNI ${client.endpoint.identity} (client): admitted`);
  t.equal(f2.source?.identity, client.endpoint.identity, 'as client, the identity the VNI carries');
  await eventually('the segment reached web', () => seenWhole(cap, other.ip4, s2.sport).length > 0, 10_000, 100).catch(
    () => undefined,
  );
  await cap.stop();
  const got = seenWhole(cap, other.ip4, s2.sport);
  t.equal(got.length, 1, "web's eth0 received it once");
  t.equal(got[0]?.frame.length, s2.frame.length, 'whole: one GSO packet of 8 KiB, not segments');
  t.same(seenWhole(cap, client.ip4, s1.sport), [], 'and nothing of the dropped one');
  t.equal(tunnelRx(n2.netns.path) - rx0, 0, "n2's tunnel device saw neither: from_underlay decided both");
});
