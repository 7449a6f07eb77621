// node --experimental-websocket --import tsx scripts/bench/l7-agent-cpu.ts — not a test: where the
// agent's own thread spends its time while the L7 workers' records flow. In bench:l7's world
// (l7-world.ts) the agent starts with an inspector on a loopback port of its own (--inspect=127.0.0.1:0
// through BENCH_AGENT_NODE_FLAGS; the URL read from its log); after a 3 s warm-up, V8's CPU profiler
// (sampling every 100 µs) runs over CPU_SECONDS (5) of wrk at 10 connections (CPU_MODE: keep-alive or
// close). Prints the agent's self time per request, by function (the top CPU_TOP, 20; a line of the
// bundle, dist/bin/membrane-agent.js, whose .map names the source), Node's own frames named with the
// agent's frame that called them. (`--cpu-prof` from the start cannot be used: its SIGPROF makes the
// verifier give up loading the datapath with EAGAIN.)
import os from 'node:os';
import { inspectorOf } from './inspector.ts';
import { startL7World } from './l7-world.ts';
import { wrk } from './l7-wrk.ts';

const MODE = process.env.CPU_MODE === 'close' ? 'close' : 'keep-alive';
const SECONDS = Number(process.env.CPU_SECONDS ?? 5);
const TOP = Number(process.env.CPU_TOP ?? 20);
delete process.env.NODE_EXTRA_CA_CERTS;
process.env.BENCH_AGENT_NODE_FLAGS = `${process.env.BENCH_AGENT_NODE_FLAGS ?? ''} --inspect=127.0.0.1:0`.trim();

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  try {
    const agent = world.agentPid()!;
    const cdp = await inspectorOf(agent, 'agent');
    await cdp.call('Profiler.enable');
    await cdp.call('Profiler.setSamplingInterval', { interval: 100 });
    await wrk(world.client, world.urls.l7, 10, MODE, 3);
    await cdp.call('Profiler.start');
    const s = await wrk(world.client, world.urls.l7, 10, MODE, SECONDS);
    const { profile } = (await cdp.call('Profiler.stop')) as {
      profile: { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] };
    };
    cdp.close();
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const ours = (n: ProfileNode) => n.callFrame.url.endsWith('membrane-agent.js');
    const name = (n: ProfileNode) =>
      `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').pop()}:${n.callFrame.lineNumber + 1}`;
    const self = new Map<string, number>();
    let total = 0;
    let idle = 0;
    profile.samples.forEach((id, i) => {
      const us = profile.timeDeltas[i + 1] ?? 0;
      const n = byId.get(id)!;
      if (n.callFrame.functionName === '(idle)') {
        idle += us;
        return;
      }
      total += us;
      let k = name(n);
      if (!ours(n)) {
        // Named with the nearest frame of the agent's own above it.
        let p = parent.get(n.id);
        while (p !== undefined && !ours(byId.get(p)!)) p = parent.get(p);
        k += ` from ${p === undefined ? '-' : name(byId.get(p)!)}`;
      }
      self.set(k, (self.get(k) ?? 0) + us);
    });
    console.log(
      `${MODE}, 10 connections, ${SECONDS} s: ${s.requests} requests (${s.rps.toFixed(0)}/s); the agent's thread busy ${(total / 1000).toFixed(0)} ms (${(total / s.requests).toFixed(3)} µs per request), idle ${(idle / 1000).toFixed(0)} ms; load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
    );
    console.log('| function (bundle line) | ns per request | share |');
    console.log('|---|---|---|');
    for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, TOP))
      console.log(`| ${k} | ${((1000 * v) / s.requests).toFixed(1)} | ${((100 * v) / total).toFixed(1)} % |`);
  } finally {
    await world.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
