// node --import tsx scripts/bench/device-parity.ts — not a test. The device parity audit behind
// bench:cross-node: builds one pod pair of each kind the bench compares — (a) plain kernel VXLAN against
// (c) Membrane's overlay, (e) plain routing against (d) Membrane's native routing — and prints, device by
// device, every attribute that differs between the peer's and Membrane's: `ip -d -j link` (GSO/GRO/TSO
// limits, queues, txqlen, MTU, vxlan settings), `ethtool -k` features, `ethtool -l` channels, the root
// qdisc, the device's IPv4 conf sysctls and the net.ipv4/net.core sysctls of the server's pod and node
// netns. The bench's
// throughput rows compare these devices, so any difference here that is not deliberate is a finding.
// Needs ethtool (Debian: apt-get install ethtool); without it the feature and channel rows are skipped.
// ALL=on prints the attributes that agree too. Each difference is matched against the deliberate ones
// (KNOWN, with the reason); any other is printed as unexplained and the exit code is 1.
import { execFileSync } from 'node:child_process';
import { startCluster, type TestCluster } from '../../integration/lib/cluster.ts';
import { plainRouting, plainVxlan, type Topology } from './cross-node-peers.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { membrane, plainVeth, type Pods } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const ALL = process.env.ALL === 'on';

