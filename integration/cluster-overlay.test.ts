// Pods on different nodes through the VXLAN overlay (cluster mode's default), on the 3-node harness,
// with real packets:
//   * ping and TCP between pods on two nodes, IPv4 and IPv6; pods get the underlay MTU minus 50; the
//     underlay carries VXLAN between the nodes and never a pod address, and the VNI is the sender's
//     security identity;
//   * policy across nodes: labels (allowed, default deny), an egress deny, entities (remote-node,
//     host), CIDR rules; a drop is reported by the node that dropped, naming the sender's identity;
//   * the VNI decides: hand-made VXLAN datagrams with a forged inner source address get the VNI's
//     identity on the receiving node; a VNI claiming "host" is remote-node; an outer source that is no
//     node of the cluster is dropped (UNKNOWN_SENDER), a pod crafting VXLAN included.
import t from 'tap';
import crypto from 'node:crypto';
import { startCluster, eventually, type TestCluster, type TestPod } from './lib/cluster.ts';
import { readIpcache, webFromClient } from './lib/cluster-maps.ts';
import { ping } from './lib/netns.ts';
import { startEchoServer, killAll } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { sniff, frameInfo } from './lib/raw.ts';
import { flowsOf, sendUdp, tcpDport, vxlanOf, vxlanPayload } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { eth, ETH_P, ipv4, PROTO, tcp, TCP_FLAGS, withChecksum } from '../shared/src/bpf/packets.ts';
import { execFileSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { REPO } from './lib/agent.ts';
import type { Flow } from '../shared/src/flows/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

let c: TestCluster;
const servers: ChildProcess[] = [];
t.before(async () => {
  c = await startCluster({ nodes: 3, clusterPoolIpv6: `fd00:${crypto.randomInt(1, 0xffff).toString(16)}::/104` });
});
t.teardown(async () => {
  killAll(servers);
  await c?.cleanup();
});

const known = (pod: TestPod) =>
  c.nodes.filter((n) => n !== pod.node).every((n) => readIpcache(n.bpffsDir).get(`${pod.ip4}/32`) === pod.endpoint.identity);
const serve = async (pod: { ns: TestPod['ns'] }, port: number) => {
  servers.push(await startEchoServer(pod.ns, port, '::'));
};
const importPolicy = (text: string) => new PolicyClient(c.nodes[2].client).import(text);
const metricsDrops = async (n: TestCluster['nodes'][number], reason: string) =>
  (await n.client.request<{ drops: { reason: string; packets: number }[] }>('GET', '/v1/bpf/metrics')).drops.find(
    (d) => d.reason === reason,
  )?.packets ?? 0;

t.test(
  'pods on two nodes talk through the overlay: ping and TCP over IPv4 and IPv6, MTU 1450, only VXLAN on the underlay, VNI = identity',
  async (t) => {
    const [n1, n2] = c.nodes;
    const a = await n1.pod({ app: 'a' });
    const b = await n2.pod({ app: 'b' });
    t.ok(a.ip6 && b.ip6, `dual-stack pods: ${a.ip4} ${a.ip6} on n1, ${b.ip4} ${b.ip6} on n2`);
    await serve(b, 8080);
    await eventually('a and b known on the other nodes', () => known(a) && known(b), 20_000);
    const mtu = await a.ns.exec('ip', ['-o', 'link', 'show', 'eth0']);
    t.match(mtu, /mtu 1450/, 'the pod gets the underlay MTU (1500) minus 50');

    const cap = await sniff(c.underlay, 30, 'n1'); // n1's port on the underlay bridge
    t.ok(await ping(a.ns, b.ip4, 3), 'ping IPv4 n1 -> n2');
    t.ok(await ping(b.ns, a.ip4, 3), 'ping IPv4 n2 -> n1');
    t.ok(await ping(a.ns, b.ip6, 3), 'ping IPv6 n1 -> n2');
    t.equal(await probe(a.ns, b.ip4, 8080, 3000), 'ok', 'TCP IPv4 n1 -> n2');
    t.equal(await probe(a.ns, b.ip6, 8080, 3000), 'ok', 'TCP IPv6 n1 -> n2');
    const big = await a.ns.exec('ping', ['-4', '-c', '1', '-W', '3', '-M', 'do', '-s', String(1450 - 28), b.ip4]).then(
      () => true,
      () => false,
    );
    t.ok(big, 'a full-MTU packet (1450 bytes, DF) crosses without fragmentation');
    const frames = await cap.stop();

    const nodeIps = new Set(c.nodes.map((n) => n.ip));
    const pods = new Set([a.ip4, b.ip4, a.ip6, b.ip6]);
    const infos = frames.map((f) => ({ f: f.frame, i: frameInfo(f.frame) })).filter((x) => x.i);
    const between = infos.filter((x) => nodeIps.has(x.i!.src) && nodeIps.has(x.i!.dst));
    t.ok(between.length >= 10, `${between.length} frames between the nodes captured on the underlay`);
    t.same(
      between.filter((x) => !(x.i!.proto === 17 && x.i!.dport === 8472)).map((x) => x.i),
      [],
      'every one of them is VXLAN (UDP 8472)',
    );
    t.same(
      infos.filter((x) => pods.has(x.i!.src) || pods.has(x.i!.dst)).map((x) => x.i),
      [],
      'no pod address on the underlay',
    );
    const fromA = between.map((x) => vxlanOf(x.f)).filter((v) => v?.inner && (v.inner.src === a.ip4 || v.inner.src === a.ip6));
    t.ok(fromA.length >= 3, `${fromA.length} of a's packets seen inside VXLAN`);
    t.same(
      [...new Set(fromA.map((v) => v!.vni))],
      [a.endpoint.identity],
      `their VNI is a's security identity (${a.endpoint.identity})`,
    );
    const fromB = between.map((x) => vxlanOf(x.f)).filter((v) => v?.inner?.src === b.ip4);
    t.same(
      [...new Set(fromB.map((v) => v!.vni))],
      [b.endpoint.identity],
      `b's replies carry b's identity (${b.endpoint.identity})`,
    );
    const inN1 = (...args: string[]) => execFileSync('nsenter', [`--net=${n1.netns.path}`, ...args], { encoding: 'utf8' });
    const vxlans = inN1('ip', '-d', '-o', 'link', 'show', 'type', 'vxlan').split('\n').filter(Boolean);
    t.equal(vxlans.length, 1, `one VXLAN device on n1 for both other nodes, none per peer:\n${vxlans.join('\n')}`);
    t.match(vxlans[0], /membrane_vxlan.* external .*dstport 8472/, 'collect_md (external), UDP 8472');
    t.equal(
      inN1('bridge', 'fdb', 'show', 'dev', 'membrane_vxlan').trim(),
      '',
      'and no FDB entries (the tunnel map decides where a packet goes)',
    );
    const cli = (...args: string[]) =>
      execFileSync(
        process.execPath,
        ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), '--socket', n1.socket, ...args],
        { encoding: 'utf8', cwd: REPO },
      );
    const cidr2 = (await n2.client.status()).cluster!.podCidrs.ipv4!;
    const esc = (s: string) => s.replace(/[.:/]/g, (ch) => `\\${ch}`);
    const tunnels = cli('bpf', 'tunnel', 'list');
    t.match(
      tunnels,
      new RegExp(`^${esc(cidr2)}\\s+${esc(n2.ip)}\\s+${n2.name}\\s`, 'm'),
      `membrane bpf tunnel list on n1 maps n2's pods to n2's address, by name:\n${tunnels}`,
    );
    const json = JSON.parse(cli('bpf', 'tunnel', 'list', '-o', 'json')) as {
      config: { tunnelIfindex: number };
      entries: { prefix: string; endpoint: string; node?: string }[];
    };
    t.ok(json.config.tunnelIfindex > 0, 'the tunnel device is configured');
    t.same(
      json.entries
        .filter((e) => e.node === n2.name)
        .map((e) => e.endpoint)
        .filter((ip, i, all) => all.indexOf(ip) === i),
      [n2.ip],
      "-o json: every entry of n2 goes to n2's address",
    );
    t.notOk(
      json.entries.some((e) => e.node === n1.name),
      'n1 has no tunnel entry to itself',
    );
    const nodes = parseYaml(cli('node', 'list', '-o', 'yaml')) as {
      name: string;
      addresses: { ip: string }[];
      podCidrs: { ipv4?: string };
    }[];
    t.same(
      nodes.map((n) => n.name),
      ['n1', 'n2', 'n3'],
      'membrane node list -o yaml: the nodes as YAML',
    );
    t.match(
      nodes.find((n) => n.name === 'n2'),
      { addresses: [{ ip: n2.ip }], podCidrs: { ipv4: cidr2 } },
      'n2 with its address and the pod CIDR the tunnel map routes to it',
    );
  },
);

