// npm run bench:l7 (builds, then node --import tsx scripts/bench/l7.ts) — not a test; its world (pods,
// policy, the nginx peer) is l7-world.ts, one wrk run and its CPU accounting l7-wrk.ts. HTTP between two pods with
// wrk (client pod) against nginx serving a small static response (server pod), in one interleaved
// run, at several connection counts, keep-alive and one request per connection:
//   direct  L3/L4 policy only: the same server's port 8080, which has no HTTP rules
//   l7      Membrane's L7 policy on port 80 (every request through the proxy, checked against
//           an HTTP rule, reported as L7 flows)
//   nginx   nginx (Debian) as a reverse proxy on the node, in front of the same server: the C proxy
//           a user would otherwise put there (upstream keep-alive, access log off)
// plus the same-run A/B of a port without L7 rules (8080) with and without the L7 policy on port 80
// (redirect_peer traffic never meets the proxy: the cost should be 0).
// After BENCH_WARMUP seconds of each variant in each mode (not recorded), medians over BENCH_ROUNDS
// rounds of BENCH_SECONDS each; BENCH_CONNS picks the connection counts. Each row says whether the
// issue's goals are met (Membrane L7 >= 0.8x nginx's req/s, p99 <= 1.25x nginx's) and what the
// proxying costs in CPU per request (Membrane's workers plus its agent, the agent's part apart, nginx's
// workers): on a loaded machine the ratios move with the load, the CPU cost much less; and how long
// the proxying processes' threads waited for a CPU per request (schedstat run_delay), the scheduler's
// share of the latency.
// The client pod runs with net.ipv4.tcp_tw_reuse=BENCH_CLIENT_TW_REUSE (default 0, the kernel's own
// default, the same for every column): the proxy, like the server and nginx, closes a one-request
// connection first, so no column leaves a TIME_WAIT in the client. 1 shows what a client that keeps
// its TIME_WAITs would meet with a proxy that lets it close first (docs/performance-history.md, L7 HTTP).
import os from 'node:os';
import { checkTools, startL7World, type Variant } from './l7-world.ts';
import { type Mode, type Sample, wrk } from './l7-wrk.ts';
import { markdownTable, median } from './lib.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 5);
const CONNS = (process.env.BENCH_CONNS ?? '1,10,50,100').split(',').map(Number);
// All three by default; a subset (BENCH_VARIANTS=l7) is for looking at one of them, not for the table.
const VARIANTS = (process.env.BENCH_VARIANTS ?? 'direct,l7,nginx').split(',');
// Both by default; BENCH_MODES=close runs one request per connection only (e.g. to profile that path).
const MODES = (process.env.BENCH_MODES ?? 'keep-alive,close').split(',') as Mode[];
const NON_L7 = process.env.BENCH_NON_L7 !== '0';
const CLIENT_TW_REUSE = process.env.BENCH_CLIENT_TW_REUSE ?? '0';
delete process.env.NODE_EXTRA_CA_CERTS;

// The goals, against nginx measured in the same run.
const GOAL_RPS = 0.8;
const GOAL_P99 = 1.25;

