// Pods on different nodes through the VXLAN overlay (cluster mode's default), on the 3-node harness,
// with real packets. The overlay tests are split in files that run in parallel, each with its own
// cluster:
//   * cluster-overlay.test.ts: ping and TCP between pods on two nodes, IPv4 and IPv6; pods get the
//     underlay MTU minus 50; the underlay carries VXLAN between the nodes and never a pod address, and
//     the VNI is the sender's security identity; nodes and remote pods reach each other;
//   * cluster-overlay-policy.test.ts: policy across nodes: labels (allowed, default deny), an egress
//     deny, entities (remote-node, host), CIDR rules; a drop is reported by the node that dropped,
//     naming the sender's identity;
//   * cluster-overlay-vni.test.ts: the VNI decides: hand-made VXLAN datagrams with a forged inner
//     source address get the VNI's identity on the receiving node; a VNI claiming "host" is
//     remote-node; an outer source that is no node of the cluster is dropped (UNKNOWN_SENDER), a pod
//     crafting VXLAN included.
import { tcFilters } from './lib/inspect.ts';
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import crypto from 'node:crypto';
import { eventually } from './lib/cluster.ts';
import { ping } from './lib/netns.ts';
import { nodeIn, startEchoServer } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { sniff, frameInfo } from './lib/raw.ts';
import { vxlanOf } from './lib/vxlan.ts';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { REPO } from './lib/agent.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, servers, known, serve } = clusterForFile(t, {
  nodes: 3,
  clusterPoolIpv6: `fd00:${crypto.randomInt(1, 0xffff).toString(16)}::/104`,
});

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
    t.equal(await probe(a.ns, b.ip4, 8080, 5000), 'ok', 'TCP IPv4 n1 -> n2');
    t.equal(await probe(a.ns, b.ip6, 8080, 5000), 'ok', 'TCP IPv6 n1 -> n2');
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
  t.equal(await probe(n2.netns, p.ip4, 8090, 5000), 'ok', 'node n2 connects to a pod on n1');
  t.equal(await probe(p.ns, n2.ip, 8091, 5000), 'ok', "the pod on n1 connects to node n2's address");
});

/** Node script: sends argv[3] random bytes to argv[1]:argv[2] (an echo server) and prints 'ok' once
 *  the same bytes came back: big writes, so the pods' stack hands the datapath GSO packets. */
const BULK = `
const net = require('net'), crypto = require('crypto');
const out = crypto.randomBytes(Number(process.argv[3]));
const back = [];
let n = 0;
const s = net.connect(Number(process.argv[2]), process.argv[1], () => s.write(out));
s.on('data', (d) => { back.push(d); n += d.length; if (n >= out.length) { process.stdout.write(Buffer.concat(back).equals(out) ? 'ok' : 'differs'); process.exit(0); } });
s.on('error', (e) => { process.stdout.write('error ' + e.message); process.exit(1); });
setTimeout(() => { process.stdout.write('timeout after ' + n); process.exit(2); }, 30000);
`;

/** What BULK printed after sending `bytes` to ip:port from the pod's netns and reading them back. */
async function bulkEcho(ns: Parameters<typeof nodeIn>[0], ip: string, port: number, bytes: number): Promise<string> {
  const bulk = nodeIn(ns, BULK, [ip, String(port), String(bytes)]);
  let got = '';
  bulk.stdout!.on('data', (d: Buffer) => {
    got += d.toString();
  });
  await new Promise((resolve) => bulk.once('exit', resolve));
  return got;
}

/** A command in a node's netns (nsenter: `ip netns exec` would hide /sys/fs/bpf). */
function inNs(n: { netns: { path: string } }, ...args: string[]): string {
  return execFileSync('nsenter', [`--net=${n.netns.path}`, ...args], { encoding: 'utf8' });
}

