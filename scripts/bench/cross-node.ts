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
// The peers (a), (b), (e) are built in cross-node-peers.ts.
// Goals: (c) with 10,000 rules >= 0.95x (a) on every metric; (d) >= 0.95x (e). Fresh pods for every
// measurement (a connection-rate run leaves TIME_WAIT sockets), a different order each round.
// BENCH_ROUNDS (3), BENCH_SECONDS (4), BENCH_RULES (10000), BENCH_FLOW_EVENTS (on), BENCH_BPF_STATS
// (off; on: kernel.bpf_stats_enabled for the run, and a table of what Membrane's programs cost).
// BENCH_AGENT_SETTLE_S (30): the wait for the fresh agents before round 1 (below). BENCH_ONLY="(d),(e)":
// measure only the topologies whose names start so (all are still set up, their agents running).
// BENCH_BEFORE=<datapath .o> adds an A/B in the same run: "(c) … rules, before" and "(d) …, before",
// whose agents run that datapath object (e.g. one built from an older commit: BPF_OUT=/tmp/x.o
// scripts/build-bpf.sh in its checkout). BENCH_BEFORE_L7=on also sets the L7 proxy's routing rule and
// sk_lookup up on them (an L7 policy that selects no pod), as agents had them from the start before
// shared/src/l7/activation.ts; off by default (an object from after it needs nothing of the kind).
// An object from before bpf/underlay.c has no from_underlay program, which this agent loads: for the
// native receive path's A/B use BENCH_NATIVE_RX_AB=on instead, which adds "(d) Membrane native routing,
// stack receive": the same build with from_underlay detached from both nodes' underlay device, so
// other nodes' packets reach the pods through the stack and to_container as before it.
// BENCH_BEFORE_ARGS, BENCH_BEFORE_AGENT, BENCH_BEFORE_NOWAIT: 'before' cells with other agent flags,
// other agent code, or without the wait past the give-backs; BENCH_CP_TRACE: the control plane's CPU
// per metric (all below). BENCH_CRR_PAIRED (on), BENCH_CRR_SLICES (20): how the connection rate is
// compared (below).
import os from 'node:os';
import path from 'node:path';
import { REPO } from '../../integration/lib/agent.ts';
import { createNetns } from '../../integration/lib/netns.ts';
import { eventually, startCluster, type TestCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { flannel, plainRouting, plainVxlan, type PodPair, type Topology } from './cross-node-peers.ts';
import { readIpcache } from '../../integration/lib/cluster-maps.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import {
  agentRequestsMade,
  connectionRate,
  connectionRateAgainst,
  pastGiveBacks,
  processCpuMs,
  rrLatency,
  settled,
  throughput,
} from './lib.ts';
import { membranePolicy } from './topologies.ts';
import { setUnderlayRx } from './switches.ts';
import { attachedPrograms, bpfDelta, bpfTotals, enableBpfStats, type BpfTotals } from './bpf-stats.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const BIG = Number(process.env.BENCH_RULES ?? 10_000);
/** The agents' flow events (on, as deployed; off shows what the agents' event processing costs). */
const FLOW_EVENTS = process.env.BENCH_FLOW_EVENTS ?? 'on';
/** Off by default: the kernel's statistics read the clock twice per program run (~0.15 µs a run
 *  here), a cost the plain peers would not pay. */
const BPF_STATS = (process.env.BENCH_BPF_STATS ?? 'off') === 'on';
const BEFORE = process.env.BENCH_BEFORE;
/** BENCH_BEFORE_ARGS="--conntrack-gc-interval 600": the 'before' cells' agents get these arguments too
 *  (alone, without BENCH_BEFORE: the same object, other agent settings). */
const BEFORE_ARGS = process.env.BENCH_BEFORE_ARGS?.split(' ').filter(Boolean) ?? [];
/** BENCH_BEFORE_NOWAIT=on: the 'before' cells start once their agents are idle, without the wait past
 *  the give-backs of the last API requests (as every cell did before abd670a). */
/** The agents run the built agent (`npm run bench:cross-node` builds it first), as a node runs it and as
 *  the single-node benches do; the harness's default, shared/src/agent/main.ts, runs under the TypeScript
 *  loader, which made the agents' per-event work several times dearer (docs/performance-history.md:
 *  ~1.2 µs against ~0.2 µs an event). BENCH_AGENT=<entry point> runs another. */
const AGENT = process.env.BENCH_AGENT ?? path.join(REPO, 'dist/bin/membrane-agent');
/** BENCH_BEFORE_AGENT=<another checkout>/dist/bin/membrane-agent: the 'before' cells' agents run that
 *  build (a checkout's shared/src/agent/main.ts also works, through the TypeScript loader: compare
 *  like with like; the checkout needs node_modules and dist/, e.g. symlinked from this one). */
