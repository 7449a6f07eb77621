// node --import tsx scripts/bench/l7-agent-after.ts — not a test: does the agent (or an L7 worker) keep
// burning CPU after an L7 keep-alive run has ended, and in which thread? A load-independent question
// (CPU time, not latency) behind issue 14's tail after keep-alive (l7-close-world.ts): on 2 vCPUs,
// CPU the agent spends after the run is taken from the next run's proxy.
// Each round, in bench:l7's world (l7-world.ts), in an order that alternates by round (AA_CONDS):
//   ka    L7 keep-alive 10 then 50 (5 s each, as bench:l7's cells before close 10), then 10 s idle
//   ctl   nginx keep-alive 10 then 50 (the agent has no records to handle), then 10 s idle
//   kc    ka followed at once by L7 close 10 for 5 s (l7-close-world.ts's after-ka), then 10 s idle
// Every thread of the agent and of the L7 workers is sampled every 100 ms (schedstat: exact ns).
// Reported: CPU-ms after the run's end (0-1 s, 1-3 s, 3-10 s) by process and thread, medians of rounds.
// AA_ROUNDS (6). With BENCH_AGENT_NODE_FLAGS=--trace-gc and BENCH_WORKER_LOGS=DIR the agent's GCs after
// each run (and inside kc's close run) are listed too (from DIR/agent.log).
// 2026-12-06, load 4-7: after ka the agent spent 92 ms in 10 s (control 9 ms), 85 of them 1-3 s after
// the run: the idle give-back (idle-memory.ts: gc() twice, 'testing' in --trace-gc, 20-150 ms each,
// main thread plus V8's 4 helper threads; its scavenge 4.5 s later), in 6 of 6 rounds; the workers
// 4 ms. It waits for 1 s without records or requests, so a run that follows at once postpones it: in
// 4 kc rounds none landed in the close run (only scavenges of 0.3-14 ms), whose p99 was still 24, 3.8,
// 2.8 and 140 ms. In bench:l7 it lands in the cell after L7 keep-alive 50 (nginx's or direct's).
// With MEMBRANE_L7_WORKER_NODE_FLAGS=--trace-gc the first worker's GCs inside kc's close run too: 5
// rounds at load 4.7 -> 3.5, p99 8.7/1.8/4.2/2.7/3.4 ms; the agent 2-4 scavenges of 2-9 ms per run (one
// 11 ms Mark-Compact), the worker a 0.25-2 ms scavenge every ~200 ms; give-backs only after the run.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startL7World } from './l7-world.ts';
import { wrk } from './l7-wrk.ts';
import { median, sleep } from './lib.ts';

const ROUNDS = Number(process.env.AA_ROUNDS ?? 6);
const CONDS = (process.env.AA_CONDS ?? 'ka,ctl').split(',');
const BINS = [
  [0, 1000],
  [1000, 3000],
  [3000, 10000],
] as const;
delete process.env.NODE_EXTRA_CA_CERTS;

type Threads = Map<string, number>; // label -> cumulative ns

