// The VNI decides, never the inner source address (see cluster-overlay.test.ts): hand-made VXLAN
// datagrams with a forged inner source address get the VNI's identity on the receiving node; a VNI
// claiming "host" is remote-node; an outer source that is no node of the cluster is dropped
// (UNKNOWN_SENDER), a pod crafting VXLAN included, and so is the node's own address when a stale node
// record puts it in the tunnel map; a datagram on the wire to another MAC than the
// node's is not taken; ECN crosses both short-cuts as it crosses the tunnel device (RFC 6040).
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import crypto from 'node:crypto';
import { eventually, type TestCluster } from './lib/cluster.ts';
import { readTunnelMap, webFromClient } from './lib/cluster-maps.ts';
import { handshake, probe } from './lib/probe.ts';
import { ping } from './lib/netns.ts';
import { sniff, frameInfo, sendFrames } from './lib/raw.ts';
import { flowsOf, flowsUntil, sendUdp, sendUdpNoChecksum, vxlanOf, vxlanPayload } from './lib/vxlan.ts';
import { execFileSync } from 'node:child_process';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { encode, type NodeRecord } from '../shared/src/kvstore/layout.ts';
import { eth, ETH_P, ipv4, ipv4Checksum, PROTO, tcp, TCP_FLAGS, udp, withChecksum } from '../shared/src/bpf/packets.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, known, serve } = clusterForFile(t, {
  nodes: 3,
  clusterPoolIpv6: `fd00:${crypto.randomInt(1, 0xffff).toString(16)}::/104`,
});

const importPolicy = (text: string) => new PolicyClient(c.nodes[2].client).import(text);
const metricsDrops = async (n: TestCluster['nodes'][number], reason: string) =>
  (await n.client.request<{ drops: { reason: string; packets: number }[] }>('GET', '/v1/bpf/metrics')).drops.find(
    (d) => d.reason === reason,
  )?.packets ?? 0;

/** Packets the node's tunnel device has received (ip -s link). */
const tunnelRx = (n: TestCluster['nodes'][number]): number =>
  (
    JSON.parse(
      execFileSync('nsenter', [`--net=${n.netns.path}`, 'ip', '-s', '-j', 'link', 'show', 'membrane_vxlan'], {
        encoding: 'utf8',
      }),
    ) as { stats64: { rx: { packets: number } } }[]
  )[0].stats64.rx.packets;