const BEFORE_AGENT = process.env.BENCH_BEFORE_AGENT;
const BEFORE_NOWAIT = (process.env.BENCH_BEFORE_NOWAIT ?? 'off') === 'on';
const BEFORE_L7 = (process.env.BENCH_BEFORE_L7 ?? 'off') === 'on';
const NATIVE_RX_AB = (process.env.BENCH_NATIVE_RX_AB ?? 'off') === 'on';
/** The connection rate of a cell that has a peer ((b) and (c) cells: (a); (d) cells: (e)) is measured
 *  against fresh pods of that peer in the same window: BENCH_CRR_SLICES short crr runs on each side,
 *  alternated (lib.ts connectionRateAgainst), BENCH_SECONDS in all on each side. Its ratio to the peer
 *  (the brackets and goals of the connections/s column) is then the median of those same-window ratios,
 *  no longer the ratio of two medians of runs about a minute apart, which moved with whatever else the
 *  machine did meanwhile and with where the scheduler put client and server. An A/A run of two
 *  identical pairs (crr-precision.ts, 10 rounds, load 11-17): runs apart 0.38-1.82 (median |ln ratio|
 *  0.23), paired in 20 slices 0.84-1.59 (0.085); in 8 slices 0.16 against 0.29, in 40 0.13 against
 *  0.24. The peers (a) and (e) still have their own runs (their rows' rates), and the report also
 *  prints each round's ratio of the cells' own runs. off: one BENCH_SECONDS run per cell, as before. */
