// npm run bench:l7:sched — not a test: where the tail's time goes in the scheduler. In the bench:l7
// world (l7-world.ts), wrk runs at SCHED_CONNS connections (SCHED_MODE: keep-alive, the default, or
// close: one request per connection) against Membrane's L7 proxy and against nginx, alternated over
// SCHED_ROUNDS rounds; in the middle of each run
// `perf sched record` takes SCHED_RECORD seconds of every CPU's context switches, and
// `perf sched timehist` says, for each time a proxy thread (Membrane's worker and agent, nginx's
// workers) and wrk's threads got a CPU, how long it had been runnable without one (woken or
// preempted: "sch delay"). A proxy that waits a millisecond for a CPU holds every request it has in
// hand for that long: the run queue's share of the latency tail, next to wrk's own p99. Also who
// held the CPU the proxy waited for (by command name), and how often the proxy was preempted.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startL7World, type Variant } from './l7-world.ts';
import { type Mode, type Sample, wrk } from './l7-wrk.ts';
import { percentile, sleep } from './lib.ts';
import { L7_LATENCY_BUCKETS } from '../../shared/src/l7/metrics.ts';

const ROUNDS = Number(process.env.SCHED_ROUNDS ?? 2);
const CONNS = Number(process.env.SCHED_CONNS ?? 10);
const SECONDS = Number(process.env.SCHED_SECONDS ?? 6);
const RECORD = Number(process.env.SCHED_RECORD ?? 2);
const MODE = (process.env.SCHED_MODE ?? 'keep-alive') as Mode; // or close: one request per connection
delete process.env.NODE_EXTRA_CA_CERTS;

interface Waits {
  delays: number[]; // ms, one per switch-in
  preempted: number; // switch-outs while runnable
  heldBy: Map<string, number>; // ms waited, by the command that was switched out when the thread came in
}

/** Runs `perf sched timehist` on the record and gathers the delays of the threads whose pid is in `pids`
 *  (and, apart, wrk's). */
function analyse(file: string, pids: Set<number>): { proxy: Waits; wrk: Waits } {
  const out = execFileSync('perf', ['sched', 'timehist', '-i', file, '--state'], {
    maxBuffer: 1 << 30,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const mk = (): Waits => ({ delays: [], preempted: 0, heldBy: new Map() });
  const res = { proxy: mk(), wrk: mk() };
  const lastOnCpu = new Map<string, string>(); // cpu -> name of the thread that ran there last
  // e.g. "  10586.712100 [0000]  node[21450/21449]   0.000   0.007   0.014   S"
  const re = /^\s*[\d.]+\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:\/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)?/;
  for (const line of out.split('\n')) {
    const m = re.exec(line);
    if (!m) continue;
    const [, cpu, name, tid, pidS, , delayS, , state] = m;
    const pid = Number(pidS ?? tid);
    const w = pids.has(pid) ? res.proxy : name === 'wrk' ? res.wrk : undefined;
    // timehist's line is the thread's switch-out; its sch delay was before this run, when the
    // thread that ran before it on this CPU (the previous line of the CPU) was switched out.
    const before = lastOnCpu.get(cpu);
    lastOnCpu.set(cpu, name);
    if (!w) continue;
    const d = Number(delayS);
    w.delays.push(d);
    if (state === 'R' || state === 'R+') w.preempted++;
    if (d > 0 && before) w.heldBy.set(before, (w.heldBy.get(before) ?? 0) + d);
  }
  return res;
}

/** The L7 latency histogram's cumulative counts summed over endpoints (le -> count, +Inf included). */
function latencyCounts(page: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of page.matchAll(/^membrane_l7_request_duration_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\d+)/gm))
    m.set(x[1], (m.get(x[1]) ?? 0) + Number(x[2]));
  return m;
}

/** Of the requests between two pages, the share whose latency the worker saw (request head read to
 *  response head written: the upstream's round trip, the server and the worker's wait to read the
 *  answer) was over each of the first bucket bounds. */
