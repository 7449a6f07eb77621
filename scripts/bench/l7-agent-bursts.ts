// node --import tsx scripts/bench/l7-agent-bursts.ts — not a test: how the agent spends its CPU while
// the L7 proxy is busy. In bench:l7's world (l7-world.ts), wrk runs BURST_MODE (keep-alive or close)
// at 10 connections for 6 s, twice; in the middle of each run `perf sched record` takes 2 s of every
// CPU's switches and `perf sched timehist` gives, per thread of the agent, how often it ran, its share
// of a CPU and how long each run lasted (the main thread takes the workers' record batches; the others
// are V8's GC and compiler helpers and libuv's pool). BURST_PERF=PREFIX instead runs `perf record -g`
// on the agent for 3 s into PREFIX-<round>.data (with BENCH_AGENT_NODE_FLAGS="--perf-basic-prof" for
// JavaScript names). wrk's own numbers are taken under perf: compare runs of this script only.
// 2026-12-06 12:52, keep-alive 10, quiet: the main thread ran 106-137 times a second, 0.33-0.44 ms
// a run (median; p99 0.5-1.0 ms), 3.6-4.3 % of a CPU; the V8 helpers now and then for 3-5 ms
// (concurrent marking: with --trace-gc a mark-compact every 2-3 s while records flow).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startL7World } from './l7-world.ts';
import { wrk } from './l7-wrk.ts';
import { percentile, sleep } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const MODE = process.env.BURST_MODE === 'close' ? 'close' : 'keep-alive';
const PERF = process.env.BURST_PERF;
const RECORD_S = 2;
// "  10586.712100 [0000]  node[21450/21449]   0.000   0.007   0.014   S": time, CPU, thread, wait, sch delay, run time
const LINE = /^\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:\/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)?/;

/** Each of pid's threads' run times (ms) in a `perf sched` record. */
function runsByThread(file: string, pid: number): Map<string, number[]> {
  const out = execFileSync('perf', ['sched', 'timehist', '-i', file, '--state'], {
    maxBuffer: 1 << 30,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const runs = new Map<string, number[]>();
  for (const line of out.split('\n')) {
    const m = LINE.exec(line);
    if (!m || Number(m[5] ?? m[4]) !== pid) continue;
    const k = `${m[3]}/${m[4]}`;
    let r = runs.get(k);
    if (!r) runs.set(k, (r = []));
    r.push(Number(m[8]));
  }
  return runs;
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbb-burst-'));
  const world = await startL7World('0');
  try {
    const agent = world.agentPid()!;
    await wrk(world.client, world.urls.l7, 10, MODE, 3);
    for (let r = 0; r < 2; r++) {
      const file = PERF ? `${PERF}-${r}.data` : path.join(dir, `r${r}.data`);
      const run = wrk(world.client, world.urls.l7, 10, MODE, 6);
      await sleep(2000);
      const perf = PERF
        ? ['record', '-g', '-p', String(agent), '-o', file, '--', 'sleep', String(RECORD_S)]
        : ['sched', 'record', '-a', '-o', file, '--', 'sleep', String(RECORD_S)];
      execFileSync('perf', perf, { stdio: 'ignore' });
      const s = await run;
      console.log(`round ${r + 1}: ${Math.round(s.rps)} req/s, p50 ${s.p50} ms, p99 ${s.p99} ms (under perf)`);
      if (PERF) continue;
      for (const [thread, runs] of runsByThread(file, agent)) {
        const total = runs.reduce((a, b) => a + b, 0);
        const q = (p: number) => percentile(runs, p).toFixed(3);
        console.log(
          `  ${thread}: ${(runs.length / RECORD_S).toFixed(0)} runs/s, ${((100 * total) / (RECORD_S * 1000)).toFixed(1)} % of a CPU, ` +
            `run p50/p90/p99/max ${q(0.5)}/${q(0.9)}/${q(0.99)}/${Math.max(...runs).toFixed(3)} ms`,
        );
      }
      fs.rmSync(file, { force: true });
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    await world.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