t.test(
  'the VNI decides, never the inner source address: forged VXLAN from a node, a host claim, a stranger, a pod',
  async (t) => {
    const [n1, n2] = c.nodes;
    const web = await n2.pod({ app: 'web-vni' });
    const client = await n1.pod({ app: 'client-vni' });
    const other = await n1.pod({ app: 'other-vni' });
    await serve(web, 8083);
    await eventually('pods known', () => known(web) && known(client) && known(other), 20_000);
    await importPolicy(
      webFromClient('web-vni', 8083)
        .replace(/app: web$/m, 'app: web-vni')
        .replace(/app: client$/m, 'app: client-vni'),
    );
    await eventually(
      'enforced',
      async () => (await handshake(other.ns, web.ip4, 8083)) === 'timeout' && (await probe(client.ns, web.ip4, 8083)) === 'ok',
      20_000,
      200,
    );

    let sport = 40000 + crypto.randomInt(0, 20000);
    const syn = (src: string) => {
      const l4 = withChecksum(4, src, web.ip4, PROTO.TCP, tcp(++sport, 8083, TCP_FLAGS.SYN, crypto.randomInt(1, 2 ** 31)));
      return {
        sport,
        frame: eth('02:00:00:00:00:01', '02:00:00:00:00:02', ETH_P.IPV4, ipv4({ src, dst: web.ip4, proto: PROTO.TCP }, l4)),
      };
    };
    const at = (port: number) => (f: { l4?: { TCP?: { sourcePort: number } }; IP?: { destination: string } }) =>
      f.l4?.TCP?.sourcePort === port && f.IP?.destination === web.ip4;

    // Each forged datagram twice: with a UDP checksum (the tunnel device, then from_tunnel) and without
    // one, as Membrane's nodes send it (taken apart on n2's underlay device by from_underlay, vxlan_rx.c,
    // which never passes it to the tunnel device).
    for (const [how, send] of [
      ['with a UDP checksum', sendUdp],
      ['without a UDP checksum (the underlay short-cut)', sendUdpNoChecksum],
    ] as const) {
      t.comment(how);
      const tunnelRx0 = tunnelRx(n2);
      // 1. VNI of a denied identity, inner source of the allowed one: dropped, with the VNI's identity.
      const s1 = syn(client.ip4);
      await send(n1.netns, n2.ip, 8472, vxlanPayload(other.endpoint.identity, s1.frame));
      const [f1] = await flowsUntil('n2 reports the forged packet', n2.observerSocket, at(s1.sport));
      t.equal(f1.verdict, 'DROPPED', `inner source ${client.ip4} (client) under VNI ${other.endpoint.identity} (other): dropped`);
      t.equal(f1.source?.identity, other.endpoint.identity, "the flow names the VNI's identity, not the inner address's");

      // 2. VNI of the allowed identity, inner source of the denied one: admitted as the VNI's identity.
      const cap = await sniff(web.ns, 15);
      const s2 = syn(other.ip4);
      await send(n1.netns, n2.ip, 8472, vxlanPayload(client.endpoint.identity, s2.frame));
      const [f2] = await flowsUntil('n2 reports the second packet', n2.observerSocket, at(s2.sport));
      t.not(f2.verdict, 'DROPPED', `inner source ${other.ip4} (other) under VNI ${client.endpoint.identity} (client): admitted`);
      t.equal(f2.source?.identity, client.endpoint.identity, 'as client, the identity the VNI carries');
      const synSeen = () =>
        cap.frames().some((x) => {
          const i = frameInfo(x.frame);
          return x.dir === 'in' && i?.src === other.ip4 && i.sport === s2.sport && (i.flags & TCP_FLAGS.SYN) !== 0;
        });
      await eventually('the SYN reached web', synSeen, 10_000, 100).catch(() => undefined);
      await cap.stop();
      t.ok(synSeen(), "and web's eth0 received the SYN");

      // 3. A VNI claiming "host" is another node's host: remote-node, which this policy does not allow.
      const s3 = syn(client.ip4);
      await send(n1.netns, n2.ip, 8472, vxlanPayload(1, s3.frame));
      const [f3] = await flowsUntil('n2 reports the host claim', n2.observerSocket, at(s3.sport));
      t.equal(f3.verdict, 'DROPPED', 'VNI 1 (host) from another node: dropped');
      t.equal(f3.source?.identity, 6, "as remote-node: a tunnel never speaks for this node's host");
      t.equal(await probe(n2.netns, web.ip4, 8083, 5000), 'ok', "while n2's own host still reaches web");

      // 4. The same datagram from an address that is no node (the control-plane netns): dropped unseen.
      const before = await metricsDrops(n2, 'UNKNOWN_SENDER');
      const s4 = syn(client.ip4);
      for (let i = 0; i < 3; i++) await send(c.control, n2.ip, 8472, vxlanPayload(client.endpoint.identity, s4.frame));
      await eventually(
        'UNKNOWN_SENDER counted on n2',
        async () => (await metricsDrops(n2, 'UNKNOWN_SENDER')) >= before + 3,
        10_000,
        200,
      );
      t.equal(
        await metricsDrops(n2, 'UNKNOWN_SENDER'),
        before + 3,
        "a stranger's VXLAN is dropped as UNKNOWN_SENDER, whatever VNI it claims",
      );
      t.same(await flowsOf(n2.observerSocket, at(s4.sport)), [], 'and never reaches policy or a pod');
      if (send === sendUdpNoChecksum)
        t.equal(
          tunnelRx(n2) - tunnelRx0,
          3,
          "n2's tunnel device saw only the stranger's 3 datagrams: from_underlay decided the rest",
        );
    }

    // 5. A pod crafting VXLAN itself: to another node's tunnel port (the datagram travels through the
    //    tunnel as the pod's own traffic, then meets the device again) and to its own node's. The VXLAN
    //    comes from a pod address, which lies in a pod CIDR's tunnel entry but is no node: dropped.
    const [before1, before2] = [await metricsDrops(n1, 'UNKNOWN_SENDER'), await metricsDrops(n2, 'UNKNOWN_SENDER')];
    const s5 = syn(client.ip4);
    const s6 = syn(client.ip4);
    for (let i = 0; i < 3; i++) {
      await sendUdp(other.ns, n2.ip, 8472, vxlanPayload(client.endpoint.identity, s5.frame));
      await sendUdp(other.ns, n1.ip, 8472, vxlanPayload(client.endpoint.identity, s6.frame));
    }
    await eventually(
      'UNKNOWN_SENDER counted on n1 and n2',
      async () =>
        (await metricsDrops(n2, 'UNKNOWN_SENDER')) >= before2 + 3 && (await metricsDrops(n1, 'UNKNOWN_SENDER')) >= before1 + 3,
      10_000,
      200,
    );
    t.equal(await metricsDrops(n2, 'UNKNOWN_SENDER'), before2 + 3, "a pod's VXLAN to n2's tunnel port: UNKNOWN_SENDER on n2");
    t.equal(
      await metricsDrops(n1, 'UNKNOWN_SENDER'),
      before1 + 3,
      "a pod's VXLAN to its own node's tunnel port: UNKNOWN_SENDER on n1",
    );
    for (const n of [n1, n2])
      t.same(
        await flowsOf(n.observerSocket, (f) => [s5.sport, s6.sport].includes(f.l4?.TCP?.sourcePort ?? 0)),
        [],
        `the forged SYNs reach no policy on ${n.name}`,
      );
    await new PolicyClient(n1.client).delete(['web-vni']);
  },
);

