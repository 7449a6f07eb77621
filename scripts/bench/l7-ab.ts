// npm run bench:l7:ab — not a test: two builds of the L7 proxy worker against each other in one world
// (l7-world.ts), so a change to the worker is measured against the code before it under the same load.
// AB_A and AB_B name two worker bundles (e.g. a copy of dist/bin/membrane-proxy made before the change,
// and the one built after it). Each round puts one in place of dist/bin/membrane-proxy, kills the
// running worker, lets the agent start the new one from that file (as it restarts any worker that
// dies), warms it up and runs wrk on it; then the other; the nginx peer runs in every round too, as the
// load's yardstick. What it reports is the CPU per request (workers + agent), which moves much less
// with the machine's load than req/s, per mode and build, medians over AB_ROUNDS (default 4). The
// bundle in dist/bin/membrane-proxy is put back at the end.
// AB_MODES (keep-alive,close), AB_CONNS (10), AB_SECONDS (5).
// An A for a change of main's: `git archive main` into a scratch directory, the change's diff applied
// in reverse there, node scripts/build.mjs there; its dist/bin/membrane-proxy (so only the change differs).
// 2026-12-06 08:10-08:14, close 10, 10 rounds, load 5.1-5.3: main (9167fec) without 5e24105 + 0636473
// (the worker's allocations per request, l7-alloc.ts: close 3,942 -> 2,590 bytes) vs main: CPU per
// request 21.9 -> 21.6 us (0.988x; lower in 5, equal in 2, higher in 3 of 10), p99 4.85 -> 4.16 ms
// (lower in 5 of 10; nginx 4.58), req/s 24,350 -> 23,579 (nginx 24,060): a third fewer bytes
// allocated is within a round's spread of CPU (the worker's JavaScript is ~30 % of its CPU at close).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startL7World } from './l7-world.ts';
import { type Mode, type Sample, wrk } from './l7-wrk.ts';
import { median, sleep } from './lib.ts';

const A = process.env.AB_A;
const B = process.env.AB_B;
const ROUNDS = Number(process.env.AB_ROUNDS ?? 4);
const MODES = (process.env.AB_MODES ?? 'keep-alive,close').split(',') as Mode[];
const CONNS = Number(process.env.AB_CONNS ?? 10);
const SECONDS = Number(process.env.AB_SECONDS ?? 5);
const BUNDLE = path.resolve('dist/bin/membrane-proxy');
delete process.env.NODE_EXTRA_CA_CERTS;

async function main(): Promise<void> {
  if (!A || !B) throw new Error('AB_A and AB_B: the two proxy worker bundles to compare');
  const saved = fs.readFileSync(BUNDLE);
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const samples: Record<string, Sample[]> = {};
  const put = (k: string, s: Sample) => (samples[k] ??= []).push(s);
  try {
    const workers = async () => (await world.proxyPids('l7')).slice(0, -1);
    const use = async (bundle: string) => {
      fs.copyFileSync(bundle, BUNDLE);
      const old = await workers();
      for (const pid of old) process.kill(pid, 'SIGKILL');
      for (let i = 0; i < 300; i++) {
        await sleep(100);
        const now = await workers();
        if (now.length === old.length && now.every((p) => !old.includes(p))) {
          await world.setL7(true); // the same policy again: waits until the new worker is connected and answers
          return;
        }
      }
      throw new Error('the L7 worker did not come back');
    };
    for (let r = 0; r < ROUNDS; r++) {
      // A then B in even rounds, B then A in odd ones: neither always runs right after nginx.
      for (const [name, bundle] of r % 2
        ? [
            ['B', B],
            ['A', A],
          ]
        : [
            ['A', A],
            ['B', B],
          ]) {
        await use(bundle);
        const pids = await world.proxyPids('l7');
        for (const mode of MODES) {
          await wrk(world.client, world.urls.l7, CONNS, mode, 2); // warm-up (JIT) of this worker
          put(`${name}|${mode}`, await wrk(world.client, world.urls.l7, CONNS, mode, SECONDS, pids, world.agentPid()));
        }
      }
      for (const mode of MODES)
        put(`nginx|${mode}`, await wrk(world.client, world.urls.nginx, CONNS, mode, SECONDS, await world.proxyPids('nginx')));
      process.stderr.write(`round ${r + 1}/${ROUNDS} done, load ${os.loadavg()[0].toFixed(2)}\n`);
    }
  } finally {
    fs.writeFileSync(BUNDLE, saved);
    await world.close();
  }
  const m = (k: string, f: keyof Sample) => median(samples[k].map((s) => Number(s[f])));
  console.log(
    `A ${A}, B ${B}; ${ROUNDS} rounds × ${SECONDS} s, ${CONNS} connections, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
  );
  console.log(
    '| mode | CPU µs/request A / B (B/A) | per round A; B | req/s A / B / nginx | p99 ms A / B / nginx | nginx CPU µs/request |',
  );
  console.log('|---|---|---|---|---|---|');
  for (const mode of MODES) {
    const [a, b, n] = ['A', 'B', 'nginx'].map((v) => `${v}|${mode}`);
    const cpu = (k: string) => samples[k].map((s) => (s.cpuUsPerReq ?? NaN).toFixed(1)).join(' ');
    console.log(
      `| ${mode} | ${m(a, 'cpuUsPerReq').toFixed(1)} / ${m(b, 'cpuUsPerReq').toFixed(1)} (${(m(b, 'cpuUsPerReq') / m(a, 'cpuUsPerReq')).toFixed(3)}×) | ${cpu(a)}; ${cpu(b)} | ${[a, b, n].map((k) => Math.round(m(k, 'rps'))).join(' / ')} | ${[a, b, n].map((k) => m(k, 'p99').toFixed(2)).join(' / ')} | ${m(n, 'cpuUsPerReq').toFixed(1)} |`,
    );
  }
  // The tails per round: a p99 moves with the load far more than CPU per request does, so a change
  // meant for the tail is judged on rounds' pairs (A and B ran back to back, nginx right after).
  for (const mode of MODES) {
    const per = (k: string, f: keyof Sample, d: number) => samples[`${k}|${mode}`].map((s) => Number(s[f]).toFixed(d)).join(' ');
    console.log(`${mode} per round, p99 ms A: ${per('A', 'p99', 2)}; B: ${per('B', 'p99', 2)}; nginx: ${per('nginx', 'p99', 2)}`);
    console.log(`${mode} per round, req/s A: ${per('A', 'rps', 0)}; B: ${per('B', 'rps', 0)}; nginx: ${per('nginx', 'rps', 0)}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
