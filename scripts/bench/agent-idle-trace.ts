// node --import tsx scripts/bench/agent-idle-trace.ts — not a test. Which of an idle agent's timers
// costs what: a 2-node tunnel cluster with RULES (10000) rules imported (bench:cross-node's policy),
// a pod on each node, then no request and no traffic for SECONDS (64): each agent's CPU every 250 ms,
// printed as the slices over 40 ms (time since the trace began, ms of CPU), and the gaps between
// them, so a periodic cost shows its period (host addresses 10 s, conntrack collection
// --conntrack-gc-interval (15 s), identity sweep 60 s: agent/policy.ts, agent/conntrack.ts).
// AGENT_ARGS adds agent flags (e.g. "--conntrack-gc-interval 3600" to take the collection out);
// AGENT=<entry point> runs another agent (dist/bin/membrane-agent: the built one, as a node runs it).
// Run under the bench lock: flock /work/wt/.bench.lock node --import tsx scripts/bench/agent-idle-trace.ts
import os from 'node:os';
import { createNetns } from '../../integration/lib/netns.ts';
import { startCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { processCpuMs, settled, sleep } from './lib.ts';
import { membranePolicy } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const RULES = Number(process.env.RULES ?? 10_000);
const SECONDS = Number(process.env.SECONDS ?? 64);
const extra = process.env.AGENT_ARGS?.split(' ').filter(Boolean) ?? [];
const load0 = os.loadavg()[0].toFixed(2);
const c = await startCluster({
  nodes: 2,
  ...(process.env.AGENT ? { agentMain: process.env.AGENT } : {}),
  agentArgs: ['--routing-mode', 'tunnel', '--log-level', 'info', ...extra],
});
const nss: { remove(): void }[] = [];
try {
  const [n1, n2] = c.nodes;
  if (RULES) await new PolicyClient(n2.client).import(membranePolicy(RULES));
  const pod = async (n: TestNode, labels: Record<string, string>) => {
    const ns = createNetns('mbit');
    nss.push(ns);
    await n.client.createEndpoint({ containerId: `it-${ns.name}`, netns: ns.path, ifName: 'eth0', labels });
  };
  await pod(n1, { bench: 'client' });
  await pod(n2, { bench: 'server' });
  const agents = [n1.agent.pid()!, n2.agent.pid()!];
  await sleep(12_000); // past the give-backs of the requests above
  await settled(agents, { busyPct: 2, timeoutMs: 30_000, throwOnTimeout: false });
  console.log(`${RULES} rules, agent flags [${extra.join(' ')}], ${SECONDS} s idle; CPU slices over 40 ms per agent`);
  const t0 = Date.now();
  let prev = agents.map(processCpuMs);
  const spikes: { t: number; agent: number; ms: number }[] = [];
  let total = [0, 0];
  while (Date.now() - t0 < SECONDS * 1000) {
    await sleep(250);
    const cur = agents.map(processCpuMs);
    cur.forEach((v, i) => {
      const d = v - prev[i];
      total[i] += d;
      if (d > 40) spikes.push({ t: Date.now() - t0, agent: i + 1, ms: d });
    });
    prev = cur;
  }
  total = total.map((x) => Math.round(x));
  for (const a of [1, 2]) {
    const s = spikes.filter((x) => x.agent === a);
    console.log(
      `agent ${a}: ${total[a - 1]} ms CPU in ${SECONDS} s; slices ${s.map((x) => `${(x.t / 1000).toFixed(2)} s ${x.ms} ms`).join(', ')}; gaps ${s
        .slice(1)
        .map((x, i) => ((x.t - s[i].t) / 1000).toFixed(1))
        .join(' ')} s`,
    );
  }
  console.log(`load ${load0} -> ${os.loadavg()[0].toFixed(2)}`);
} finally {
  await c.cleanup();
  for (const ns of nss) ns.remove();
}