const CRR_PAIRED = (process.env.BENCH_CRR_PAIRED ?? 'on') === 'on';
const CRR_SLICES = Number(process.env.BENCH_CRR_SLICES ?? 20);
/** Split only before a '(': cell names hold commas ("(c) Membrane overlay, 10,000 rules"). */
const ONLY = process.env.BENCH_ONLY?.split(/,(?=\s*\()/).map((x) => x.trim());
/** A node's agent runs long before its pods' traffic: the first round starts once every agent and
 *  operator of the Membrane clusters has settled (each under 2 % of a CPU over a second, at most
 *  BENCH_AGENT_SETTLE_S seconds; 0 = at once), as in bench:datapath. Just started, they take 3-6 % of
 *  the two CPUs for ~15 s (JIT, GC; docs/performance-history.md, issue 17), which fell on the first cells of round 1, the
 *  plain peers' as much as Membrane's. */
const SETTLE_S = Number(process.env.BENCH_AGENT_SETTLE_S ?? 30);
/** Selects no pod: only sets up the proxies' routing rule and sk_lookup (l7/activation.ts). */
const L7_NOBODY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-l7-nobody}
spec:
  endpointSelector: {matchLabels: {bench: nobody}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
`;
delete process.env.NODE_EXTRA_CA_CERTS;

import { METRICS, type Metric, report } from './cross-node-report.ts';

// ---- Membrane: two nodes of the harness -------------------------------------------------------------

/** Every Membrane cluster's agents and operators (the wait before round 1). */
const clusters: TestCluster[] = [];
const controlPlanePids = () =>
  clusters
    .flatMap((c) => [...c.nodes.map((n) => n.agent.pid()), ...c.operators.map((o) => o.pid())])
    .filter((p) => p !== undefined);
/** Each control-plane process's CPU (ms) while each metric of a cell ran (BENCH_CP_TRACE=on): time-
 *  driven agent work (a periodic walk, a give-back) that lands on one metric shows here. */
const CP_TRACE = (process.env.BENCH_CP_TRACE ?? 'off') === 'on';

async function membraneCluster(
  mode: 'tunnel' | 'native',
  object?: string,
  extraArgs: string[] = [],
  agentMain = AGENT,
): Promise<{ c: TestCluster; pods(): Promise<PodPair> }> {
  const c = await startCluster({
    nodes: 2,
    agentMain,
    agentArgs: [
      '--routing-mode',
      mode,
      '--log-level',
      'info',
      '--flow-events',
      FLOW_EVENTS,
      ...(object ? ['--bpf-object', object] : []),
      ...extraArgs,
    ],
  });
  clusters.push(c);
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
      agentRequestsMade();
      // The server's node must know the client before the first packet (its policy names the label).
      await eventually(
        "peers known on each other's node",
        () =>
          readIpcache(n2.bpffsDir).get(`${a.ip}/32`) === a.identity && readIpcache(n1.bpffsDir).get(`${b.ip}/32`) === b.identity,
        30_000,
      );
      // Measured once both agents are done with the change (a 10,000-rule import keeps them busy for
      // seconds after it returns; that work is no per-packet cost and would land on the first metric):
      // each under 2 % of a CPU, the level of an idle agent, for two 1 s windows in a row.
      const s = await settled([n1.agent.pid()!, n2.agent.pid()!], { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
      process.stderr.write(`  agents ${s.quiet ? 'idle' : 'still busy'} ${s.ms} ms after the pods were ready\n`);
      return {
        a: a.ns,
        b: b.ns,
        ipB: b.ip,
        programs: attachedPrograms([n1.netns.path, n2.netns.path]),
        cleanup: async () => {
          await a.del();
          await b.del();
          agentRequestsMade();
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

/** BENCH_NATIVE_RX_AB: native routing with the receive path through the stack (tc filter of
 *  from_underlay removed from each node's eth0: TC_HANDLE 0x4d42, priority 1). */
async function membraneNativeStackRx(): Promise<Topology> {
  const m = await membraneCluster('native');
  for (const n of m.c.nodes) setUnderlayRx(n.netns.path, n.bpffsDir, false);
  return { name: '(d) Membrane native routing, stack receive', pods: m.pods, close: () => m.c.cleanup() };
}

/** BENCH_BEFORE: the overlay with BIG rules and native routing on that object (BENCH_BEFORE_L7: with
 *  the proxy's routing set up). */
async function membraneBefore(object: string | undefined): Promise<Topology[]> {
  const o = await membraneCluster('tunnel', object, BEFORE_ARGS, BEFORE_AGENT);
  const n = await membraneCluster('native', object, BEFORE_ARGS, BEFORE_AGENT);
  const po = new PolicyClient(o.c.nodes[1].client);
  const pn = new PolicyClient(n.c.nodes[1].client);
  if (BEFORE_L7) await pn.import(L7_NOBODY);
  return [
    {
      name: `(c) Membrane overlay, ${BIG.toLocaleString('en-US')} rules, before`,
      async pods() {
        await po.delete('all');
        await po.import(BEFORE_L7 ? `${membranePolicy(BIG)}\n---\n${L7_NOBODY}` : membranePolicy(BIG));
        return o.pods();
      },
      close: () => o.c.cleanup(),
    },
    { name: '(d) Membrane native routing, before', pods: n.pods, close: () => n.c.cleanup() },
  ];
}

// ---- the run ----------------------------------------------------------------------------------------

const samples = new Map<string, Record<Metric, number[]>>();
/** BENCH_CRR_PAIRED: each round's connection rate of a cell over its peer's in the same window. */
const crrPaired = new Map<string, number[]>();
/** Every topology set up (the peers' pods for the paired connection rate). */
const allTopologies: Topology[] = [];
const PEER_A = '(a) plain kernel VXLAN';
const PEER_E = '(e) plain routing, no tunnel';
/** The peer a cell's connection rate is paired with (none for the peers themselves). */
function crrPeer(t: Topology): Topology | undefined {
  const peer = t.name.startsWith('(d)') ? PEER_E : t.name.startsWith('(b)') || t.name.startsWith('(c)') ? PEER_A : undefined;
  return CRR_PAIRED && peer ? allTopologies.find((x) => x.name === peer) : undefined;
}
/** Membrane's programs per measurement: ns per run, and for the connection rate µs per connection. */
const bpfSamples = new Map<string, Record<Metric, number[]>>();

async function measure(t: Topology): Promise<void> {
  const p = await t.pods();
  // Every cell, a plain peer's too, only past the give-backs of the agents' last API requests (its
  // own pods' or the previous Membrane cell's deletions), then with the control plane idle.
  if (!(BEFORE_NOWAIT && t.name.endsWith('before'))) await pastGiveBacks();
  await settled(controlPlanePids(), { busyPct: 2, windows: 1, timeoutMs: 15_000, throwOnTimeout: false });
  try {
    const bpf: Partial<Record<Metric, BpfTotals>> = {};
    const cp: string[] = [];
    let pairedNote = '';
    const run = async (m: Metric, fn: () => Promise<number>) => {
      const before = p.programs && BPF_STATS ? bpfTotals(p.programs) : undefined;
      const pids = CP_TRACE ? controlPlanePids() : [];
      const c0 = pids.map(processCpuMs);
      const v = await fn();
      if (CP_TRACE) cp.push(`${m} ${pids.map((pid, i) => processCpuMs(pid) - c0[i]).join('/')}`);
      if (before) bpf[m] = bpfDelta(before, bpfTotals(p.programs!));
      return v;
    };
    const r: Record<Metric, number> = {
      tput1: await run('tput1', () => throughput(p.a, p.b, p.ipB, 1, SECONDS)),
      tput4: await run('tput4', () => throughput(p.a, p.b, p.ipB, 4, SECONDS)),
      rr: await run('rr', () => rrLatency(p.a, p.b, p.ipB, SECONDS)),
      crr: await run('crr', async () => {
        const peer = crrPeer(t);
        if (!peer) return connectionRate(p.a, p.b, p.ipB, SECONDS);
        const q = await peer.pods();
        try {
          const c = await connectionRateAgainst(
            { client: p.a, server: p.b, ip: p.ipB },
            { client: q.a, server: q.b, ip: q.ipB },
            SECONDS,
            CRR_SLICES,
          );
          crrPaired.set(t.name, [...(crrPaired.get(t.name) ?? []), c.cell / c.ref]);
          pairedNote = ` crr paired with ${peer.name.slice(0, 3)} ${Math.round(c.ref)}: ${(c.cell / c.ref).toFixed(2)}x`;
          return c.cell;
        } finally {
          await q.cleanup();
        }
      }),
    };
    const s = samples.get(t.name) ?? { tput1: [], tput4: [], rr: [], crr: [] };
    for (const m of METRICS) s[m.key].push(r[m.key]);
    samples.set(t.name, s);
    if (bpf.crr) {
      const b = bpfSamples.get(t.name) ?? { tput1: [], tput4: [], rr: [], crr: [] };
      for (const m of METRICS) {
        const d = bpf[m.key]!;
        b[m.key].push(m.key === 'crr' ? d.ns / 1000 / Math.max(1, r.crr * SECONDS) : d.ns / Math.max(1, d.runs));
      }
      bpfSamples.set(t.name, b);
    }
    process.stderr.write(
      `${t.name}: ${JSON.stringify(r)}${pairedNote}${bpf.crr ? ` bpf ${JSON.stringify(bpf)}` : ''}${cp.length ? ` control plane ms ${cp.join(', ')}` : ''}\n`,
    );
  } finally {
    await p.cleanup();
  }
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(1);
  process.stderr.write(
    `cross-node benchmark: ${ROUNDS} rounds x ${SECONDS} s, ${BIG} rules; ${os.cpus().length} CPUs, kernel ${os.release()}, load ${load0}\n`,
  );
  const topologies: Topology[] = [];
  const restoreStats = BPF_STATS ? enableBpfStats() : () => undefined;
  try {
    topologies.push(
      await plainVxlan(),
      await flannel(),
      ...(await membraneOverlay()),
      await membraneNative(),
      await plainRouting(),
      ...(BEFORE || BEFORE_ARGS.length || BEFORE_NOWAIT || BEFORE_AGENT ? await membraneBefore(BEFORE) : []),
      ...(NATIVE_RX_AB ? [await membraneNativeStackRx()] : []),
    );
    const names = topologies.map((t) => t.name);
    allTopologies.push(...topologies);
    if (SETTLE_S) {
      const s = await settled(controlPlanePids(), { busyPct: 2, windows: 1, timeoutMs: SETTLE_S * 1000, throwOnTimeout: false });
      process.stderr.write(`agents and operators ${s.quiet ? 'settled' : 'not settled'} after ${(s.ms / 1000).toFixed(1)} s\n`);
    }
    const measured = topologies.filter((t) => !ONLY || ONLY.some((o) => t.name.startsWith(o)));
    for (let round = 1; round <= ROUNDS; round++) {
      process.stderr.write(`-- round ${round}\n`);
      const shift = ((round - 1) * 2) % measured.length; // a different order each round
      for (const t of [...measured.slice(shift), ...measured.slice(0, shift)]) {
        // Every cell, a plain peer's too, starts with every agent and operator idle: the previous
        // Membrane cell's endpoint deletions (and the overlay's policy swaps) leave them busy for a
        // second or two, which fell on the plain cell after it but never on a Membrane cell (those
        // wait for their own two agents after creating the pods).
        await settled(controlPlanePids(), { busyPct: 2, windows: 1, timeoutMs: 15_000, throwOnTimeout: false });
        await measure(t);
      }
      process.stderr.write(`   load after round ${round}: ${os.loadavg()[0].toFixed(1)}\n`);
    }
    process.stdout.write(
      report({
        names,
        load: `${load0} -> ${os.loadavg()[0].toFixed(1)}`,
        samples,
        crrPaired,
        bpfSamples,
        rounds: ROUNDS,
        seconds: SECONDS,
        rules: BIG,
        flowEvents: FLOW_EVENTS,
      }),
    );
  } finally {
    restoreStats();
    for (const t of topologies.reverse())
      await t.close().catch((e) => process.stderr.write(`cleanup: ${(e as Error).message}\n`));
  }
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