t.test('nodes and remote pods: node -> remote pod and pod -> remote node both work', async (t) => {
  const [n1, n2] = c.nodes;
  const p = await n1.pod({ app: 'node-peer' });
  await serve(p, 8090);
  servers.push(await startEchoServer(n2.netns, 8091, '0.0.0.0'));
  t.ok(await ping(n2.netns, p.ip4, 2), 'node n2 pings a pod on n1');
  t.equal(await probe(n2.netns, p.ip4, 8090, 3000), 'ok', 'node n2 connects to a pod on n1');
  t.equal(await probe(p.ns, n2.ip, 8091, 3000), 'ok', "the pod on n1 connects to node n2's address");
});

t.test(
  "policy across nodes: the receiving node enforces with the sender's identity; each node reports its own drops",
  async (t) => {
    const [n1, n2] = c.nodes;
    const web = await n2.pod({ app: 'web' });
    const client = await n1.pod({ app: 'client' });
    const other = await n1.pod({ app: 'other' });
    await serve(web, 8080);
    await eventually('pods known everywhere', () => known(web) && known(client) && known(other), 20_000);
    await importPolicy(webFromClient('web-from-client', 8080));
    await eventually(
      'enforced on n2',
      async () => (await probe(other.ns, web.ip4, 8080)) === 'timeout' && (await probe(client.ns, web.ip4, 8080)) === 'ok',
      20_000,
      200,
    );
    t.equal(await probe(client.ns, web.ip4, 8080, 3000), 'ok', 'client (n1) -> web (n2): allowed by labels');
    t.equal(await probe(client.ns, web.ip6, 8080, 3000), 'ok', 'and over IPv6');
    t.equal(await probe(other.ns, web.ip4, 8080), 'timeout', 'other (n1) -> web (n2): default deny');
    const drops = await eventually(
      'n2 reports the drop',
      async () =>
        (
          await flowsOf(
            n2.observerSocket,
            (f) => f.verdict === 'DROPPED' && f.IP?.source === other.ip4 && f.IP?.destination === web.ip4,
          )
        ).length > 0,
      10_000,
      200,
    );
    const [drop] = await flowsOf(
      n2.observerSocket,
      (f) => f.verdict === 'DROPPED' && f.IP?.source === other.ip4 && f.IP?.destination === web.ip4,
    );
    t.equal(
      drop.source?.identity,
      other.endpoint.identity,
      `n2's DROPPED flow names other's identity ${other.endpoint.identity} (${drops} ms)`,
    );
    t.equal(drop.dropReasonDesc, 'POLICY_DENIED');
    t.equal(drop.nodeName, 'n2');
    t.equal(drop.trafficDirection, 'INGRESS');
    const allowed = await flowsOf(
      n2.observerSocket,
      (f) => f.verdict !== 'DROPPED' && f.IP?.source === client.ip4 && f.IP?.destination === web.ip4,
    );
    t.ok(
      allowed.some(
        (f) => f.source?.identity === client.endpoint.identity && f.ingressAllowedBy?.some((p) => p.name === 'web-from-client'),
      ),
      "n2 reports client's connection as allowed by web-from-client, with client's identity",
    );
    const sent = await flowsOf(
      n1.observerSocket,
      (f) => f.IP?.source === client.ip4 && f.IP?.destination === web.ip4 && f.trafficDirection === 'EGRESS',
    );
    t.ok(
      sent.length > 0 && sent.every((f) => f.destination?.identity === web.endpoint.identity),
      "n1 reports the same connection leaving, towards web's identity",
    );

    // Replies through conntrack on both ends: the client's ingress is closed too, yet its connections'
    // replies come back (its node admits them as replies of the client's own flow), while a new
    // connection from web's side is dropped there.
    servers.push(await startEchoServer(client.ns, 8085, '::'));
    await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-closed}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
`);
    await eventually('client closed on n1', async () => (await probe(web.ns, client.ip4, 8085)) === 'timeout', 20_000, 200);
    t.equal(
      await probe(client.ns, web.ip4, 8080, 3000),
      'ok',
      'client (default-deny ingress) -> web: the replies pass conntrack on both nodes',
    );
    t.equal(await probe(web.ns, client.ip4, 8085), 'timeout', "web -> client: a new flow, dropped by client's node");
    await new PolicyClient(n1.client).delete(['client-closed']);

    // An egress deny: dropped on the sending node, before the tunnel.
    await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-not-web}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`);
    await eventually('client denied on n1', async () => (await probe(client.ns, web.ip4, 8080)) === 'timeout', 20_000, 200);
    const egressDrop = (f: Flow) =>
      f.verdict === 'DROPPED' &&
      f.IP?.source === client.ip4 &&
      f.trafficDirection === 'EGRESS' &&
      f.dropReasonDesc === 'POLICY_DENY';
    await eventually(
      'n1 reports the egress drop',
      async () => (await flowsOf(n1.observerSocket, egressDrop)).length > 0,
      10_000,
      200,
    );
    t.ok(
      (await flowsOf(n1.observerSocket, egressDrop)).every((f) => f.nodeName === 'n1'),
      "the sender's node drops what its egress policy denies, and says so (POLICY_DENY, egress, on n1)",
    );
    await new PolicyClient(n1.client).delete(['client-not-web', 'web-from-client']);
  },
);

