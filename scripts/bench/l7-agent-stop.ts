// node --import tsx scripts/bench/l7-agent-stop.ts — not a test: how much of L7's one-request-per-
// connection tail at 10 connections is the agent's? The agent turns the worker's records into flows
// and metrics: at close 10 a batch every 50 ms (FLUSH_MS in proxy/worker.ts), ~1-1.5 ms of one CPU each
// on a 2-CPU node, in the bench's scheduling group with wrk and the server. Same world (l7-world.ts),
// paired arms per round in alternating order: A, the agent as it is; S, the agent stopped (SIGSTOP)
// for the measured run only, so the worker proxies and buffers its records as usual (it drops them
// past 16 MiB unsent: counted as lost, no other change) and no agent runs. After S the agent is
// continued and left STOP_DRAIN_S (3) s to take the backlog before anything else runs. Each arm: 2 s
// warm-up, then STOP_SECONDS (5) of L7 close 10; nginx's close 10 every round as the yardstick.
// STOP_ROUNDS (8). The workers' pids are read before the rounds (the agent's API cannot answer while
// it is stopped).
// 2026-12-06 04:44-04:48, 8 rounds, load 7.4 -> 11.5 (other helpers' tests): p99 median A 60.2 ms, S
// 65.9, nginx 47.4 (S below A in 5 of 8 rounds; the agent's share 1.4-4.5 µs per request): at that load
// every arm's tail is the machine's (20-290 ms); the question is for a quiet window.
import os from 'node:os';
import { startL7World } from './l7-world.ts';
import { type Sample, wrk } from './l7-wrk.ts';
import { median, sleep } from './lib.ts';

const ROUNDS = Number(process.env.STOP_ROUNDS ?? 8);
const SECONDS = Number(process.env.STOP_SECONDS ?? 5);
const DRAIN_S = Number(process.env.STOP_DRAIN_S ?? 3);
delete process.env.NODE_EXTRA_CA_CERTS;

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const { client, urls } = world;
  const samples: Record<string, Sample[]> = {};
  const put = (k: string, s: Sample) => {
    (samples[k] ??= []).push(s);
    process.stderr.write(`${k}: ${s.rps.toFixed(0)} req/s p50 ${s.p50} p99 ${s.p99} ms cpu ${s.cpuUsPerReq?.toFixed(1)}\n`);
  };
  const agent = world.agentPid()!;
  try {
    const l7 = await world.proxyPids('l7'); // the workers and the agent
    const workers = l7.filter((p) => p !== agent);
    const nginx = await world.proxyPids('nginx');
    for (const mode of ['keep-alive', 'close'] as const) {
      await wrk(client, urls.l7, 10, mode, 3);
      await wrk(client, urls.nginx, 10, mode, 3);
    }
    for (let r = 0; r < ROUNDS; r++) {
      for (const arm of r % 2 ? ['S', 'A'] : ['A', 'S']) {
        await wrk(client, urls.l7, 10, 'close', 2);
        if (arm === 'S') process.kill(agent, 'SIGSTOP');
        try {
          put(arm, await wrk(client, urls.l7, 10, 'close', SECONDS, arm === 'S' ? workers : l7, arm === 'S' ? undefined : agent));
        } finally {
          if (arm === 'S') process.kill(agent, 'SIGCONT');
        }
        if (arm === 'S') await sleep(DRAIN_S * 1000);
      }
      put('nginx', await wrk(client, urls.nginx, 10, 'close', SECONDS, nginx));
      process.stderr.write(`round ${r + 1}/${ROUNDS} done, load ${os.loadavg()[0].toFixed(2)}\n`);
    }
  } finally {
    try {
      process.kill(agent, 'SIGCONT');
    } catch {
      /* gone */
    }
    await world.close();
  }
  const m = (k: string, f: keyof Sample) => median(samples[k].map((s) => Number(s[f])));
  const per = (k: string, f: keyof Sample, d: number) => samples[k].map((s) => Number(s[f]).toFixed(d)).join(' ');
  console.log(
    `A: the agent running, S: stopped; close 10, ${ROUNDS} rounds × ${SECONDS} s, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
  );
  console.log('| arm | req/s | p50 ms | p99 ms | p99 / nginx | CPU µs/req (workers, + agent in A) | per-round p99 |');
  console.log('|---|---|---|---|---|---|---|');
  for (const k of ['A', 'S', 'nginx'])
    console.log(
      `| ${k} | ${m(k, 'rps').toFixed(0)} | ${m(k, 'p50').toFixed(2)} | ${m(k, 'p99').toFixed(2)} | ${(m(k, 'p99') / m('nginx', 'p99')).toFixed(2)}× | ${m(k, 'cpuUsPerReq').toFixed(1)} | ${per(k, 'p99', 2)} |`,
    );
  const lower = samples.S.filter((s, i) => s.p99 < samples.A[i].p99).length;
  console.log(`S's p99 below A's in ${lower} of ${ROUNDS} rounds; agent CPU µs/req in A: ${per('A', 'agentUsPerReq', 1)}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
