// What an idle agent costs pods it does not even carry: a plain veth pod pair (no BPF), 4-stream
// iperf3, with cells interleaved per round: no agent, an idle agent running beside the pods (no
// endpoints, `--l7-proxy off`, settled first as on a node), and that agent SIGSTOPped (a process
// that never runs: what is left is memory, not CPU). docs/performance-history.md, issue 17: the 4-stream row's gap.
//   node --import tsx scripts/bench/agent-presence.ts   (BENCH_ROUNDS, BENCH_SECONDS, BENCH_STREAMS)
// BENCH_AGENT_BEFORE=<another build's dist/bin/membrane-agent> adds a cell: that agent, idle, beside
// the pods (a before/after of the agent in the same interleaved run).
import os from 'node:os';
import { startAgent } from '../../integration/lib/agent.ts';
import { markdownTable, median, processCpuMs, settled, sleep, throughput } from './lib.ts';
import { plainVeth } from './topologies.ts';
import { wakeupRates } from './agent-wakeups.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const STREAMS = Number(process.env.BENCH_STREAMS ?? 4);
// A fresh agent runs at least this long before its cells (then until it is under 2 % of a CPU for
// 3 s): a node's agent runs long before its pods, and one just started still compiles and collects.
const SETTLE_S = Number(process.env.BENCH_AGENT_SETTLE_S ?? 20);
delete process.env.NODE_EXTRA_CA_CERTS;

const BEFORE = process.env.BENCH_AGENT_BEFORE;

type Cell = 'no agent' | 'idle agent' | 'agent stopped' | 'idle agent (before)';
const CELLS: Cell[] = ['no agent', 'idle agent', 'agent stopped', ...(BEFORE ? (['idle agent (before)'] as const) : [])];

/** One cell on a fresh plain-veth pair; `agent`: its pid is running (idle cell) or stopped. */
async function cell(agentPid?: number): Promise<{ gbits: number; agentCpuMs: number }> {
  const pods = await plainVeth();
  try {
    const cpu0 = agentPid ? processCpuMs(agentPid) : 0;
    const gbits = await throughput(pods.a, pods.b, pods.ipB, STREAMS, SECONDS);
    return { gbits, agentCpuMs: agentPid ? processCpuMs(agentPid) - cpu0 : 0 };
  } finally {
    await pods.cleanup();
  }
}

async function main(): Promise<void> {
  const load0 = os.loadavg();
  const samples = new Map<Cell, { gbits: number[]; cpu: number[] }>(CELLS.map((c) => [c, { gbits: [], cpu: [] }]));
  const wakeups = new Map<string, number[]>();
  const record = (round: number, which: Cell, r: { gbits: number; agentCpuMs: number }) => {
    samples.get(which)!.gbits.push(r.gbits);
    samples.get(which)!.cpu.push(r.agentCpuMs);
    process.stderr.write(`round ${round} ${which}: ${r.gbits.toFixed(2)} Gbit/s, agent ${r.agentCpuMs} ms CPU\n`);
  };
  for (let round = 1; round <= ROUNDS; round++) {
    // No agent at all before the agent's cells in odd rounds, after them in even ones; the two agent
    // cells swap places every round too.
    if (round % 2) record(round, 'no agent', await cell());
    const agents = [
      { label: 'now', bin: undefined as string | undefined },
      ...(BEFORE ? [{ label: 'before', bin: BEFORE }] : []),
    ];
    for (const a of round % 2 ? agents : [...agents].reverse()) {
      const agent = await startAgent({ bundle: true, agentBin: a.bin, extraArgs: ['--l7-proxy', 'off'] });
      try {
        const pid = agent.pid()!;
        await sleep(SETTLE_S * 1000);
        const s = await settled([pid], { busyPct: 2, windows: 3, timeoutMs: 60_000, throwOnTimeout: false });
        const w = (await wakeupRates(pid, 5)).reduce((sum, r) => sum + r.perS, 0);
        wakeups.set(a.label, [...(wakeups.get(a.label) ?? []), w]);
        process.stderr.write(
          `round ${round} agent ${a.label}: settled after ${(SETTLE_S + s.ms / 1000).toFixed(1)} s, ${w.toFixed(1)} wake-ups/s\n`,
        );
        if (a.bin) {
          record(round, 'idle agent (before)', await cell(pid));
          continue;
        }
        const idle = async () => record(round, 'idle agent', await cell(pid));
        const stopped = async () => {
          process.kill(pid, 'SIGSTOP');
          try {
            record(round, 'agent stopped', await cell(pid));
          } finally {
            process.kill(pid, 'SIGCONT');
          }
        };
        if (round % 2) {
          await idle();
          await stopped();
        } else {
          await stopped();
          await idle();
        }
      } finally {
        await agent.cleanup();
      }
    }
    if (!(round % 2)) record(round, 'no agent', await cell());
  }
  const base = median(samples.get('no agent')!.gbits);
  const rows = CELLS.map((c) => {
    const s = samples.get(c)!;
    const m = median(s.gbits);
    return [c, m.toFixed(2), `${(m / base).toFixed(2)}×`, s.gbits.map((x) => x.toFixed(1)).join(', '), median(s.cpu).toFixed(0)];
  });
  const load1 = os.loadavg();
  process.stdout.write(
    `\n${markdownTable(
      [
        `plain veth, ${STREAMS} streams (${ROUNDS} rounds × ${SECONDS} s)`,
        'Gbit/s (median)',
        '× no agent',
        'rounds',
        'agent CPU ms/cell',
      ],
      rows,
    )}\n\nidle agent wake-ups/s (median of rounds): ${[...wakeups].map(([k, v]) => `${k} ${median(v).toFixed(1)}`).join(', ')}; load average ${load0[0].toFixed(2)} -> ${load1[0].toFixed(2)}\n`,
  );
}

await main();