t.test("entities across nodes: remote-node is another node, never this node's host", async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n1.pod({ app: 'web-rn' });
  const peer = await n2.pod({ app: 'peer-rn' });
  await serve(web, 8081);
  await eventually('pods known', () => known(web) && known(peer), 20_000);
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rn}
spec:
  endpointSelector: {matchLabels: {app: web-rn}}
  ingress:
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "8081", protocol: TCP}]}]
`);
  await eventually('enforced', async () => (await probe(peer.ns, web.ip4, 8081)) === 'timeout', 20_000, 200);
  t.equal(await probe(n2.netns, web.ip4, 8081, 3000), 'ok', 'node n2 -> pod on n1: allowed as remote-node');
  t.equal(
    await probe(n1.netns, web.ip4, 8081, 3000),
    'ok',
    'node n1 (its own host) -> its pod: the host may always reach its endpoints',
  );
  t.equal(await probe(peer.ns, web.ip4, 8081), 'timeout', 'a pod on n2 is not remote-node: dropped');
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rn}
spec:
  endpointSelector: {matchLabels: {app: web-rn}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
`);
  await eventually(
    'remote-node no longer allowed',
    async () => (await probe(n2.netns, web.ip4, 8081)) === 'timeout',
    20_000,
    200,
  );
  t.equal(await probe(n2.netns, web.ip4, 8081), 'timeout', 'without the rule node n2 is dropped (remote-node is no host)');
  t.equal(await probe(n1.netns, web.ip4, 8081, 3000), 'ok', 'node n1 still reaches its own pod');
  const [rn] = await flowsOf(
    n1.observerSocket,
    (f) => f.verdict === 'DROPPED' && f.IP?.destination === web.ip4 && tcpDport(f) === 8081 && f.IP?.source !== peer.ip4,
  );
  t.equal(rn?.source?.identity, 6, `n1's drop of node n2's connection (from ${rn?.IP?.source}) names remote-node (6)`);

  // Egress to another node's address: remote-node, not world.
  const prober = await n1.pod({ app: 'to-nodes' });
  servers.push(await startEchoServer(n2.netns, 8092, '0.0.0.0'));
  const world = c.addExternal();
  servers.push(await startEchoServer(world.ns, 8092, '0.0.0.0'));
  await world.ns.exec('ip', ['route', 'add', (await n1.client.status()).cluster!.podCidrs.ipv4!, 'via', n1.ip]); // no SNAT: the world routes back
  t.equal(await probe(prober.ns, world.ip, 8092, 3000), 'ok', 'before any policy the pod reaches the world netns');
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-nodes}
spec:
  endpointSelector: {matchLabels: {app: to-nodes}}
  egress:
  - toEntities: [remote-node]