function workerSeen(before: Map<string, number>, after: Map<string, number>): string {
  const d = (le: string) => (after.get(le) ?? 0) - (before.get(le) ?? 0);
  const total = d('+Inf');
  return L7_LATENCY_BUCKETS.slice(0, 4)
    .map((b) => `> ${b * 1000} ms ${((100 * (total - d(String(b)))) / (total || 1)).toFixed(2)}%`)
    .join(', ');
}

function summary(w: Waits, seconds: number): string {
  const d = w.delays;
  const total = d.reduce((a, b) => a + b, 0);
  const over = (x: number) => d.filter((v) => v > x).length;
  const top = [...w.heldBy.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 4)
    .map(([n, ms]) => `${n} ${((100 * ms) / (total || 1)).toFixed(0)}%`)
    .join(', ');
  return (
    `runs/s ${(d.length / seconds).toFixed(0)}, preempted/s ${(w.preempted / seconds).toFixed(0)}, ` +
    `waited ${((100 * total) / (seconds * 1000)).toFixed(1)}% of the time; delay p50/p99/max ` +
    `${percentile(d, 0.5).toFixed(3)}/${percentile(d, 0.99).toFixed(3)}/${Math.max(0, ...d).toFixed(3)} ms; ` +
    `delays > 0.5 ms /s ${(over(0.5) / seconds).toFixed(1)}, > 1 ms /s ${(over(1) / seconds).toFixed(1)}; ` +
    `waited behind: ${top}`
  );
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbb-sched-'));
  const world = await startL7World('0');
  // Each session is a scheduling group of its own (kernel.sched_autogroup_enabled, outside a cpu cgroup):
  // the agent's workers start one (detached), nginx does when BENCH_NGINX_SESSION=1 (l7-world.ts).
  const selfGroup = fs.readFileSync('/proc/self/autogroup', 'utf8').split(' ')[0].replace('/autogroup-', '');
  try {
    for (const v of ['l7', 'nginx'] as Variant[]) await wrk(world.client, world.urls[v], CONNS, MODE, 3);
    for (let r = 0; r < ROUNDS; r++) {
      for (const v of (r % 2 ? ['nginx', 'l7'] : ['l7', 'nginx']) as Variant[]) {
        const pids = await world.proxyPids(v);
        const groups = pids.map((pid) => {
          try {
            return fs.readFileSync(`/proc/${pid}/autogroup`, 'utf8').split(' ')[0].replace('/autogroup-', '');
          } catch {
            return '?';
          }
        });
        const file = path.join(dir, `${v}-${r}.data`);
        const page0 = v === 'l7' ? latencyCounts(await world.metrics()) : undefined;
        const run: Promise<Sample> = wrk(world.client, world.urls[v], CONNS, MODE, SECONDS, pids);
        await sleep(((SECONDS - RECORD) / 2) * 1000);
        const load = os.loadavg()[0].toFixed(2);
        execFileSync('perf', ['sched', 'record', '-a', '-o', file, '--', 'sleep', String(RECORD)], { stdio: 'ignore' });
        const s = await run;
        const a = analyse(file, new Set(pids));
        await sleep(300); // the workers' last records of the run reach the agent (they batch for up to 50 ms)
        const seen = page0 ? workerSeen(page0, latencyCounts(await world.metrics())) : undefined;
        fs.rmSync(file, { force: true });
        console.log(
          `${v} round ${r + 1}: ${Math.round(s.rps)} req/s, p50 ${s.p50} ms, p99 ${s.p99} ms, CPU ${s.cpuUsPerReq?.toFixed(1)} µs/request, load ${load}; autogroups: proxy ${groups.join(' ')}, this script ${selfGroup}`,
        );
        if (seen) console.log(`  latency the worker saw, whole run: ${seen}`);
        console.log(`  proxy: ${summary(a.proxy, RECORD)}`);
        console.log(`  wrk:   ${summary(a.wrk, RECORD)}`);
      }
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
