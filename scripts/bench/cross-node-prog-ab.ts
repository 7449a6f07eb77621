// node --import tsx scripts/bench/cross-node-prog-ab.ts A.o B.o … — not a test. What Membrane's tc programs
// cost per cross-node connection, for several datapath objects in one interleaved run: one 2-node cluster
// per object (MODE=tunnel|native, default tunnel; the built agent, flow events on, as bench:cross-node
// runs it), a client pod on node 1 and a server pod on node 2 with bench:cross-node's policy of RULES
// (10000) rules, then R rounds (5) in which every object's pair runs the connection-rate client (crr) for
// S seconds (3), in a different order each round. Per sample: the programs' run time per connection
// (kernel.bpf_stats_enabled: run_time_ns over both nodes' programs / connections), per program its runs
// and ns a run, the agents' CPU per connection. The run time per connection moves far less with the
// machine's load than the rate does, and interleaving spreads the load over the objects alike: medians
// per object at the end, with the load. ARGS="<agent flags>" for every agent; "X.o@<agent flags>" for
// that cell's agents only (e.g. X.o@--ct-max 16384: the same object, another table size); "X.o%AGENT" runs
// that cell's agents from another build (e.g. ab/A/dist/bpf/endpoint.o%ab/A/dist/bin/membrane-agent: an
// agent A/B, each cell its own build's object and agent). PEER=1 adds the plain peer
// (tunnel: (a) plain kernel VXLAN; native: (e) plain routing) as one more cell. PERF=<file prefix>: each
// sample also under `perf record -a` (one file per cell and round), and at the end the kernel time per
// connection by symbol in the crr processes' context, for every cell: what a connection costs in all,
// the peer's included, counted in samples rather than timed (TOP rows, 25). PERF_AGENTS=<file prefix>:
// each sample also records the cell's two agents (perf -g, 999 Hz; run with NODE_OPTIONS=--perf-basic-prof
// for JavaScript names), and the end prints their CPU per connection by kind (GC, JIT, JavaScript,
// kernel, the rest). WARM=N (0): N s of crr per cell before the rounds, unmeasured (the agents' JIT).
// "X.o+tcx" (last in the spec): that cell's programs run from tcx links instead of classic tc (tcx-swap.ts).
// STATS=0: kernel.bpf_stats_enabled left alone (no program times): while on, the statistics cost only
// Membrane's cells (two clock reads per program run, ~1.2 µs per connection: README), so against PEER=1
// the rates then compare as bench:cross-node runs them; each sample line says whether the statistics
// were on anyway (another bench of the machine's may hold them on).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { REPO } from '../../integration/lib/agent.ts';
import { startCluster } from '../../integration/lib/cluster.ts';
import type { TestNetns } from '../../integration/lib/netns.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { attachedPrograms, enableBpfStats } from './bpf-stats.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { plainRouting, plainVxlan } from './cross-node-peers.ts';
import { connectionRate, median, processCpuMs, settled, sleep } from './lib.ts';
import { swapToTcx } from './tcx-swap.ts';
import { membranePolicy } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const OBJS = process.argv.slice(2);
const MODE = process.env.MODE ?? 'tunnel';
const S = Number(process.env.S ?? 3);
const R = Number(process.env.R ?? 5);
const RULES = Number(process.env.RULES ?? 10_000);
const WARM = Number(process.env.WARM ?? 0);
const STATS = process.env.STATS !== '0';
const AGENT = process.env.AGENT ?? path.join(REPO, 'dist/bin/membrane-agent');
if (!OBJS.length) throw new Error('usage: cross-node-prog-ab.ts A.o B.o …');

interface Cell {
  obj: string;
  close(): Promise<unknown>;
  a: TestNetns;
  b: TestNetns;
  ipB: string;
  agents: number[];
  ids: number[];
  us: number[];
  agentUs: number[];
  rate: number[];
  perProg: Map<string, { runs: number[]; ns: number[] }>;
  /** PERF: the samples' files and the connections made while each was recorded. */
  perf: { file: string; conns: number; pids: number[] }[];
  /** PERF_AGENTS: the agents' own samples per round. */
  agentPerf: { file: string; conns: number }[];
  /** Its place in the run and its object's file name (the whole spec is printed once). */
  name: string;
}

