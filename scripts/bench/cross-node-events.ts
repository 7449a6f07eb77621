// node --import tsx scripts/bench/cross-node-events.ts — not a test. What one cross-node connection costs
// beyond the forwarding, counted rather than timed (counts do not move with the machine's load): on one
// 2-node cluster (MODE=native|tunnel, default native) with a pod on each, the bench's connection-rate
// client (crr) for S seconds (3), R times (3), and per connection: the flow events each node's agent
// processed, by type (membrane_flows_processed_total; a connection should be one FLOW_NEW and one
// FLOW_END per node), runs and time of each tc program on both nodes (kernel.bpf_stats_enabled, on for
// the run, ~0.15 µs a run of its own), the two agents' CPU time, and the conntrack entries left after
// the sample. OBJ=<datapath .o> runs the agents on another object (an A/B: run once per object);
// ARGS="<agent flags>" adds agent flags (e.g. "--flow-events off": what the events cost, counted);
// AGENT=<entry point> runs another agent (dist/bin/membrane-agent: the built one).
// WORK=tput1|tput4 runs iperf3 (1 or 4 streams) instead of crr: the costs are then per MB received.
// RULES=N (0) imports bench:cross-node's policy of N rules on the server pod (topologies.ts
// membranePolicy: N-1 CIDR rules that never match, the last admits the client) before the samples.
// IDLE=1 also takes each agent's CPU over S idle seconds before each sample (time-driven work, e.g. a
// periodic scan, which the per-connection figure would otherwise charge to the connections).
// WAKEUPS=1 also counts, over each sample, the machine's irq_work interrupts (perf stat -a
// irq_vectors:irq_work_entry: a flow record committed into an empty ring queues the ring's wake-up
// irq_work, ~0.75 µs, flow-events-testrun DRAIN_EACH=1; system-wide, so other work on the machine
// counts too: compare with ARGS="--flow-events off") and each agent's event-loop turns (epoll_pwait
// calls: an upper bound on its drains).
// Run under the bench lock: flock /work/wt/.bench.lock node --import tsx scripts/bench/cross-node-events.ts
import { execFileSync, spawn } from 'node:child_process';
import os from 'node:os';
import { startCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { connectionRate, processCpuMs, settled, sleep, throughput } from './lib.ts';
import { attachedPrograms, enableBpfStats } from './bpf-stats.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { membranePolicy } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const MODE = process.env.MODE ?? 'native';
const S = Number(process.env.S ?? 3);
const R = Number(process.env.R ?? 3);
/** WORK=tput1|tput4: iperf3 with 1 or 4 streams instead of crr; costs are then per MB received, not per connection. */
const WORK = process.env.WORK ?? 'crr'; // with tput*, "per connection" below reads per MB
const load0 = os.loadavg()[0].toFixed(2);
const c = await startCluster({
  nodes: 2,
  ...(process.env.AGENT ? { agentMain: process.env.AGENT } : {}),
  agentArgs: [
    '--routing-mode',
    MODE,
    '--log-level',
    'info',
    ...(process.env.OBJ ? ['--bpf-object', process.env.OBJ] : []),
    ...(process.env.ARGS?.split(' ').filter(Boolean) ?? []),
  ],
});
const restoreStats = enableBpfStats();
const RULES = Number(process.env.RULES ?? 0);

/** Each agent's idle give-backs so far (idle-memory.ts: two full GCs and malloc_trim, 1 s after an API
 *  request and again 5.5 s after it; with 10,000 rules in the heap ~150-200 ms of an agent's CPU each).
 *  Read only before and after all samples: a status request per sample set one off inside each sample,
 *  and its cost, which grows with the heap, was charged to the connections. */
async function giveBacks(n: TestNode): Promise<number> {
  return (await n.client.status()).memory?.idleTrims ?? 0;
}

/** membrane_flows_processed_total by type, from the agent's metrics page (inside the node's netns; the
 *  metrics server is not the agent's API: a scrape is no request that sets off a give-back). */
function flowEvents(n: TestNode, addr: string): Record<string, number> {
  const page = execFileSync('nsenter', [`--net=${n.netns.path}`, 'curl', '-s', `http://${addr}/metrics`], { encoding: 'utf8' });
  const by: Record<string, number> = {};
  for (const m of page.matchAll(/^membrane_flows_processed_total\{([^}]*)\} (\S+)$/gm)) {
    const type = /type="([^"]+)"/.exec(m[1])?.[1] ?? '?';
    by[type] = (by[type] ?? 0) + Number(m[2]);
  }
  return by;
}

/** run_cnt and run_time_ns of each program, keyed by name and id. */
function programStats(ids: number[]): Map<string, { runs: number; ns: number }> {
  const out = new Map<string, { runs: number; ns: number }>();
  for (const id of ids) {
    const p = JSON.parse(execFileSync('bpftool', ['prog', 'show', 'id', String(id), '-j'], { encoding: 'utf8' }));
    out.set(`${p.name}#${id}`, { runs: p.run_cnt ?? 0, ns: p.run_time_ns ?? 0 });
  }
  return out;
}

const ctEntries = (n: TestNode) =>
  JSON.parse(
    execFileSync('bpftool', ['map', 'dump', 'pinned', `${n.bpffsDir}/conntrack`, '-j'], { encoding: 'utf8', maxBuffer: 1 << 28 }),
  ).length as number;