t.test('IPv4 pod traffic skips both tunnel devices: wrapped in from_container, taken apart by from_underlay', async (t) => {
  const [n1, n2] = c.nodes;
  const a = await n1.pod({ app: 'rx-a' });
  const b = await n2.pod({ app: 'rx-b' });
  await serve(b, 8085);
  await eventually('a and b known on the other nodes', () => known(a) && known(b), 20_000);
  t.match(tcFilters('eth0', 'ingress', n2.netns.path), /from_underlay/, "from_underlay on n2's underlay device");
  const stats = (n: typeof n1) =>
    (
      JSON.parse(inNs(n, 'ip', '-s', '-j', 'link', 'show', 'membrane_vxlan')) as {
        stats64: { rx: { packets: number }; tx: { packets: number } };
      }[]
    )[0].stats64;
  const [tx0, rx0] = [stats(n1).tx.packets, stats(n2).rx.packets];
  t.ok(await ping(a.ns, b.ip4, 5), 'ping IPv4 n1 -> n2');
  t.equal(stats(n1).tx.packets - tx0, 0, "none of the IPv4 pings left through n1's tunnel device");
  t.equal(stats(n2).rx.packets - rx0, 0, "none came in through n2's tunnel device");
  const [tx6, rx6] = [stats(n1).tx.packets, stats(n2).rx.packets];
  t.ok(await ping(a.ns, b.ip6!, 3), 'ping IPv6 n1 -> n2');
  t.ok(stats(n1).tx.packets - tx6 >= 3 && stats(n2).rx.packets - rx6 >= 3, 'IPv6 inside still takes both tunnel devices');
  const rxs = () => [n1, n2].map((n) => stats(n).rx.packets);
  const rxBulk = rxs();
  const got = await bulkEcho(a.ns, b.ip4, 8085, 8 << 20);
  t.equal(got, 'ok', '8 MiB to a pod on n2 and back, byte for byte (GSO packets both ways)');
  t.same(rxs(), rxBulk, "its GSO datagrams both ways came in through neither node's tunnel device");
});

t.test("a stale neighbour entry for the other node is re-confirmed: n1's entry for n2 names a MAC nobody has", async (t) => {
  const [n1, n2] = c.nodes;
  const a = await n1.pod({ app: 'neigh-a' });
  const b = await n2.pod({ app: 'neigh-b' });
  await eventually('a and b known on the other nodes', () => known(a) && known(b), 20_000);
  t.ok(await ping(a.ns, b.ip4, 2), 'ping IPv4 n1 -> n2');
  // As if n2's MAC changed (a replaced NIC or machine) while n1's entry aged to STALE: the stack
  // re-confirms a STALE entry it uses (DELAY, then unicast probes, then a broadcast request), and n2
  // takes no frame sent to a MAC that is not its own.
  inNs(n1, 'sysctl', '-qw', 'net.ipv4.neigh.eth0.delay_first_probe_time=1');
  inNs(n1, 'ip', 'neigh', 'replace', n2.ip, 'lladdr', '02:00:5e:7f:ee:01', 'dev', 'eth0', 'nud', 'stale');
  await eventually('the pod on n1 reaches the pod on n2 again', () => ping(a.ns, b.ip4, 1), 30_000);
  t.notMatch(inNs(n1, 'ip', 'neigh', 'show', n2.ip, 'dev', 'eth0'), /02:00:5e:7f:ee:01/, "n1 learnt n2's real MAC");
});