type Attrs = Record<string, string>;
const run = (ns: string, cmd: string, args: string[]): string | null => {
  try {
    return execFileSync('nsenter', [`--net=${ns}`, cmd, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return null;
  }
};
const hasEthtool = run('/proc/self/ns/net', 'ethtool', ['--version']) !== null;

/** Everything `ip -d -j link` says about one device that is a setting (no counters, names, addresses). */
function linkAttrs(ns: string, dev: string): Attrs {
  const out: Attrs = {};
  const j = JSON.parse(run(ns, 'ip', ['-d', '-j', 'link', 'show', 'dev', dev]) ?? '[{}]')[0] ?? {};
  const skip = new Set([
    'ifindex',
    'ifname',
    'address',
    'broadcast',
    'link',
    'link_index',
    'link_netnsid',
    'stats64',
    'operstate',
  ]);
  const flat = (prefix: string, v: unknown) => {
    if (v !== null && typeof v === 'object' && !Array.isArray(v))
      for (const [k, x] of Object.entries(v)) flat(`${prefix}${k}.`, x);
    else out[prefix.slice(0, -1)] = JSON.stringify(v);
  };
  for (const [k, v] of Object.entries(j)) if (!skip.has(k)) flat(`${k}.`, v);
  // The vxlan's own addresses and ports differ by construction; its switches do not.
  for (const k of Object.keys(out)) if (/info_data\.(local|group|remote|id|link|port_range)$/.test(k)) delete out[k];
  return out;
}

function ethtoolAttrs(ns: string, dev: string): Attrs {
  if (!hasEthtool) return {};
  const out: Attrs = {};
  for (const line of (run(ns, 'ethtool', ['-k', dev]) ?? '').split('\n')) {
    const m = /^\s*([\w-]+): (\w+)/.exec(line);
    if (m) out[`-k ${m[1]}`] = m[2];
  }
  let section = '';
  for (const line of (run(ns, 'ethtool', ['-l', dev]) ?? '').split('\n')) {
    if (/maximums|Current/.test(line)) section = /maximums/.test(line) ? 'max' : 'cur';
    const m = /^(RX|TX|Other|Combined):\s+(\S+)/.exec(line);
    if (m) out[`-l ${section} ${m[1]}`] = m[2];
  }
  return out;
}

function qdiscAttrs(ns: string, dev: string): Attrs {
  const qs = JSON.parse(run(ns, 'tc', ['-j', 'qdisc', 'show', 'dev', dev]) ?? '[]') as {
    kind: string;
    root?: boolean;
    parent?: string;
  }[];
  return {
    qdiscs: qs
      .map((q) => q.kind)
      .sort()
      .join(','),
  };
}

function confAttrs(ns: string, dev: string): Attrs {
  const out: Attrs = {};
  const txt = run(ns, 'sh', ['-c', `cd /proc/sys/net/ipv4/conf/${dev} && grep -r . .`]) ?? '';
  for (const line of txt.split('\n')) {
    const m = /^\.\/([^:]+):(.*)$/.exec(line);
    if (m) out[`conf ${m[1]}`] = m[2];
  }
  return out;
}

/** The netns-wide sysctls a TCP stream or the forwarding path reads (net.ipv4, net.core). */
function nsSysctls(ns: string): Attrs {
  const out: Attrs = {};
  const txt =
    run(ns, 'sh', [
      '-c',
      'cd /proc/sys/net && grep -rs . ipv4/tcp_* ipv4/ip_* ipv4/udp_* core/ ipv4/conf/all ipv4/conf/default',
    ]) ?? '';
  for (const line of txt.split('\n')) {
    const m = /^([^:]+):(.*)$/.exec(line);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

const deviceAttrs = (ns: string, dev: string): Attrs => ({
  ...linkAttrs(ns, dev),
  ...ethtoolAttrs(ns, dev),
  ...qdiscAttrs(ns, dev),
  ...confAttrs(ns, dev),
});

/** The device a /32 route in `ns` sends to `ip` through (the pod's host-side veth). */
function routeDev(ns: string, ip: string): string {
  const r = JSON.parse(run(ns, 'ip', ['-j', 'route', 'show', `${ip}/32`]) ?? '[]') as { dev?: string }[];
  const dev = r.find((x) => x.dev)?.dev;
  if (!dev) throw new Error(`no route to ${ip} in ${ns}`);
  return dev;
}

interface Side {
  /** [label, netns path, device] of every device on the path, in the same order for both sides. */
  devices: [string, string, string][];
  podNs: string;
  /** The server's node (the host's own netns for bench:datapath's pairs). */
  nodeNs: string;
  close(): Promise<void>;
}

/** The differences that are deliberate, by device label and attribute, and why. Anything else the audit
 *  finds is printed as unexplained, and the script exits 1. */
const KNOWN: [RegExp, RegExp, string][] = [
  [/host veth|tunnel|underlay/, /^qdiscs$/, "clsact: the hook Membrane's tc programs attach to"],
  [/tunnel/, /^flags$/, 'NOARP: routes into the collect_md device need no neighbour (the key says where)'],
  [/tunnel/, /^linkinfo\.info_data\.external$/, 'collect_md: one device for every peer, the key set per packet'],
  [/tunnel/, /^tso_max_size$/, 'no lower device (netlink/vxlan.ts); caps only a raised gso_max_size, 65536 on both'],
];
let unexplained = 0;

function compare(title: string, peer: Side, ours: Side): void {
  console.log(`\n## ${title}`);
  const rows: string[] = [];
  const diff = (what: string, p: Attrs, o: Attrs) => {
    for (const k of [...new Set([...Object.keys(p), ...Object.keys(o)])].sort()) {
      if (!ALL && p[k] === o[k]) continue;
      const why = p[k] === o[k] ? '' : (KNOWN.find(([d, a]) => d.test(what) && a.test(k))?.[2] ?? '**unexplained**');
      if (why === '**unexplained**') unexplained++;
      rows.push(`| ${what} | ${k} | ${p[k] ?? '—'} | ${o[k] ?? '—'} | ${why} |`);
    }
  };
  for (const [i, [label, ns, dev]] of peer.devices.entries()) {
    const [, ons, odev] = ours.devices[i];
    diff(`${label} (${dev} / ${odev})`, deviceAttrs(ns, dev), deviceAttrs(ons, odev));
  }
  diff('pod netns sysctls', nsSysctls(peer.podNs), nsSysctls(ours.podNs));
  diff('node netns sysctls', nsSysctls(peer.nodeNs), nsSysctls(ours.nodeNs));
  console.log('| device | attribute | peer | Membrane | why |\n|---|---|---|---|---|');
  console.log(rows.length ? rows.join('\n') : '| (none) | | | | |');
}

/** The plain peer's pods and node devices (the netns paths come from the pod pair and the topology). */
async function plainSide(t: Topology, tunnel: string | null): Promise<Side> {
  const p = await t.pods();
  const [n1, n2] = p.nodeNs!;
  return sideOf(n1, n2, p.a.path, p.b.path, p.ipB, tunnel, async () => {
    await p.cleanup();
    await t.close();
  });
}

/** bench:datapath's pairs: both pods on this (the root) netns' host, veth + /32 routes. */
function oneNode(p: Pods): Side {
  const host = '/proc/self/ns/net';
  const devices: [string, string, string][] = [
    ['client pod eth0', p.a.path, 'eth0'],
    ['client host veth', host, routeDev(host, p.ipA)],
    ['server host veth', host, routeDev(host, p.ipB)],
    ['server pod eth0', p.b.path, 'eth0'],
  ];
  return { devices, podNs: p.b.path, nodeNs: host, close: () => p.cleanup() };
}

function sideOf(
  n1: string,
  n2: string,
  podA: string,
  podB: string,
  ipB: string,
  tunnel: string | null,
  close: () => Promise<void>,
): Side {
  const ipA = JSON.parse(run(podA, 'ip', ['-j', '-4', 'addr', 'show', 'dev', 'eth0']) ?? '[]')[0].addr_info[0].local as string;
  const devices: [string, string, string][] = [
    ['client pod eth0', podA, 'eth0'],
    ['client host veth', n1, routeDev(n1, ipA)],
    ...(tunnel ? ([['sending node tunnel', n1, tunnel]] as [string, string, string][]) : []),
    ['sending node underlay', n1, 'eth0'],
    ['receiving node underlay', n2, 'eth0'],
    ...(tunnel ? ([['receiving node tunnel', n2, tunnel]] as [string, string, string][]) : []),
    ['server host veth', n2, routeDev(n2, ipB)],
    ['server pod eth0', podB, 'eth0'],
  ];
  return { devices, podNs: podB, nodeNs: n2, close };
}

async function membraneSide(mode: 'tunnel' | 'native'): Promise<Side> {
  const c: TestCluster = await startCluster({ nodes: 2, agentArgs: ['--routing-mode', mode, '--log-level', 'info'] });
  const [n1, n2] = c.nodes;
  const { a, b } = await podPairAcross(n1, n2, 'mbdp');
  return sideOf(
    n1.netns.path,
    n2.netns.path,
    a.ns.path,
    b.ns.path,
    b.ip,
    mode === 'tunnel' ? 'membrane_vxlan' : null,
    async () => {
      a.ns.remove();
      b.ns.remove();
      await c.cleanup();
    },
  );
}

if (!hasEthtool) console.error('ethtool not found: feature flags and channels are not compared (apt-get install ethtool)');
const pairs: [string, () => Promise<Side>, () => Promise<Side>][] = [
  [
    'bench:datapath: plain veth + host routes vs Membrane (one node)',
    async () => oneNode(await plainVeth()),
    async () => oneNode(await membrane()),
  ],
  [
    '(a) plain kernel VXLAN vs (c) Membrane overlay',
    async () => plainSide(await plainVxlan(), 'vx0'),
    () => membraneSide('tunnel'),
  ],
  [
    '(e) plain routing vs (d) Membrane native routing',
    async () => plainSide(await plainRouting(), null),
    () => membraneSide('native'),
  ],
];
for (const [title, peerOf, oursOf] of pairs) {
  const peer = await peerOf();
  try {
    const ours = await oursOf();
    try {
      compare(title, peer, ours);
    } finally {
      await ours.close();
    }
  } finally {
    await peer.close();
  }
}
console.log(`\n${unexplained} unexplained difference(s)`);
if (unexplained) process.exitCode = 1;
