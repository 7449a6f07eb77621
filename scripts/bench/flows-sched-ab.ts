// node --import tsx scripts/bench/flows-sched-ab.ts — not a test. Whether the flow events' cost to the
// connection rate comes from the agent's wake-ups preempting the pods: the connection rate with events
// on vs off while the agent's threads run under SCHED_OTHER, and again under SCHED_BATCH (same weight,
// no wake-up preemption), set on the running agent with chrt; the four modes rotated in every round
// (BENCH_ROUNDS, default 10, of BENCH_SECONDS, default 2, each). Run under the bench lock.
import { execFileSync } from 'node:child_process';
import { startAgent } from '../../integration/lib/agent.ts';
import { connectionRate, median, sleep } from './lib.ts';
import { membrane, type Pods } from './topologies.ts';
import { setFlowEvents } from './switches.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const POLICY = process.env.BENCH_SCHED ?? 'batch'; // chrt's policy flag name: batch | idle
type Mode = 'on-other' | 'off-other' | `on-${string}` | `off-${string}`;
const MODES: Mode[] = ['on-other', 'off-other', `on-${POLICY}`, `off-${POLICY}`];

const agent = await startAgent({ extraArgs: ['--log-level', 'info'] });
let pods: Pods | undefined;
const rates: Record<string, number[]> = {};
const ratios: Record<string, number[]> = { other: [], [POLICY]: [] };
try {
  pods = await membrane(agent);
  const pid = String(agent.pid()!);
  await sleep(3000);
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 ? [...MODES].reverse() : MODES;
    const got: Record<string, number> = {};
    for (const mode of order) {
      const [ev, sched] = mode.split('-');
      setFlowEvents(agent.bpffsDir, ev === 'on');
      execFileSync('chrt', ['-a', sched === 'other' ? '-o' : `--${sched}`, '-p', '0', pid]);
      got[mode] = await connectionRate(pods.a, pods.b, pods.ipB, SECONDS);
      (rates[mode] ??= []).push(got[mode]);
    }
    for (const s of ['other', POLICY]) ratios[s].push(got[`on-${s}`] / got[`off-${s}`]);
    process.stderr.write(`round ${r + 1}: ${MODES.map((m) => `${m} ${got[m].toFixed(0)}`).join(' ')}\n`);
  }
} finally {
  if (pods) setFlowEvents(agent.bpffsDir, true);
  await pods?.cleanup();
  await agent.cleanup();
}
for (const m of MODES) process.stdout.write(`${m.padEnd(12)} median ${median(rates[m]).toFixed(0)} conn/s\n`);
for (const s of Object.keys(ratios))
  process.stdout.write(
    `${s.padEnd(6)} on/off median ${median(ratios[s]).toFixed(3)} (${Math.min(...ratios[s]).toFixed(2)}-${Math.max(...ratios[s]).toFixed(2)})\n`,
  );