const HZ = 4999;
const TOP = Number(process.env.TOP ?? 25);

/** Kernel time per connection (µs) by symbol, from the samples taken in the context of this cell's crr
 *  client and server (their softirqs: both nodes' forwarding and Membrane's programs, most of it; other
 *  benches' crr processes on the machine are left out by pid), the JIT's program names without their tags. */
function perfProfile(runs: { file: string; conns: number; pids: number[] }[]): Map<string, number> {
  const us = new Map<string, number>();
  const conns = runs.reduce((a, r) => a + r.conns, 0);
  for (const r of runs) {
    const out = execFileSync('perf', ['script', '-i', r.file, '-F', 'ip,sym', '--pid', r.pids.join(',')], {
      encoding: 'utf8',
      maxBuffer: 1 << 28,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    for (const line of out.split('\n')) {
      const sym = line.trim().split(/\s+/)[1];
      if (!sym) continue;
      const k = sym.replace(/^bpf_prog_[0-9a-f]+_/, 'bpf_prog_');
      us.set(k, (us.get(k) ?? 0) + 1e6 / HZ / conns);
    }
  }
  return us;
}

const AGENT_KINDS = ['gc', 'jit', 'js', 'kernel', 'other', 'all'];
/** The agents' samples by kind, per connection: V8's garbage collector (any thread), its compilers,
 *  JavaScript and its builtins, the kernel, the rest (Node, libuv, libc, koffi). */
function agentProfile(runs: { file: string; conns: number }[]): string {
  const n: Record<string, number> = Object.fromEntries(AGENT_KINDS.map((k) => [k, 0]));
  let conns = 0;
  for (const r of runs) {
    conns += r.conns;
    const out = execFileSync('perf', ['script', '-i', r.file, '-F', 'ip,sym', '-G'], {
      encoding: 'utf8',
      maxBuffer: 1 << 28,
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    for (const line of out.split('\n')) {
      const sym = line.trim().split(/\s+/).slice(1).join(' ');
      if (!line.trim()) continue;
      const kind =
        /^v8::internal::.*(Mark|Sweep|Scaveng|Evacuat|Heap|GC|Marking|Remembered|Slot)|^heap::|^cppgc::|MemoryChunk|popcount/.test(
          sym,
        )
          ? 'gc'
          : /^v8::internal::(compiler|maglev|baseline|Compiler|Deoptimizer)|Compile/.test(sym)
            ? 'jit'
            : /^(JS:|Builtins_)/.test(sym)
              ? 'js'
              : /^ffffffff/.test(line.trim())
                ? 'kernel'
                : 'other';
      n[kind]++;
      n.all++;
    }
  }
  return AGENT_KINDS.map((k) => ((n[k] * 1e6) / 999 / conns).toFixed(2)).join(' / ');
}

/** The crr client and server running in these netns (each process named crr whose netns is one of
 *  them), once both run (polled for at most `ms`). */
async function crrPids(netns: TestNetns[], ms: number): Promise<number[]> {
  const t0 = Date.now();
  let pids = crrIn(netns);
  while (pids.length < 2 && Date.now() - t0 < ms) {
    await sleep(100);
    pids = crrIn(netns);
  }
  return pids;
}

function crrIn(netns: TestNetns[]): number[] {
  const want = new Set(netns.map((n) => fs.statSync(n.path).ino));
  const pids: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim() !== 'crr') continue;
      if (want.has(fs.statSync(`/proc/${d}/ns/net`).ino)) pids.push(Number(d));
    } catch {
      /* gone meanwhile */
    }
  }
  return pids;
}

/** run_cnt and run_time_ns of each program, keyed by name (both nodes' copies summed). */
function programStats(ids: number[]): Map<string, { runs: number; ns: number }> {
  const out = new Map<string, { runs: number; ns: number }>();
  for (const id of ids) {
    const p = JSON.parse(execFileSync('bpftool', ['prog', 'show', 'id', String(id), '-j'], { encoding: 'utf8' }));
    const o = out.get(p.name) ?? { runs: 0, ns: 0 };
    o.runs += p.run_cnt ?? 0;
    o.ns += p.run_time_ns ?? 0;
    out.set(p.name, o);
  }
  return out;
}

const newCell = (obj: string, close: () => Promise<unknown>): Cell =>
  ({
    obj,
    close,
    agents: [],
    ids: [],
    us: [],
    agentUs: [],
    rate: [],
    perProg: new Map(),
    perf: [],
    agentPerf: [],
    name: `${cells.length + 1}-${path.basename(obj.split('@')[0].split('%')[0])}`,
  }) as unknown as Cell;

const load0 = os.loadavg()[0].toFixed(2);
const cells: Cell[] = [];
const restoreStats = STATS ? enableBpfStats() : () => undefined;
const statsOn = () => fs.readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1';
try {
  for (const spec of OBJS) {
    const tcx = spec.endsWith('+tcx');
    const obj = tcx ? spec.slice(0, -4) : spec;
    const c = await startCluster({
      nodes: 2,
      agentMain: obj.split('@')[0].split('%')[1] ?? AGENT,
      agentArgs: [
        '--routing-mode',
        MODE,
        '--log-level',
        'info',
        '--bpf-object',
        obj.split('@')[0].split('%')[0],
        ...(process.env.ARGS?.split(' ').filter(Boolean) ?? []),
        ...(obj.split('@')[1]?.split(' ').filter(Boolean) ?? []),
      ],
    });
    const [n1, n2] = c.nodes;
    let untcx = () => {};
    const cell = newCell(spec, () => {
      untcx();
      return c.cleanup();
    });
    cells.push(cell);
    const { a, b } = await podPairAcross(n1, n2, 'mbab');
    if (RULES) await new PolicyClient(n2.client).import(membranePolicy(RULES));
    if (tcx) untcx = swapToTcx([n1, n2].map((n) => ({ netnsPath: n.netns.path, bpffsDir: n.bpffsDir })));
    Object.assign(cell, {
      a: a.ns,
      b: b.ns,
      ipB: b.ip,
      agents: [n1.agent.pid()!, n2.agent.pid()!],
      ids: attachedPrograms([n1.netns.path, n2.netns.path]),
    });
  }
  if (process.env.PEER) {
    const t = MODE === 'tunnel' ? await plainVxlan() : await plainRouting();
    const p = await t.pods();
    cells.push(
      Object.assign(
        newCell(`${t.name.split(' ')[0]} peer`, async () => {
          await p.cleanup();
          await t.close();
        }),
        { a: p.a, b: p.b, ipB: p.ipB },
      ),
    );
  }
  // Past the import and the agents' give-backs (cross-node-events.ts: up to 12 s after the last request).
  await settled(
    cells.flatMap((x) => x.agents),
    { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false },
  );
  await sleep(12_000);
  // WARM=N: N seconds of crr per cell first, unmeasured: the agents' JIT compiles their flow event path
  // during the first seconds of traffic (~0.3-0.5 µs per connection over a first 5 s sample), which a
  // node's agent, running long before, has done.
  for (const x of cells) if (WARM) await connectionRate(x.a, x.b, x.ipB, WARM);
  console.log(`${MODE}, ${RULES} rules, ${R} rounds of ${S} s crr per object; load ${load0}`);
  for (const x of cells) console.log(`  cell ${x.name}: ${x.obj}`);
  for (let r = 0; r < R; r++) {
    const order = cells.map((_, i) => cells[(i + r) % cells.length]);
    for (const x of order) {
      const p0 = programStats(x.ids);
      const cpu0 = x.agents.map(processCpuMs);
      const perf = process.env.PERF
        ? spawn(
            'perf',
            ['record', '-q', '-a', '-F', String(HZ), '-o', `${process.env.PERF}-${x.name}-${r + 1}`, '--', 'sleep', String(S)],
            {
              stdio: 'ignore',
            },
          )
        : undefined;
      const agentPerf =
        process.env.PERF_AGENTS && x.agents.length
          ? spawn(
              'perf',
              [
                'record',
                '-q',
                '-g',
                '-F',
                '999',
                '-p',
                x.agents.join(','),
                '-o',
                `${process.env.PERF_AGENTS}-${x.name}-${r + 1}`,
                '--',
                'sleep',
                String(S),
              ],
              {
                stdio: 'ignore',
              },
            )
          : undefined;
      // Listened for now: a recorder can exit before the sample's rate is in, and an 'exit' listener
      // added after that never fires (the run hung so under PERF_AGENTS).
      const recorded = [perf, agentPerf].map((rec) => rec && new Promise((ok) => rec.once('exit', ok)));
      const pending = connectionRate(x.a, x.b, x.ipB, S);
      const pids = perf ? await crrPids([x.a, x.b], S * 1000) : [];
      const rate = await pending;
      await Promise.all(recorded);
      const cpu1 = x.agents.map(processCpuMs);
      await sleep(1000); // the agents' last drain
      const p1 = programStats(x.ids);
      const conns = rate * S;
      if (agentPerf) x.agentPerf.push({ file: `${process.env.PERF_AGENTS}-${x.name}-${r + 1}`, conns });
      if (perf) x.perf.push({ file: `${process.env.PERF}-${x.name}-${r + 1}`, conns, pids });
      let ns = 0;
      const parts: string[] = [];
      for (const [k, v] of p1) {
        const runs = v.runs - p0.get(k)!.runs,
          t = v.ns - p0.get(k)!.ns;
        if (!runs) continue;
        ns += t;
        const pp = x.perProg.get(k) ?? { runs: [], ns: [] };
        pp.runs.push(runs / conns);
        pp.ns.push(t / runs);
        x.perProg.set(k, pp);
        parts.push(`${k} ${(runs / conns).toFixed(2)}x${(t / runs).toFixed(0)}ns`);
      }
      const agentUs = (cpu1.reduce((t, v, i) => t + v - cpu0[i], 0) * 1000) / conns;
      x.us.push(ns / 1000 / conns);
      x.agentUs.push(agentUs);
      x.rate.push(rate);
      console.log(
        `round ${r + 1} ${x.name}: ${Math.round(rate)} conn/s, programs ${STATS ? `${(ns / 1000 / conns).toFixed(2)} µs/conn` : 'not timed'}, agents ${agentUs.toFixed(2)} µs/conn (${parts.join(', ')})${perf ? ` crr pids ${pids.join(',')}` : ''}${STATS ? '' : `; bpf stats ${statsOn() ? 'on (another bench)' : 'off'}`}; load ${os.loadavg()[0].toFixed(2)}`,
      );
    }
  }
  console.log(`\nmedians (${R} rounds), load ${load0} -> ${os.loadavg()[0].toFixed(2)}:`);
  for (const x of cells) {
    const progs = [...x.perProg].map(([k, v]) => `${k} ${median(v.runs).toFixed(2)}x${median(v.ns).toFixed(0)}ns`).join(', ');
    console.log(
      `${x.name}: programs ${median(x.us).toFixed(2)} µs/conn (min ${Math.min(...x.us).toFixed(2)}), agents ${median(x.agentUs).toFixed(2)} µs/conn, ${Math.round(median(x.rate))} conn/s; ${progs}`,
    );
  }
  if (process.env.PERF_AGENTS) {
    console.log(`\nthe agents' CPU per connection by kind (perf -g, 999 Hz, µs): ${AGENT_KINDS.join(' / ')}`);
    for (const x of cells) if (x.agentPerf.length) console.log(`  ${x.name}: ${agentProfile(x.agentPerf)}`);
  }
  if (process.env.PERF) {
    const profiles = cells.map((x) => perfProfile(x.perf));
    const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    console.log(
      `\nkernel µs per connection in the crr processes' context (perf, ${HZ} Hz): ${cells.map((x, i) => `${x.name} ${total(profiles[i]).toFixed(1)}`).join(', ')}`,
    );
    const syms = new Set(profiles.flatMap((m) => [...m.keys()]));
    const rows = [...syms].map((k) => ({ k, v: profiles.map((m) => m.get(k) ?? 0) }));
    rows.sort((a, b) => Math.max(...b.v) - Math.min(...b.v) - (Math.max(...a.v) - Math.min(...a.v)));
    console.log(`the ${TOP} symbols that differ most (µs per connection: ${cells.map((x) => x.name).join(' / ')}):`);
    for (const r of rows.slice(0, TOP)) console.log(`  ${r.k}: ${r.v.map((v) => v.toFixed(3)).join(' / ')}`);
  }
} finally {
  restoreStats();
  for (const x of cells) await x.close().catch(() => undefined);
}
