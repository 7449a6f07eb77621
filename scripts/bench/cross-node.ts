// npm run bench:cross-node (node --import tsx scripts/bench/cross-node.ts) — not a test. Between a pod
// on one node and a pod on another (nodes are netns on an underlay bridge of our own, 198.18.0.0/15),
// in one interleaved run: TCP throughput with 1 and 4 streams, request/response latency and
// connection rate, for
//   (a) plain kernel VXLAN: an iproute2 vxlan device per node, static route, neighbour and FDB
//       entries, pods on veth with host routes, no BPF;
//   (b) Flannel's way: kernel vxlan (flannel.1, static neighbour + FDB as flanneld writes them) and a
//       bridge (cni0) the pods hang on;
//   (c) Membrane's overlay (real agents, etcd, operator on the multi-node harness) with 0 and 10,000
//       rules on the server pod;
//   (d) Membrane with native routing;
//   (e) plain routing without a tunnel (routes via the other node's address): the ceiling.
// Goals: (c) with 10,000 rules >= 0.95x (a) on every metric; (d) >= 0.95x (e). Fresh pods for every
// measurement (a connection-rate run leaves TIME_WAIT sockets), a different order each round.
// BENCH_ROUNDS (3), BENCH_SECONDS (4), BENCH_RULES (10000), BENCH_FLOW_EVENTS (on).
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { randomId } from '../../integration/lib/agent.ts';
import { eventually, randomUnderlay, startCluster, type TestCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { readIpcache } from '../../integration/lib/cluster-maps.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { connectionRate, markdownTable, median, rrLatency, throughput } from './lib.ts';
import { membranePolicy } from './topologies.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const BIG = Number(process.env.BENCH_RULES ?? 10_000);
/** The agents' flow events (on, as deployed; off shows what the agents' event processing costs). */
const FLOW_EVENTS = process.env.BENCH_FLOW_EVENTS ?? 'on';
delete process.env.NODE_EXTRA_CA_CERTS;

type Metric = 'tput1' | 'tput4' | 'rr' | 'crr';
const METRICS: { key: Metric; label: string; higher: boolean; digits: number }[] = [
  { key: 'tput1', label: 'TCP 1 stream (Gbit/s)', higher: true, digits: 2 },
  { key: 'tput4', label: 'TCP 4 streams (Gbit/s)', higher: true, digits: 2 },
  { key: 'rr', label: 'RR latency p50 (µs)', higher: false, digits: 1 },
  { key: 'crr', label: 'connections/s', higher: true, digits: 0 },
];

interface PodPair {
  a: TestNetns;
  b: TestNetns;
  ipB: string;
  cleanup(): Promise<void>;
}
interface Topology {
  name: string;
  pods(): Promise<PodPair>;
  close(): Promise<void>;
}

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
const inNs = (ns: TestNetns, cmd: string, args: string[]) => sh('nsenter', [`--net=${ns.path}`, cmd, ...args]);

// ---- the plain peers: two node netns on an underlay bridge ------------------------------------------

interface PlainNode {
  ns: TestNetns;
  ip: string;
  podBase: string;
  index: number;
}

/** Two nodes on an underlay bridge, pod CIDRs 10.x.<1|2>.0/24, forwarding on. */
function twoNodes(): { nodes: [PlainNode, PlainNode]; close(): void } {
  const { prefix } = randomUnderlay();
  const pod = `10.${64 + Math.floor(Math.random() * 128)}`;
  const underlay = createNetns('mbbu');
  const all = [underlay];
  inNs(underlay, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
  inNs(underlay, 'ip', ['link', 'set', 'br0', 'up']);
  const nodes = [1, 2].map((index) => {
    const ns = createNetns('mbbn');
    all.push(ns);
    const ip = `${prefix}.${10 + index}`;
    inNs(underlay, 'ip', ['link', 'add', `n${index}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.name]);
    inNs(underlay, 'ip', ['link', 'set', `n${index}`, 'master', 'br0', 'up']);
    inNs(ns, 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    inNs(ns, 'ip', ['link', 'set', 'eth0', 'up']);
    inNs(ns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
    return { ns, ip, podBase: `${pod}.${index}`, index };
  }) as [PlainNode, PlainNode];
  return {
    nodes,
    close: () => {
      for (const ns of all) ns.remove();
    },
  };
}

/** A pod on a node the plain way: veth, /32 route to it, proxy ARP for its gateway. */
function plainPod(node: PlainNode, mtu: number, host: number): { ns: TestNetns; ip: string } {
  const ns = createNetns('mbbp');
  const ip = `${node.podBase}.${host}`,
    gw = `${node.podBase}.1`,
    veth = `p${randomId(3)}`;
  inNs(node.ns, 'ip', ['link', 'add', veth, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.name]);
  inNs(node.ns, 'ip', ['link', 'set', veth, 'up']);
  inNs(node.ns, 'sysctl', ['-q', '-w', `net.ipv4.conf.${veth}.proxy_arp=1`, `net.ipv4.neigh.${veth}.proxy_delay=0`]);
  inNs(node.ns, 'ip', ['route', 'add', `${ip}/32`, 'dev', veth, 'scope', 'link']);
  inNs(ns, 'ip', ['link', 'set', 'eth0', 'mtu', String(mtu), 'up']);
  inNs(ns, 'ip', ['addr', 'add', `${ip}/32`, 'dev', 'eth0']);
  inNs(ns, 'ip', ['route', 'add', `${gw}/32`, 'dev', 'eth0', 'scope', 'link']);
  inNs(ns, 'ip', ['route', 'add', 'default', 'via', gw, 'dev', 'eth0']);
  return { ns, ip };
}

/** Pod pairs on two plain nodes: the gateway address on a veth stub, pods routed /32 (a, e). */
function plainPods(nodes: [PlainNode, PlainNode], mtu: number): () => Promise<PodPair> {
  for (const n of nodes) {
    inNs(n.ns, 'ip', ['link', 'add', 'gw0', 'type', 'veth', 'peer', 'name', 'gw0_n']); // no dummy driver everywhere
    inNs(n.ns, 'ip', ['link', 'set', 'gw0_n', 'up']);
    inNs(n.ns, 'ip', ['link', 'set', 'gw0', 'up']);
    inNs(n.ns, 'ip', ['addr', 'add', `${n.podBase}.1/32`, 'dev', 'gw0']);
  }
  let host = 2;
  return async () => {
    const a = plainPod(nodes[0], mtu, host),
      b = plainPod(nodes[1], mtu, host);
    host = host >= 250 ? 2 : host + 1;
    return {
      a: a.ns,
      b: b.ns,
      ipB: b.ip,
      cleanup: async () => {
        a.ns.remove();
        b.ns.remove();
      },
    };
  };
}

/** The other node's VXLAN endpoint the way flanneld programs it: route via its device address (onlink),
 *  a permanent neighbour entry for that address and an FDB entry for its MAC. */
function staticVxlanPeer(local: PlainNode, dev: string, remote: PlainNode, remoteDevIp: string, remoteMac: string): void {
  inNs(local.ns, 'ip', ['route', 'add', `${remote.podBase}.0/24`, 'via', remoteDevIp, 'dev', dev, 'onlink']);
  inNs(local.ns, 'ip', ['neigh', 'add', remoteDevIp, 'lladdr', remoteMac, 'dev', dev, 'nud', 'permanent']);
  inNs(local.ns, 'bridge', ['fdb', 'append', remoteMac, 'dev', dev, 'dst', remote.ip]);
}

function vxlanDevice(n: PlainNode, name: string): string {
  const mac = `02:00:00:00:0${n.index}:01`;
  inNs(n.ns, 'ip', [
    'link',
    'add',
    name,
    'address',
    mac,
    'type',
    'vxlan',
    'id',
    '1',
    'local',
    n.ip,
    'dev',
    'eth0',
    'dstport',
    '8472',
    'nolearning',
  ]);
  inNs(n.ns, 'ip', ['addr', 'add', `${n.podBase}.0/32`, 'dev', name]);
  inNs(n.ns, 'ip', ['link', 'set', name, 'up']);
  return mac;
}

/** (a) kernel VXLAN between the nodes, pods routed like Membrane's (veth + /32 routes). */
async function plainVxlan(): Promise<Topology> {
  const t = twoNodes();
  const [n1, n2] = t.nodes;
  const macs = [vxlanDevice(n1, 'vx0'), vxlanDevice(n2, 'vx0')];
  staticVxlanPeer(n1, 'vx0', n2, `${n2.podBase}.0`, macs[1]);
  staticVxlanPeer(n2, 'vx0', n1, `${n1.podBase}.0`, macs[0]);
  return { name: '(a) plain kernel VXLAN', pods: plainPods(t.nodes, 1450), close: async () => t.close() };
}

/** (b) Flannel's vxlan backend: flannel.1 with static neighbour/FDB entries, pods on the cni0 bridge. */
async function flannel(): Promise<Topology> {
  const t = twoNodes();
  const [n1, n2] = t.nodes;
  const macs = [vxlanDevice(n1, 'flannel.1'), vxlanDevice(n2, 'flannel.1')];
  staticVxlanPeer(n1, 'flannel.1', n2, `${n2.podBase}.0`, macs[1]);
  staticVxlanPeer(n2, 'flannel.1', n1, `${n1.podBase}.0`, macs[0]);
  for (const n of t.nodes) {
    inNs(n.ns, 'ip', ['link', 'add', 'cni0', 'type', 'bridge']);
    inNs(n.ns, 'ip', ['link', 'set', 'cni0', 'mtu', '1450', 'up']);
    inNs(n.ns, 'ip', ['addr', 'add', `${n.podBase}.1/24`, 'dev', 'cni0']);
  }
  let host = 2;
  const pod = (n: PlainNode) => {
    const ns = createNetns('mbbp');
    const ip = `${n.podBase}.${host}`,
      veth = `f${randomId(3)}`;
    inNs(n.ns, 'ip', ['link', 'add', veth, 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.name]);
    inNs(n.ns, 'ip', ['link', 'set', veth, 'master', 'cni0', 'up']);
    inNs(ns, 'ip', ['link', 'set', 'eth0', 'up']);
    inNs(ns, 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    inNs(ns, 'ip', ['route', 'add', 'default', 'via', `${n.podBase}.1`]);
    return { ns, ip };
  };
  return {
    name: '(b) Flannel (vxlan + bridge)',
    pods: async () => {
      const a = pod(n1),
        b = pod(n2);
      host = host >= 250 ? 2 : host + 1;
      return {
        a: a.ns,
        b: b.ns,
        ipB: b.ip,
        cleanup: async () => {
          a.ns.remove();
          b.ns.remove();
        },
      };
    },
    close: async () => t.close(),
  };
}

/** (e) routes via the other node's address, no tunnel, no BPF: the ceiling. */
async function plainRouting(): Promise<Topology> {
  const t = twoNodes();
  const [n1, n2] = t.nodes;
  inNs(n1.ns, 'ip', ['route', 'add', `${n2.podBase}.0/24`, 'via', n2.ip]);
  inNs(n2.ns, 'ip', ['route', 'add', `${n1.podBase}.0/24`, 'via', n1.ip]);
  return { name: '(e) plain routing, no tunnel', pods: plainPods(t.nodes, 1500), close: async () => t.close() };
}

// ---- Membrane: two nodes of the harness -------------------------------------------------------------

async function membraneCluster(mode: 'tunnel' | 'native'): Promise<{ c: TestCluster; pods(): Promise<PodPair> }> {
  const c = await startCluster({
    nodes: 2,
    agentArgs: ['--routing-mode', mode, '--log-level', 'info', '--flow-events', FLOW_EVENTS],
  });
  const [n1, n2] = c.nodes;
  const pod = async (n: TestNode, labels: Record<string, string>) => {
    const ns = createNetns('mbbp');
    try {
      const ep = await n.client.createEndpoint({ containerId: `bench-${ns.name}`, netns: ns.path, ifName: 'eth0', labels });
      return {
        ns,
        ip: ep.ips[0].address.split('/')[0],
        identity: ep.identity,
        del: () => n.client.deleteEndpoint(ep.containerId, 'eth0').catch(() => undefined),
      };
    } catch (e) {
      ns.remove();
      throw e;
    }
  };
  return {
    c,
    async pods() {
      const a = await pod(n1, { bench: 'client' });
      const b = await pod(n2, { bench: 'server' });
      // The server's node must know the client before the first packet (its policy names the label).
      await eventually(
        "peers known on each other's node",
        () =>
          readIpcache(n2.bpffsDir).get(`${a.ip}/32`) === a.identity && readIpcache(n1.bpffsDir).get(`${b.ip}/32`) === b.identity,
        30_000,
      );
      return {
        a: a.ns,
        b: b.ns,
        ipB: b.ip,
        cleanup: async () => {
          await a.del();
          await b.del();
          a.ns.remove();
          b.ns.remove();
        },
      };
    },
  };
}

async function membraneOverlay(): Promise<Topology[]> {
  const m = await membraneCluster('tunnel');
  const pc = new PolicyClient(m.c.nodes[1].client);
  const withRules = (n: number): Topology => ({
    name: `(c) Membrane overlay, ${n === 0 ? '0' : n.toLocaleString('en-US')} rules`,
    async pods() {
      await pc.delete('all');
      if (n) await pc.import(membranePolicy(n));
      return m.pods();
    },
    close: async () => {
      await pc.delete('all').catch(() => undefined);
    },
  });
  return [
    withRules(0),
    {
      ...withRules(BIG),
      close: async () => {
        await pc.delete('all').catch(() => undefined);
        await m.c.cleanup();
      },
    },
  ];
}

async function membraneNative(): Promise<Topology> {
  const m = await membraneCluster('native');
  return { name: '(d) Membrane native routing', pods: m.pods, close: () => m.c.cleanup() };
}

// ---- the run ----------------------------------------------------------------------------------------

const samples = new Map<string, Record<Metric, number[]>>();

async function measure(t: Topology): Promise<void> {
  const p = await t.pods();
  try {
    const r: Record<Metric, number> = {
      tput1: await throughput(p.a, p.b, p.ipB, 1, SECONDS),
      tput4: await throughput(p.a, p.b, p.ipB, 4, SECONDS),
      rr: await rrLatency(p.a, p.b, p.ipB, SECONDS),
      crr: await connectionRate(p.a, p.b, p.ipB, SECONDS),
    };
    const s = samples.get(t.name) ?? { tput1: [], tput4: [], rr: [], crr: [] };
    for (const m of METRICS) s[m.key].push(r[m.key]);
    samples.set(t.name, s);
    process.stderr.write(`${t.name}: ${JSON.stringify(r)}\n`);
  } finally {
    await p.cleanup();
  }
}

/** Performance relative to a peer: >1 is better (latency inverted). */
function perf(name: string, peer: string, m: (typeof METRICS)[number]): number {
  const v = median(samples.get(name)![m.key]),
    p = median(samples.get(peer)![m.key]);
  return m.higher ? v / p : p / v;
}

function report(names: string[], load: string): string {
  const [a, , , big, d, e] = names;
  const rows = names.map((name) => [
    name,
    ...METRICS.map((m) => {
      const v = median(samples.get(name)![m.key]);
      const peer = name === d || name === e ? e : a;
      return `${v.toFixed(m.digits)} (${perf(name, peer, m).toFixed(2)}×)`;
    }),
  ]);
  const goal = (x: string, peer: string) =>
    METRICS.map((m) => `${m.label.split(' (')[0]} ${perf(x, peer, m).toFixed(2)}×`).join(', ');
  const met = (x: string, peer: string) => (METRICS.every((m) => perf(x, peer, m) >= 0.95) ? 'met' : 'not met');
  return [
    `Medians of ${ROUNDS} rounds x ${SECONDS} s, one interleaved run; in brackets: performance relative to (a) for the tunnels and`,
    `to (e) for the routed rows (>1 is better; latency inverted). ${os.cpus().length} CPUs, kernel ${os.release()}, load ${load};`,
    `Membrane's flow events ${FLOW_EVENTS}.`,
    '',
    markdownTable(['topology', ...METRICS.map((m) => m.label)], rows),
    '',
    markdownTable(
      ['goal', 'result'],
      [
        [
          `overlay with ${BIG.toLocaleString('en-US')} rules >= 0.95x plain kernel VXLAN on every metric`,
          `${met(big, a)}: ${goal(big, a)}`,
        ],
        ['native routing >= 0.95x plain routing on every metric', `${met(d, e)}: ${goal(d, e)}`],
      ],
    ),
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(1);
  process.stderr.write(
    `cross-node benchmark: ${ROUNDS} rounds x ${SECONDS} s, ${BIG} rules; ${os.cpus().length} CPUs, kernel ${os.release()}, load ${load0}\n`,
  );
  const topologies: Topology[] = [];
  try {
    topologies.push(
      await plainVxlan(),
      await flannel(),
      ...(await membraneOverlay()),
      await membraneNative(),
      await plainRouting(),
    );
    const names = topologies.map((t) => t.name);
    for (let round = 1; round <= ROUNDS; round++) {
      process.stderr.write(`-- round ${round}\n`);
      const shift = ((round - 1) * 2) % topologies.length; // a different order each round
      for (const t of [...topologies.slice(shift), ...topologies.slice(0, shift)]) await measure(t);
    }
    process.stdout.write(report(names, `${load0} -> ${os.loadavg()[0].toFixed(1)}`));
  } finally {
    for (const t of topologies.reverse())
      await t.close().catch((e) => process.stderr.write(`cleanup: ${(e as Error).message}\n`));
  }
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