const macOf = (n: TestCluster['nodes'][number]) =>
  (
    JSON.parse(execFileSync('nsenter', [`--net=${n.netns.path}`, 'ip', '-j', 'link', 'show', 'eth0'], { encoding: 'utf8' })) as {
      address: string;
    }[]
  )[0].address;

t.test("a VXLAN frame sent to another MAC than the node's is not its to take (the stack drops it too)", async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-mac' });
  const client = await n1.pod({ app: 'client-mac' });
  await serve(web, 8086);
  await eventually('pods known', () => known(web) && known(client), 20_000);
  let sport = 40000 + crypto.randomInt(0, 20000);
  // n1's own VXLAN datagram (outer n1 -> n2, no UDP checksum, VNI = client's identity), on the wire
  // to `dmac`: the same bytes as the short-cut takes, but for a MAC that is or is not n2's.
  const datagram = (dmac: string) => {
    const l4 = withChecksum(4, client.ip4, web.ip4, PROTO.TCP, tcp(++sport, 8086, TCP_FLAGS.SYN, crypto.randomInt(1, 2 ** 31)));
    const inner = eth(
      '02:00:00:00:00:01',
      '02:00:00:00:00:02',
      ETH_P.IPV4,
      ipv4({ src: client.ip4, dst: web.ip4, proto: PROTO.TCP }, l4),
    );
    const outer = ipv4(
      { src: n1.ip, dst: n2.ip, proto: PROTO.UDP },
      udp(50000, 8472, vxlanPayload(client.endpoint.identity, inner)),
    );
    return { sport, frame: eth(dmac, macOf(n1), ETH_P.IPV4, outer) };
  };
  const at = (port: number) => (f: { l4?: { TCP?: { sourcePort: number } } }) => f.l4?.TCP?.sourcePort === port;
  const foreign = datagram('02:00:5e:7f:ee:02');
  const own = datagram(macOf(n2));
  // The underlay is a bridge: a frame for a MAC it has not learnt reaches every port, n2's included.
  await sendFrames(n1.netns, [foreign.frame, own.frame]);
  const reached = await flowsUntil('n2 reports the datagram sent to its own MAC', n2.observerSocket, at(own.sport));
  t.equal(
    reached[0].source?.identity,
    client.endpoint.identity,
    "the datagram to n2's MAC reached policy on n2, as the VNI's identity",
  );
  t.same(await flowsOf(n2.observerSocket, at(foreign.sport)), [], 'the one sent to a foreign MAC, just before it, did not');
});

const SEND_TOS = `import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(sys.argv[3]))
s.sendto(b'ecn', (sys.argv[1], int(sys.argv[2])))`;