`);
  await eventually('egress enforced', async () => (await probe(prober.ns, world.ip, 8092)) === 'timeout', 20_000, 200);
  t.equal(await probe(prober.ns, n2.ip, 8092, 3000), 'ok', 'toEntities remote-node: the pod reaches node n2');
  t.equal(await probe(prober.ns, world.ip, 8092), 'timeout', 'and not the world');
  await new PolicyClient(n1.client).delete(['web-rn', 'to-nodes']);
});

t.test('CIDR rules across nodes: a world address by CIDR, pods by identity', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-cidr' });
  const client = await n1.pod({ app: 'client-cidr' });
  await serve(web, 8082);
  const w1 = c.addExternal();
  const w2 = c.addExternal();
  const podCidr2 = (await n2.client.status()).cluster!.podCidrs.ipv4!;
  const podCidr1 = (await n1.client.status()).cluster!.podCidrs.ipv4!;
  // The world reaches n2's pods through n2 (an upstream router would hold this route).
  for (const w of [w1, w2]) await w.ns.exec('ip', ['route', 'add', podCidr2, 'via', n2.ip]);
  await eventually('client known on n2', () => known(client), 20_000);
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-cidr}
spec:
  endpointSelector: {matchLabels: {app: web-cidr}}
  ingress:
  - fromCIDR: ["${w1.ip}/32", "${podCidr1}"]
    toPorts: [{ports: [{port: "8082", protocol: TCP}]}]
`);
  await eventually('enforced', async () => (await probe(w2.ns, web.ip4, 8082)) === 'timeout', 20_000, 200);
  t.equal(await probe(w1.ns, web.ip4, 8082, 3000), 'ok', `the world address ${w1.ip} is allowed by fromCIDR`);
  t.equal(await probe(w2.ns, web.ip4, 8082), 'timeout', `${w2.ip} is not`);
  t.equal(
    await probe(client.ns, web.ip4, 8082),
    'timeout',
    `a pod on n1 inside the named ${podCidr1} is no CIDR peer: pods are selected by identity (as on one node)`,
  );
  await new PolicyClient(n1.client).delete(['web-cidr']);
});

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
      async () => (await probe(other.ns, web.ip4, 8083)) === 'timeout' && (await probe(client.ns, web.ip4, 8083)) === 'ok',
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

    // 1. VNI of a denied identity, inner source of the allowed one: dropped, with the VNI's identity.
    const s1 = syn(client.ip4);
    await sendUdp(n1.netns, n2.ip, 8472, vxlanPayload(other.endpoint.identity, s1.frame));
    await eventually(
      'n2 reports the forged packet',
      async () => (await flowsOf(n2.observerSocket, at(s1.sport))).length > 0,
      10_000,
      200,
    );
    const [f1] = await flowsOf(n2.observerSocket, at(s1.sport));
    t.equal(f1.verdict, 'DROPPED', `inner source ${client.ip4} (client) under VNI ${other.endpoint.identity} (other): dropped`);
    t.equal(f1.source?.identity, other.endpoint.identity, "the flow names the VNI's identity, not the inner address's");

    // 2. VNI of the allowed identity, inner source of the denied one: admitted as the VNI's identity.
    const cap = await sniff(web.ns, 15);
    const s2 = syn(other.ip4);
    await sendUdp(n1.netns, n2.ip, 8472, vxlanPayload(client.endpoint.identity, s2.frame));
    await eventually(
      'n2 reports the second packet',
      async () => (await flowsOf(n2.observerSocket, at(s2.sport))).length > 0,
      10_000,
      200,
    );
    const [f2] = await flowsOf(n2.observerSocket, at(s2.sport));
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
    await sendUdp(n1.netns, n2.ip, 8472, vxlanPayload(1, s3.frame));
    await eventually(
      'n2 reports the host claim',
      async () => (await flowsOf(n2.observerSocket, at(s3.sport))).length > 0,
      10_000,
      200,
    );
    const [f3] = await flowsOf(n2.observerSocket, at(s3.sport));
    t.equal(f3.verdict, 'DROPPED', 'VNI 1 (host) from another node: dropped');
    t.equal(f3.source?.identity, 6, "as remote-node: a tunnel never speaks for this node's host");
    t.equal(await probe(n2.netns, web.ip4, 8083, 3000), 'ok', "while n2's own host still reaches web");

    // 4. The same datagram from an address that is no node (the control-plane netns): dropped unseen.
    const before = await metricsDrops(n2, 'UNKNOWN_SENDER');
    const s4 = syn(client.ip4);
    for (let i = 0; i < 3; i++) await sendUdp(c.control, n2.ip, 8472, vxlanPayload(client.endpoint.identity, s4.frame));
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