async function main(): Promise<void> {
  checkTools();
  const load = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  const world = await startL7World(CLIENT_TW_REUSE);
  const { client, urls, ip, proxyPids, setL7 } = world;
  try {
    const samples = new Map<string, Sample[]>();
    const rec = (key: string, v: Sample) => {
      samples.set(key, [...(samples.get(key) ?? []), v]);
      process.stderr.write(`${key}: ${JSON.stringify(v)}\n`);
    };
    // Warm-up, not recorded: the proxy workers start with the first L7 policy, and their first seconds
    // (JIT) cost several times what they cost afterwards, in each mode (one request per connection runs
    // code keep-alive never does: accepting, connecting, closing); nginx gets the same.
    for (const v of ['direct', 'l7', 'nginx'].filter((x) => VARIANTS.includes(x)) as Variant[]) {
      for (const mode of MODES) await wrk(client, urls[v], 10, mode, WARMUP);
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        for (const conns of CONNS) {
          for (const v of (round % 2 ? ['nginx', 'l7', 'direct'] : ['direct', 'l7', 'nginx']).filter((x) =>
            VARIANTS.includes(x),
          ) as Variant[]) {
            rec(
              `${v}|${mode}|${conns}`,
              await wrk(client, urls[v], conns, mode, SECONDS, await proxyPids(v), v === 'l7' ? world.agentPid() : undefined),
            );
          }
        }
      }
      // Non-L7 port, A/B: without and with the L7 policy on port 80 (BENCH_NON_L7=0 skips it).
      for (const on of NON_L7 ? (round % 2 ? [true, false] : [false, true]) : []) {
        await setL7(on);
        rec(`8080|${on ? 'l7-on' : 'l7-off'}`, await wrk(client, `http://${ip}:8080/`, 50, 'keep-alive', SECONDS));
      }
      if (NON_L7) await setL7(true);
    }

    const med = (key: string, f: keyof Sample) => median((samples.get(key) ?? []).map((x) => x[f] ?? NaN));
    const rows: string[][] = [];
    for (const mode of MODES) {
      for (const conns of CONNS) {
        const k = (v: Variant) => `${v}|${mode}|${conns}`;
        const cell = (v: Variant) =>
          `${med(k(v), 'rps').toFixed(0)} / ${med(k(v), 'p50').toFixed(2)} / ${med(k(v), 'p99').toFixed(2)}`;
        const rps = med(k('l7'), 'rps') / med(k('nginx'), 'rps');
        const p99 = med(k('l7'), 'p99') / med(k('nginx'), 'p99');
        const goal =
          [rps >= GOAL_RPS ? '' : `req/s < ${GOAL_RPS}×`, p99 <= GOAL_P99 ? '' : `p99 > ${GOAL_P99}×`]
            .filter(Boolean)
            .join(', ') || 'met';
        const cpu = (v: Variant) => med(k(v), 'cpuUsPerReq').toFixed(0);
        const agentCpu = med(k('l7'), 'agentUsPerReq').toFixed(0);
        rows.push([
          mode,
          String(conns),
          cell('direct'),
          cell('l7'),
          cell('nginx'),
          `${rps.toFixed(2)}×`,
          `${p99.toFixed(2)}×`,
          goal,
          `${cpu('l7')} (agent ${agentCpu}) / ${cpu('nginx')}`,
          `${med(k('l7'), 'waitUsPerReq').toFixed(0)} / ${med(k('nginx'), 'waitUsPerReq').toFixed(0)}`,
          mode === 'close' ? `${med(k('l7'), 'clientTwPct').toFixed(1)} / ${med(k('nginx'), 'clientTwPct').toFixed(1)}` : '',
        ]);
      }
    }
    const errors = [...samples].filter(([, v]) => v.some((x) => x.errors)).map(([k]) => k);
    console.log(
      `\nL7 HTTP benchmark: ${WARMUP} s warm-up per variant, then ${ROUNDS} interleaved rounds × ${SECONDS} s, medians; wrk in the client pod, nginx (1 worker) serving in the server pod; ${world.workers.l7} L7 proxy worker(s), ${world.workers.nginx} nginx proxy worker(s) ${process.env.BENCH_NGINX_SESSION === '0' ? "in this script's session" : 'in a session of their own, as the L7 workers'}; client pod net.ipv4.tcp_tw_reuse=${CLIENT_TW_REUSE}; ${os.cpus().length} CPUs; load average at start ${load}\n`,
    );
    console.log(
      markdownTable(
        [
          'mode',
          'conns',
          'direct req/s / p50 / p99 ms',
          'Membrane L7 req/s / p50 / p99 ms',
          'nginx proxy req/s / p50 / p99 ms',
          'L7/nginx req/s',
          'L7/nginx p99',
          `goal (≥ ${GOAL_RPS}× req/s, ≤ ${GOAL_P99}× p99)`,
          'proxy CPU µs/request L7 workers + agent (agent) / nginx',
          'proxy run-queue wait µs/request L7 / nginx',
          'client TIME_WAITs per 100 connections L7 / nginx',
        ],
        rows,
      ),
    );
    const off = med('8080|l7-off', 'rps'),
      on = med('8080|l7-on', 'rps');
    if (NON_L7)
      console.log(
        `\nPort 8080 (no L7 rules), 50 connections keep-alive: ${off.toFixed(0)} req/s without the L7 policy on port 80, ${on.toFixed(0)} req/s with it (${(on / off).toFixed(2)}×).`,
      );
    if (errors.length) console.log(`\nwrk reported errors (socket errors or non-2xx) in: ${errors.join(', ')}`);
    console.log(
      `Load average at the end: ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')} (numbers taken while other work runs are noisy).`,
    );
  } finally {
    await world.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
