// How often an idle agent wakes up, per thread: an agent beside a node's pods shares their CPUs, and
// every wake-up is a context switch on a CPU that 4 TCP streams keep busy (docs/performance-history.md, issue 17). Starts
// the built agent with no endpoints (`--l7-proxy off`), lets it settle, then counts voluntary and
// involuntary context switches of every thread (and of every child process) over a window.
//   node --import tsx scripts/bench/agent-wakeups.ts [--settle S] [--window S] [--hold S] [--agent-args '...']
// --agent-args: the agent's flags instead of `--l7-proxy off` (e.g. '' for the defaults).
// --endpoints N: N pods (netns with an endpoint each) on the agent first, idle too.
// --hold keeps the agent running that long after the count (for strace/perf by hand; its pid is printed).
import fs from 'node:fs';
import { randomId, startAgent } from '../../integration/lib/agent.ts';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { markdownTable, numberArg, sleep, stringArg } from './lib.ts';

interface Sample {
  name: string;
  vol: number;
  invol: number;
}

/** Context switches so far of every thread of pid and of its descendants, keyed by pid/tid. */
export function switches(pid: number): Map<string, Sample> {
  const out = new Map<string, Sample>();
  const walk = (p: number) => {
    let tids: string[];
    try {
      tids = fs.readdirSync(`/proc/${p}/task`);
    } catch {
      return; // gone
    }
    for (const tid of tids) {
      try {
        const status = fs.readFileSync(`/proc/${p}/task/${tid}/status`, 'utf8');
        const field = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
        const comm = fs.readFileSync(`/proc/${p}/task/${tid}/comm`, 'utf8').trim();
        out.set(`${p}/${tid}`, { name: comm, vol: field('voluntary_ctxt_switches'), invol: field('nonvoluntary_ctxt_switches') });
        for (const c of fs.readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean)) walk(Number(c));
      } catch {
        /* thread ended meanwhile */
      }
    }
  };
  walk(pid);
  return out;
}

/** Wake-ups per second of each thread over `seconds`, busiest first, threads that never woke left out. */
export async function wakeupRates(pid: number, seconds: number): Promise<{ key: string; name: string; perS: number }[]> {
  const a = switches(pid);
  await sleep(seconds * 1000);
  const b = switches(pid);
  return [...b]
    .map(([key, s]) => {
      const was = a.get(key) ?? { vol: 0, invol: 0 };
      return { key, name: s.name, perS: (s.vol - was.vol + s.invol - was.invol) / seconds };
    })
    .filter((r) => r.perS > 0)
    .sort((x, y) => y.perS - x.perS);
}

async function main(): Promise<void> {
  const settle = numberArg('settle', 30);
  const window = numberArg('window', 10);
  const hold = numberArg('hold', 0);
  const extraArgs = (stringArg('agent-args') ?? '--l7-proxy off').split(' ').filter(Boolean);
  const agent = await startAgent({ bundle: true, extraArgs });
  const pods: TestNetns[] = [];
  try {
    for (let i = 0; i < numberArg('endpoints', 0); i++) {
      const ns = createNetns('mbw');
      pods.push(ns);
      await agent.client.createEndpoint({ containerId: `wk-${i}-${randomId()}`, netns: ns.path, ifName: 'eth0' });
    }
    const pid = agent.pid()!;
    console.log(`agent pid ${pid}; settling ${settle} s`);
    await sleep(settle * 1000);
    const rates = await wakeupRates(pid, window);
    const total = rates.reduce((s, r) => s + r.perS, 0);
    console.log(
      markdownTable(
        ['pid/tid', 'thread', 'wake-ups/s'],
        [...rates.map((r) => [r.key, r.name, r.perS.toFixed(1)]), ['', '**total**', total.toFixed(1)]],
      ),
    );
    if (hold) {
      console.log(`holding agent pid ${pid} for ${hold} s`);
      await sleep(hold * 1000);
    }
  } finally {
    await agent.cleanup();
    for (const ns of pods) ns.remove();
  }
}

if (process.argv[1]?.endsWith('agent-wakeups.ts')) await main();
