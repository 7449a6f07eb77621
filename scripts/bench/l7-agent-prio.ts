// node --import tsx scripts/bench/l7-agent-prio.ts — not a test: how much of the L7 tail at 10
// connections is the agent's, and does its scheduling class change that? Same world (l7-world.ts),
// one measured wrk run per arm and round, arms in alternating order, nginx every round as the
// yardstick. Arms (PRIO_ARMS, default A,S,B,N,I), applied to every thread of the agent for the
// measured run only: A as it is; S stopped (SIGSTOP: the worker proxies and buffers its records as
// usual, no agent runs; then PRIO_DRAIN_S (3) s to take the backlog); B SCHED_BATCH (no wakeup
// preemption); N nice 19; I SCHED_IDLE. PRIO_MODE (keep-alive or close), PRIO_ROUNDS (5), PRIO_SECONDS (5).
// 2026-12-06, quiet (nothing else running, load 1-3 with the bench's own processes), keep-alive 10:
// 12:47, A/S 6 rounds: p99 A 0.70, S 0.49, nginx 0.54 ms (S below A in 6 of 6); 13:3x, A/S: A 0.72,
// S 0.44, nginx 0.58 (and 0.61 with an agent bundle that drops each batch unread in JavaScript: half
// of A's excess is the agent's JavaScript per batch, half its wakeups and reads); 12:58, A/B/N/I: 1.14,
// 0.97, 1.08, 1.03 against nginx 0.56 (a noisier window): no class gets near S. README: "The
// keep-alive-10 tail and the agent".
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { startL7World } from './l7-world.ts';
import { type Sample, wrk } from './l7-wrk.ts';
import { median, sleep } from './lib.ts';

const ROUNDS = Number(process.env.PRIO_ROUNDS ?? 5);
const SECONDS = Number(process.env.PRIO_SECONDS ?? 5);
const DRAIN_S = Number(process.env.PRIO_DRAIN_S ?? 3);
const MODE = process.env.PRIO_MODE === 'close' ? 'close' : 'keep-alive';
const ARMS = (process.env.PRIO_ARMS ?? 'A,S,B,N,I').split(',');
delete process.env.NODE_EXTRA_CA_CERTS;

/** Every thread of pid to the arm's policy and nice value (A: SCHED_OTHER, nice 0). */
function setClass(pid: number, arm: string): void {
  const policy = arm === 'B' ? '-b' : arm === 'I' ? '-i' : '-o';
  execFileSync('chrt', ['-a', policy, '-p', '0', String(pid)]);
  const nice = arm === 'N' ? 19 : 0;
  execFileSync('sh', ['-c', `for t in /proc/${pid}/task/*; do renice -n ${nice} -p \${t##*/} >/dev/null; done`]);
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const { client, urls } = world;
  const samples: Record<string, Sample[]> = {};
  const agent = world.agentPid()!;
  try {
    const l7 = await world.proxyPids('l7'); // the workers and the agent
    const workers = l7.filter((p) => p !== agent);
    const nginx = await world.proxyPids('nginx');
    await wrk(client, urls.l7, 10, MODE, 3);
    await wrk(client, urls.nginx, 10, MODE, 3);
    for (let r = 0; r < ROUNDS; r++) {
      for (const arm of r % 2 ? [...ARMS].reverse() : ARMS) {
        await wrk(client, urls.l7, 10, MODE, 1);
        const stop = arm === 'S';
        if (stop) process.kill(agent, 'SIGSTOP');
        else setClass(agent, arm);
        try {
          (samples[arm] ??= []).push(
            await wrk(client, urls.l7, 10, MODE, SECONDS, stop ? workers : l7, stop ? undefined : agent),
          );
        } finally {
          if (stop) process.kill(agent, 'SIGCONT');
          else setClass(agent, 'A');
        }
        if (stop) await sleep(DRAIN_S * 1000);
      }
      (samples.nginx ??= []).push(await wrk(client, urls.nginx, 10, MODE, SECONDS, nginx));
      process.stderr.write(`round ${r + 1}/${ROUNDS} done, load ${os.loadavg()[0].toFixed(2)}\n`);
    }
  } finally {
    try {
      process.kill(agent, 'SIGCONT');
      setClass(agent, 'A');
    } catch {
      /* gone */
    }
    await world.close();
  }
  const m = (k: string, f: keyof Sample) => median(samples[k].map((s) => Number(s[f])));
  const per = (k: string) => samples[k].map((s) => s.p99.toFixed(2)).join(' ');
  console.log(`${MODE} 10, ${ROUNDS} rounds × ${SECONDS} s, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`);
  console.log(
    '| arm | req/s | p50 ms | p99 ms | p99 / nginx | CPU µs/req (workers, + agent unless S) | agent µs/req | per-round p99 |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  for (const k of [...ARMS, 'nginx'])
    console.log(
      `| ${k} | ${m(k, 'rps').toFixed(0)} | ${m(k, 'p50').toFixed(3)} | ${m(k, 'p99').toFixed(2)} | ${(m(k, 'p99') / m('nginx', 'p99')).toFixed(2)}× | ${m(k, 'cpuUsPerReq').toFixed(1)} | ${k === 'nginx' || k === 'S' ? '-' : m(k, 'agentUsPerReq').toFixed(2)} | ${per(k)} |`,
    );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