/** Every thread of a process by label: `main`, else comm and rank by tid (V8's helpers, libuv's pool). */
function threads(pid: number, who: string): Threads {
  const out: Threads = new Map();
  let tids: number[];
  try {
    tids = fs
      .readdirSync(`/proc/${pid}/task`)
      .map(Number)
      .sort((a, b) => a - b);
  } catch {
    return out;
  }
  const rank = new Map<string, number>();
  for (const tid of tids) {
    try {
      const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      const ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      const r = (rank.get(comm) ?? 0) + 1;
      rank.set(comm, r);
      out.set(`${who} ${tid === pid ? 'main' : `${comm}#${r}`}`, ns);
    } catch {
      /* exited */
    }
  }
  return out;
}

interface Snap {
  t: number;
  th: Threads;
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const agent = world.agentPid()!;
  const startMsOf = (pid: number) => {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ticks = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[19]);
    const up = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    return Date.now() - up * 1000 + ticks * 10;
  };
  const agentStartMs = startMsOf(agent);
  let workerStartMs = 0; // the first worker's, for its --trace-gc times (MEMBRANE_L7_WORKER_NODE_FLAGS)
  // The workers' pids once per run: asking the agent's API every 100 ms would be agent CPU we measure.
  let w: number[] = [];
  const snap = async (): Promise<Snap> => {
    const th: Threads = new Map(threads(agent, 'agent'));
    w.forEach((pid, i) => {
      for (const [k, v] of threads(pid, `worker${i}`)) th.set(k, v);
    });
    return { t: Date.now(), th };
  };
  // per condition, per round: label -> ms in each bin; and the run's end (ms since the agent started)
  const res: Record<string, { bins: Map<string, number[]>; during: Map<string, number>; endMs: number }[]> = {
    ka: [],
    ctl: [],
    kc: [],
  };
  // kc: the ka run followed at once by L7 close 10 for 5 s, as l7-close-world.ts's after-ka does (its
  // window, ms since the agent started, and its p99): does the agent's after-run work land in it?
  const closes: { startMs: number; endMs: number; p99: number }[] = [];
  const one = async (cond: 'ka' | 'ctl' | 'kc') => {
    const url = cond === 'ctl' ? world.urls.nginx : world.urls.l7;
    w = (await world.proxyPids('l7')).slice(0, -1);
    const series: Snap[] = [];
    let stop = false;
    const sampler = (async () => {
      while (!stop) {
        series.push(await snap());
        await sleep(100);
      }
    })();
    const s0 = await snap();
    await wrk(world.client, url, 10, 'keep-alive', 5);
    await wrk(world.client, url, 50, 'keep-alive', 5);
    if (cond === 'kc') {
      const pids = await world.proxyPids('l7');
      workerStartMs ||= startMsOf(pids[0]);
      const startMs = Date.now() - agentStartMs;
      const c = await wrk(world.client, url, 10, 'close', 5, pids, agent);
      closes.push({ startMs, endMs: Date.now() - agentStartMs, p99: c.p99 });
    }
    const end = await snap();
    await sleep(10_000);
    stop = true;
    await sampler;
    const at = (ms: number) => series.find((s) => s.t >= end.t + ms) ?? series[series.length - 1];
    const bins = new Map<string, number[]>();
    for (const k of end.th.keys())
      bins.set(
        k,
        BINS.map(([a, b]) => ((at(b).th.get(k) ?? 0) - ((a === 0 ? end : at(a)).th.get(k) ?? 0)) / 1e6),
      );
    const during = new Map([...end.th].map(([k, v]) => [k, (v - (s0.th.get(k) ?? 0)) / 1e6]));
    res[cond].push({ bins, during, endMs: end.t - agentStartMs });
    const sum = (who: string) =>
      [...bins]
        .filter(([k]) => k.startsWith(who))
        .reduce((a, [, v]) => a + v.reduce((x, y) => x + y, 0), 0)
        .toFixed(1);
    process.stderr.write(`${cond}: after 10 s agent ${sum('agent')} ms, workers ${sum('worker')} ms\n`);
  };
  try {
    await wrk(world.client, world.urls.l7, 10, 'keep-alive', 3); // warm-up
    await sleep(5000);
    for (let r = 0; r < ROUNDS; r++) {
      const conds = CONDS.filter((c) => c in res) as ('ka' | 'ctl' | 'kc')[];
      for (const c of r % 2 ? conds.reverse() : conds) await one(c);
      process.stderr.write(`round ${r + 1}/${ROUNDS}, load ${os.loadavg()[0].toFixed(2)}\n`);
    }
  } finally {
    await world.close();
  }
  console.log(
    `${ROUNDS} rounds, CPU-ms after a 10 s keep-alive run (10 then 50 conns), medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
  );
  console.log(`| thread | ${CONDS[0]}: during | ${CONDS.map((c) => `${c} after 0-1 s | 1-3 s | 3-10 s`).join(' | ')} |`);
  console.log(`|---|---|${CONDS.map(() => '---|---|---|').join('')}`);
  const labels = [...new Set(res[CONDS[0]].flatMap((x) => [...x.bins.keys()]))].sort();
  const med = (c: string, k: string, i: number) => median(res[c].map((x) => x.bins.get(k)?.[i] ?? 0));
  const rows = [...labels, 'agent (all)', 'workers (all)'];
  for (const k of rows) {
    const pick = (c: string, i: number) =>
      k.endsWith('(all)')
        ? median(
            res[c].map((x) =>
              [...x.bins]
                .filter(([l]) => l.startsWith(k.split(' ')[0].replace('workers', 'worker')))
                .reduce((a, [, v]) => a + v[i], 0),
            ),
          )
        : med(c, k, i);
    const dur = k.endsWith('(all)')
      ? median(
          res[CONDS[0]].map((x) =>
            [...x.during]
              .filter(([l]) => l.startsWith(k.split(' ')[0].replace('workers', 'worker')))
              .reduce((a, [, v]) => a + v, 0),
          ),
        )
      : median(res[CONDS[0]].map((x) => x.during.get(k) ?? 0));
    if (!k.endsWith('(all)') && dur < 1 && CONDS.every((c) => pick(c, 2) < 1)) continue;
    console.log(
      `| ${k} | ${dur.toFixed(1)} | ${CONDS.map((c) => [0, 1, 2].map((i) => pick(c, i).toFixed(1)).join(' | ')).join(' | ')} |`,
    );
  }
  const logs = process.env.BENCH_WORKER_LOGS;
  const log = logs && path.join(logs, 'agent.log');
  const gcsOf = (file: string) =>
    [
      ...fs
        .readFileSync(file, 'utf8')
        .matchAll(
          /\s(\d+) ms: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Compact)[^,]*?([\d.]+) \(([\d.]+)\) -> ([\d.]+) \(([\d.]+)\) MB, (?:pooled: [\d.]+ MB, )?([\d.]+) \/ ([\d.]+) ms/g,
        ),
    ].map((m) => ({
      t: Number(m[1]),
      kind: m[2],
      heap: Number(m[5]),
      ms: Number(m[7]),
    }));
  if (logs && log && fs.existsSync(log)) {
    const gcs = gcsOf(log);
    const wlog = fs.readdirSync(logs).find((f) => f !== 'agent.log' && f.endsWith('.log'));
    const wgcs = wlog ? gcsOf(path.join(logs, wlog)).map((g) => ({ ...g, t: g.t + workerStartMs - agentStartMs })) : [];
    for (const x of closes) {
      const inside = gcs.filter((g) => g.t >= x.startMs - 1000 && g.t < x.endMs);
      console.log(
        `kc close run ${x.startMs}-${x.endMs} ms: p99 ${x.p99} ms; GCs from 1 s before its start to its end: ${inside.map((g) => `${g.kind}@${g.t - x.startMs}ms/${g.ms}ms`).join(' ') || 'none'}; the worker's: ${
          wgcs
            .filter((g) => g.t >= x.startMs && g.t < x.endMs)
            .map((g) => `${g.kind}@${g.t - x.startMs}ms/${g.ms}ms`)
            .join(' ') || 'none'
        }`,
      );
    }
    for (const c of CONDS) {
      const w = res[c].map((x) => gcs.filter((g) => g.t >= x.endMs && g.t < x.endMs + 10_000));
      console.log(
        `agent GCs in the 10 s after a ${c} run (per round: count/pause ms/kinds): ${w.map((g) => `${g.length}/${g.reduce((a, x) => a + x.ms, 0).toFixed(1)}/${[...new Set(g.map((x) => x.kind))].join('+')}`).join(' ')}; heap after last: ${w.map((g) => g[g.length - 1]?.heap ?? '-').join(' ')} MB`,
      );
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
