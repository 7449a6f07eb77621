// node --import tsx scripts/bench/l7-agent-ab.ts — not a test: two builds of the agent against each
// other on the L7 proxy's load, where l7-ab.ts swaps only the workers. AGENT_A and AGENT_B name two
// membrane-agent bundles, each in a whole dist/ of its build (its workers and datapath are found next
// to it: e.g. `cp -a dist /tmp/a/` before a change, then after it). A world (l7-world.ts) is started
// per build and round, in alternating order: a 3 s warm-up of L7 and of nginx, then AGENT_SECONDS (5)
// of wrk at AGENT_CONNS (10) connections in each mode of AGENT_MODES (keep-alive), L7 then nginx, the
// nginx peer as each world's yardstick; medians over AGENT_ROUNDS (4) of L7's p99, its p99 over
// nginx's in the same world, req/s and the agent's CPU per request.
import os from 'node:os';
import { startL7World } from './l7-world.ts';
import { type Mode, type Sample, wrk } from './l7-wrk.ts';
import { median } from './lib.ts';

const A = process.env.AGENT_A;
const B = process.env.AGENT_B;
const ROUNDS = Number(process.env.AGENT_ROUNDS ?? 4);
const SECONDS = Number(process.env.AGENT_SECONDS ?? 5);
const CONNS = Number(process.env.AGENT_CONNS ?? 10);
const MODES = (process.env.AGENT_MODES ?? 'keep-alive').split(',') as Mode[];
delete process.env.NODE_EXTRA_CA_CERTS;

async function measure(bin: string, put: (k: string, s: Sample) => void, arm: string): Promise<void> {
  process.env.BENCH_AGENT_BIN = bin;
  const world = await startL7World('0');
  try {
    const l7 = await world.proxyPids('l7');
    const nginx = await world.proxyPids('nginx');
    const agent = world.agentPid();
    for (const mode of MODES) {
      await wrk(world.client, world.urls.l7, CONNS, mode, 3);
      await wrk(world.client, world.urls.nginx, CONNS, mode, 3);
      put(`${arm}|${mode}`, await wrk(world.client, world.urls.l7, CONNS, mode, SECONDS, l7, agent));
      put(`${arm}-nginx|${mode}`, await wrk(world.client, world.urls.nginx, CONNS, mode, SECONDS, nginx));
    }
  } finally {
    await world.close();
    delete process.env.BENCH_AGENT_BIN;
  }
}

async function main(): Promise<void> {
  if (!A || !B) throw new Error('AGENT_A and AGENT_B: the two membrane-agent bundles to compare');
  const load0 = os.loadavg()[0].toFixed(2);
  const samples: Record<string, Sample[]> = {};
  const put = (k: string, s: Sample) => (samples[k] ??= []).push(s);
  for (let r = 0; r < ROUNDS; r++) {
    for (const [arm, bin] of r % 2
      ? [
          ['B', B],
          ['A', A],
        ]
      : [
          ['A', A],
          ['B', B],
        ])
      await measure(bin, put, arm);
    process.stderr.write(`round ${r + 1}/${ROUNDS} done, load ${os.loadavg()[0].toFixed(2)}\n`);
  }
  console.log(
    `A ${A}, B ${B}; ${ROUNDS} rounds × ${SECONDS} s, ${CONNS} connections, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
  );
  console.log('| mode | arm | req/s | p99 ms | p99 / same world nginx | agent µs/request | per-round p99 (nginx) |');
  console.log('|---|---|---|---|---|---|---|');
  for (const mode of MODES)
    for (const arm of ['A', 'B']) {
      const l7 = samples[`${arm}|${mode}`];
      const ng = samples[`${arm}-nginx|${mode}`];
      const ratio = median(l7.map((s, i) => s.p99 / ng[i].p99));
      console.log(
        `| ${mode} | ${arm} | ${median(l7.map((s) => s.rps)).toFixed(0)} | ${median(l7.map((s) => s.p99)).toFixed(2)} | ${ratio.toFixed(2)}× | ${median(l7.map((s) => s.agentUsPerReq ?? 0)).toFixed(2)} | ${l7.map((s, i) => `${s.p99.toFixed(2)} (${ng[i].p99.toFixed(2)})`).join(' ')} |`,
      );
    }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