/** Starts perf stat counters; the returned function stops them and gives the counts, by event name. */
function perfCounts(args: string[][]): () => Promise<Record<string, number>[]> {
  const runs = args.map((a) => {
    const ch = spawn('perf', ['stat', '-x,', ...a], { stdio: ['ignore', 'ignore', 'pipe'] });
    let out = '';
    ch.stderr.on('data', (d) => (out += d));
    return { ch, done: new Promise<string>((resolve) => ch.on('close', () => resolve(out))) };
  });
  return async () =>
    Promise.all(
      runs.map(async ({ ch, done }) => {
        ch.kill('SIGINT');
        const by: Record<string, number> = {};
        for (const line of (await done).split('\n')) {
          const [count, , name] = line.split(',');
          if (name) by[name] = Number(count);
        }
        return by;
      }),
    );
}

try {
  const [n1, n2] = c.nodes;
  const { a, b } = await podPairAcross(n1, n2, 'mbev');
  if (RULES) await new PolicyClient(n2.client).import(membranePolicy(RULES));
  const agents = [n1.agent.pid()!, n2.agent.pid()!];
  const addrs = [(await n1.client.status()).metrics.address!, (await n2.client.status()).metrics.address!];
  const gb0 = [await giveBacks(n1), await giveBacks(n2)];
  const lastRequest = Date.now();
  await settled(agents, { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
  // Past both give-backs the last requests set off: the deep one 5.5 s after them, the quick one 1 s
  // after them but no sooner than 10 s after the previous give-back (the import's); profiled at 10,000
  // rules, one give-back held the server agent's loop ~600 ms (two full GCs 348 ms, malloc_trim 259 ms).
  await sleep(Math.max(0, lastRequest + 12_000 - Date.now()));
  const ids = attachedPrograms([n1.netns.path, n2.netns.path]);
  console.log(
    `${MODE} cluster, ${WORK}, ${R} samples of ${S} s, ${RULES} rules, object ${process.env.OBJ ?? 'dist'}${WORK === 'crr' ? '' : ' (per MB, not per connection)'}; agent pids ${agents.join(' / ')}`,
  );
  for (let r = 0; r < R; r++) {
    let idle = '';
    if (process.env.IDLE) {
      const i0 = agents.map(processCpuMs);
      await sleep(S * 1000);
      const i1 = agents.map(processCpuMs);
      idle = `; idle agents ${((i1[0] - i0[0]) / S).toFixed(1)} / ${((i1[1] - i0[1]) / S).toFixed(1)} ms CPU a second`;
    }
    const p0 = programStats(ids);
    const e0 = [flowEvents(n1, addrs[0]), flowEvents(n2, addrs[1])];
    const cpu0 = agents.map(processCpuMs);
    const stopPerf = process.env.WAKEUPS
      ? perfCounts([
          ['-a', '-e', 'irq_vectors:irq_work_entry'],
          ...agents.map((p) => ['-p', String(p), '-e', 'syscalls:sys_enter_epoll_pwait']),
        ])
      : undefined;
    if (stopPerf) await sleep(300); // perf attached before the client starts
    const rate =
      WORK === 'crr'
        ? await connectionRate(a.ns, b.ns, b.ip, S)
        : ((await throughput(a.ns, b.ns, b.ip, WORK === 'tput4' ? 4 : 1, S)) * 1e3) / 8; // MB/s
    const cpu1 = agents.map(processCpuMs);
    const counts = await stopPerf?.();
    await sleep(1500); // the agents' last drain (their period is at most 40 ms busy, then epoll)
    const e1 = [flowEvents(n1, addrs[0]), flowEvents(n2, addrs[1])];
    const p1 = programStats(ids);
    const conns = rate * S;
    const perConn = (x: number) => (x / conns).toFixed(2);
    const events = e1.map((e, i) =>
      Object.entries(e)
        .map(([k, v]) => `${k} ${perConn(v - (e0[i][k] ?? 0))}`)
        .join(', '),
    );
    const agentUs = (cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]) * 1000;
    let bpfNs = 0;
    const lines: string[] = [];
    for (const [k, v] of p1) {
      const runs = v.runs - p0.get(k)!.runs,
        ns = v.ns - p0.get(k)!.ns;
      if (!runs) continue;
      bpfNs += ns;
      lines.push(`  ${k}: ${perConn(runs)} runs, ${(ns / runs).toFixed(0)} ns a run, ${perConn(ns / 1000)} µs`);
    }
    console.log(
      `sample ${r + 1}: ${Math.round(rate)} ${WORK === 'crr' ? 'conn/s' : 'MB/s'}; events per connection node 1: ${events[0]}; node 2: ${events[1]}; agents ${perConn(agentUs)} µs CPU, programs ${perConn(bpfNs / 1000)} µs per connection; conntrack entries left ${ctEntries(n1)} / ${ctEntries(n2)}; agents ${((cpu1[0] - cpu0[0]) / S).toFixed(1)} / ${((cpu1[1] - cpu0[1]) / S).toFixed(1)} ms CPU a second${idle}`,
    );
    if (counts) {
      const turns = counts.slice(1).map((c) => c['syscalls:sys_enter_epoll_pwait'] ?? NaN);
      console.log(
        `  irq_work interrupts (whole machine): ${((counts[0]['irq_vectors:irq_work_entry'] ?? NaN) / conns).toFixed(4)} per connection; agents' event-loop turns ${turns.map((t) => (t / S).toFixed(0)).join(' / ')} a second`,
      );
    }
    for (const l of lines) console.log(l);
  }
  const gb1 = [await giveBacks(n1), await giveBacks(n2)];
  console.log(`idle give-backs from before the settling to the end: ${gb1[0] - gb0[0]} / ${gb1[1] - gb0[1]}`);
  console.log(`load ${load0} -> ${os.loadavg()[0].toFixed(2)}`);
} finally {
  restoreStats();
  await c.cleanup();
}