/** An IPv4 packet (header first) with its TOS byte replaced and the header checksum redone (or broken). */
const withTos = (packet: Buffer, tos: number, badChecksum = false): Buffer => {
  const b = Buffer.from(packet);
  b[1] = tos;
  b.writeUInt16BE(0, 10);
  b.writeUInt16BE(ipv4Checksum(b.subarray(0, 20)) ^ (badChecksum ? 0x0101 : 0), 10);
  return b;
};

t.test('ECN crosses the short-cuts as the tunnel device carries it (RFC 6040); a bad outer checksum is not taken', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-ecn' });
  const client = await n1.pod({ app: 'client-ecn' });
  await eventually('pods known', () => known(web) && known(client), 20_000);

  // Send (vxlan_tx.h): the outer TOS's ECN field follows the inner packet's, CE leaving as ECT(0).
  const port = 20000 + crypto.randomInt(0, 20000);
  const cap = await sniff(c.underlay, 20, 'n1'); // n1's port on the underlay bridge
  for (const tos of [0, 1, 2, 3]) await client.ns.exec('python3', ['-c', SEND_TOS, web.ip4, String(port + tos), String(tos)]);
  const outerEcn = (tos: number) =>
    cap
      .frames()
      .filter((x) => {
        const v = vxlanOf(x.frame);
        return v?.inner?.src === client.ip4 && v.inner.dport === port + tos;
      })
      .map((x) => x.frame[15] & 3);
  const all = () => [0, 1, 2, 3].every((tos) => outerEcn(tos).length > 0);
  await eventually('the four datagrams on the underlay', all, 10_000, 100).catch(() => undefined);
  await cap.stop();
  t.same(
    [0, 1, 2, 3].map(outerEcn),
    [[0], [1], [2], [2]],
    'outer ECN of Not-ECT, ECT(1), ECT(0), CE inner packets: Not-ECT, ECT(1), ECT(0), ECT(0)',
  );

  // Receive (vxlan_rx.c): n1's datagrams (no UDP checksum, as the short-cut takes them) with an outer CE.
  const datagram = (dport: number, innerTos: number, outerTos: number, badChecksum = false) => {
    const inner = withTos(
      ipv4({ src: client.ip4, dst: web.ip4, proto: PROTO.UDP }, udp(40000, dport, Buffer.from('ecn'))),
      innerTos,
    );
    const frame = eth('02:00:00:00:00:01', '02:00:00:00:00:02', ETH_P.IPV4, inner);
    const outer = ipv4(
      { src: n1.ip, dst: n2.ip, proto: PROTO.UDP },
      udp(50000, 8472, vxlanPayload(client.endpoint.identity, frame)),
    );
    return eth(macOf(n2), macOf(n1), ETH_P.IPV4, withTos(outer, outerTos, badChecksum));
  };
  // br_netfilter validates IPv4 headers on a bridge whose netns calls iptables (every new netns does:
  // net.bridge.bridge-nf-call-iptables is per netns, the per-bridge nf_call_iptables can only add to
  // it) and would drop the broken header before n2: off in the underlay's netns, ours alone, so the
  // bridge forwards it as a switch would and vxlan_rx's own check is what stops it.
  execFileSync('nsenter', [`--net=${c.underlay.path}`, 'sysctl', '-qw', 'net.bridge.bridge-nf-call-iptables=0']);
  const onPort = await sniff(c.underlay, 20, 'n2'); // n2's port on the underlay bridge
  const inPod = await sniff(web.ns, 20);
  const arrived = (dport: number) =>
    inPod
      .frames()
      .filter((x) => x.dir === 'in' && frameInfo(x.frame)?.src === client.ip4 && frameInfo(x.frame)?.dport === dport)
      .map((x) => x.frame[15] & 3);
  // Not-ECT inside an outer CE (vxlan_rcv drops it), a datagram with a broken outer header checksum
  // (vxlan_rx leaves it to ip_rcv, which drops it), then ECT(0) and ECT(1) inside an outer CE: both
  // arrive as CE.
  await sendFrames(n1.netns, [
    datagram(port + 1, 0, 3),
    datagram(port + 2, 2, 0, true),
    datagram(port, 2, 3),
    datagram(port, 1, 3),
  ]);
  await eventually('two datagrams reached web', () => arrived(port).length >= 2, 10_000, 100).catch(() => undefined);
  await inPod.stop();
  const toN2 = (await onPort.stop()).filter((x) => vxlanOf(x.frame)?.inner?.dport === port + 2);
  t.equal(toN2.length, 1, 'the datagram with the broken outer checksum reached n2 (the bridge forwarded it)');
  t.same(arrived(port), [3, 3], 'ECT(0) and ECT(1) inside an outer CE: web received both as CE (its header checksum redone)');
  t.same(arrived(port + 1), [], 'Not-ECT inside an outer CE: dropped, sent before them');
  t.same(arrived(port + 2), [], 'a broken outer header checksum: dropped, sent before them');
});