t.test(
  "pods whose MTU the user raised to the underlay's: their GSO stream still crosses, nothing oversize on the wire",
  async (t) => {
    const [n1, n2] = c.nodes;
    const a = await n1.pod({ app: 'mtu-a' });
    const b = await n2.pod({ app: 'mtu-b' });
    await serve(b, 8088);
    await eventually('a and b known on the other nodes', () => known(a) && known(b), 20_000);
    // Both pods at 1500 (each side's MSS then 1460): TCP segments of 1500 bytes, which wrapped in VXLAN
    // (50 more) exceed the underlay's 1500. A NIC cuts a GSO packet into segments of its gso_size and
    // the wire drops those that exceed the MTU; the harness's veth ports pass GSO packets whole, so
    // each node's port cuts them in software (UDP tunnel segmentation off), and the veth then drops an
    // oversize frame as the wire would.
    for (const p of [a, b]) await p.ns.exec('ip', ['link', 'set', 'eth0', 'mtu', '1500']);
    const offload = (n: typeof n1, on: 'on' | 'off') =>
      inNs(n, 'ethtool', '-K', 'eth0', 'tx-udp_tnl-segmentation', on, 'tx-udp_tnl-csum-segmentation', on);
    t.teardown(() => {
      for (const n of [n1, n2]) offload(n, 'on');
    });
    for (const n of [n1, n2]) offload(n, 'off');
    const dropped = () =>
      [n1, n2].map(
        (n) =>
          (JSON.parse(inNs(n, 'ip', '-s', '-j', 'link', 'show', 'eth0')) as { stats64: { tx: { dropped: number } } }[])[0].stats64
            .tx.dropped,
      );
    const dropped0 = dropped();
    const got = await bulkEcho(a.ns, b.ip4, 8088, 4 << 20);
    t.equal(got, 'ok', '4 MiB to a pod on n2 and back, byte for byte');
    t.same(dropped(), dropped0, "no frame too big for the underlay: neither node's port dropped one");
  },
);

t.test('a router with a smaller MTU between the nodes: the stream crosses, unknown path MTU or known', async (t) => {
  const [n1, n2] = c.nodes;
  const a = await n1.pod({ app: 'pmtu-a' });
  const b = await n2.pod({ app: 'pmtu-b' });
  await serve(b, 8089);
  await eventually('a and b known on the other nodes', () => known(a) && known(b), 20_000);
  // n1 reaches n2 through a router of ours on the underlay whose route to n2 has MTU 1400 and which
  // sends no ICMP "fragmentation needed" (a firewall drops it: a PMTU black hole). The send short-cut's
  // datagrams go without DF, as the tunnel device's: the router fragments them. With DF they were
  // dropped there, and n1, never told, sent the next ones the same way.
  const r = c.addExternal();
  for (const s of ['net.ipv4.ip_forward=1', 'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.eth0.send_redirects=0'])
    await r.ns.exec('sysctl', ['-qw', s]);
  await r.ns.exec('ip', ['route', 'add', `${n2.ip}/32`, 'dev', 'eth0', 'mtu', 'lock', '1400']);
  await r.ns.exec('nft', [
    'add table ip blackhole; add chain ip blackhole out { type filter hook output priority 0; }; add rule ip blackhole out icmp type destination-unreachable drop',
  ]);
  inNs(n1, 'ip', 'route', 'add', `${n2.ip}/32`, 'via', r.ip, 'dev', 'eth0');
  t.teardown(() => inNs(n1, 'ip', 'route', 'del', `${n2.ip}/32`, 'dev', 'eth0'));
  const tx = () =>
    (JSON.parse(inNs(n1, 'ip', '-s', '-j', 'link', 'show', 'membrane_vxlan')) as { stats64: { tx: { packets: number } } }[])[0]
      .stats64.tx.packets;
  t.ok(await ping(a.ns, b.ip4, 2), 'ping through the router (n1 resolves its MAC: until then the tunnel device sends)');
  let tx0 = tx();
  t.equal(await bulkEcho(a.ns, b.ip4, 8089, 4 << 20), 'ok', '4 MiB to a pod on n2 through the router and back, byte for byte');
  t.notMatch(inNs(n1, 'ip', 'route', 'get', n2.ip), /mtu/, 'n1 knows no path MTU to n2 (no ICMP came back)');
  t.equal(tx() - tx0, 0, "the stream took the send short-cut: nothing left through n1's tunnel device");

  // A path MTU n1 knows (here its route's, locked; as one learnt from an ICMP): datagrams above it
  // take the tunnel device, which fragments them on n1.
  inNs(n1, 'ip', 'route', 'replace', `${n2.ip}/32`, 'via', r.ip, 'dev', 'eth0', 'mtu', 'lock', '1400');
  tx0 = tx();
  t.equal(await bulkEcho(a.ns, b.ip4, 8089, 4 << 20), 'ok', 'with the path MTU known: 4 MiB through the router, byte for byte');
  t.ok(tx() - tx0 > 0, "the datagrams above the path MTU left through n1's tunnel device");
});