t.test("a stale node record holding a node's own address does not make that address a sender on it", async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-self' });
  const client = await n1.pod({ app: 'client-self' });
  await eventually('pods known', () => known(web) && known(client), 20_000);
  // A node record under another name at n2's address (a node renamed or replaced while the old
  // record's lease runs). n2 keeps its own address out of its tunnel map, and its datapath refuses
  // that address as a sender whatever the map says.
  const ghost = `ghost-${crypto.randomBytes(3).toString('hex')}`;
  const ghostCidr = `10.255.${crypto.randomInt(0, 256)}.0/24`;
  const lease = await c.kv.grantLease(60);
  t.teardown(() => lease.revoke());
  const now = new Date().toISOString();
  const record: NodeRecord = {
    name: ghost,
    cluster: c.name,
    addresses: [{ type: 'InternalIP', ip: n2.ip }],
    podCidrs: { ipv4: ghostCidr },
    nodeId: 4000,
    agentVersion: 'test',
    registeredAt: now,
    updatedAt: now,
  };
  await c.kv.put(c.L.node(ghost), encode(record), { lease: lease.id });
  await eventually('n2 applied the stale record', () => readTunnelMap(n2.bpffsDir).has(ghostCidr), 20_000, 200);
  t.notOk(readTunnelMap(n2.bpffsDir).has(`${n2.ip}/32`), 'n2 keeps its own address out of its tunnel map');
  t.ok(await ping(web.ns, n2.ip, 2), "so a pod on n2 still reaches n2's own address (not through the tunnel)");

  let sport = 40000 + crypto.randomInt(0, 20000);
  const inner = () => {
    const l4 = withChecksum(4, client.ip4, web.ip4, PROTO.TCP, tcp(++sport, 8087, TCP_FLAGS.SYN, crypto.randomInt(1, 2 ** 31)));
    return eth(
      '02:00:00:00:00:01',
      '02:00:00:00:00:02',
      ETH_P.IPV4,
      ipv4({ src: client.ip4, dst: web.ip4, proto: PROTO.TCP }, l4),
    );
  };
  const before = await metricsDrops(n2, 'UNKNOWN_SENDER');
  // 1. On the wire from n1's port, outer source n2's address (no UDP checksum: what vxlan_rx takes).
  const wire = inner();
  const wirePort = sport;
  const outer = ipv4(
    { src: n2.ip, dst: n2.ip, proto: PROTO.UDP },
    udp(50000, 8472, vxlanPayload(client.endpoint.identity, wire)),
  );
  await sendFrames(n1.netns, [eth(macOf(n2), macOf(n1), ETH_P.IPV4, outer)]);
  // 2. From n2's own host (any local process can): to its tunnel port over lo, the tunnel device and
  //    from_tunnel, the outer source n2's address again.
  const local = inner();
  const localPort = sport;
  await sendUdp(n2.netns, n2.ip, 8472, vxlanPayload(client.endpoint.identity, local));
  await eventually(
    'both counted as UNKNOWN_SENDER on n2',
    async () => (await metricsDrops(n2, 'UNKNOWN_SENDER')) >= before + 2,
    10_000,
    200,
  );
  t.equal(await metricsDrops(n2, 'UNKNOWN_SENDER'), before + 2, 'both datagrams dropped as UNKNOWN_SENDER');
  t.same(
    await flowsOf(n2.observerSocket, (f) => [wirePort, localPort].includes(f.l4?.TCP?.sourcePort ?? 0)),
    [],
    'neither inner SYN reached policy or a pod on n2',
  );
});
