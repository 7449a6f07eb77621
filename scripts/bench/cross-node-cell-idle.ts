// node --import tsx scripts/bench/cross-node-cell-idle.ts — not a test. What the agents do on their
// own inside a bench:cross-node Membrane cell: the cell's steps as cross-node.ts takes them (for the
// overlay with RULES (10000) rules: delete all policies, import them, a pod on each node, wait until
// both pods are known on both nodes and both agents idle for two 1 s windows), then no traffic, only
// each agent's CPU over the four metric windows of BENCH_SECONDS (4) s each (1 stream, 4 streams, RR,
// conn/s), and the idle give-backs (idle-memory.ts) counted meanwhile. Time-driven agent work found
// here lands on that metric of every Membrane cell. R (4) cells, pods deleted between them as the bench
// does, alternately without and with the bench's wait past the give-backs of the last API requests
// (lib.ts pastGiveBacks). MODE=tunnel|native (tunnel; native imports no rules, as the bench's (d) cell).
// Run under the bench lock: flock /work/wt/.bench.lock node --import tsx scripts/bench/cross-node-cell-idle.ts
import os from 'node:os';
import { createNetns } from '../../integration/lib/netns.ts';
import { eventually, startCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { readIpcache } from '../../integration/lib/cluster-maps.ts';
import { agentRequestsMade, pastGiveBacks, processCpuMs, settled, sleep } from './lib.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { membranePolicy } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const MODE = process.env.MODE ?? 'tunnel';
const RULES = MODE === 'tunnel' ? Number(process.env.RULES ?? 10_000) : 0;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const R = Number(process.env.R ?? 4);
const METRICS = ['1 stream', '4 streams', 'RR', 'conn/s'];
const load0 = os.loadavg()[0].toFixed(2);
const c = await startCluster({ nodes: 2, agentArgs: ['--routing-mode', MODE, '--log-level', 'info'] });
const giveBacks = async (n: TestNode) => {
  const m = (await n.client.status()).memory;
  return `${m?.idleTrims ?? 0} given, ${m?.idleSkips ?? 0} skipped`;
};

try {
  const [n1, n2] = c.nodes;
  const agents = [n1.agent.pid()!, n2.agent.pid()!];
  const pc = new PolicyClient(n2.client);
  await settled(agents, { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
  console.log(`${MODE} cluster, ${RULES} rules, ${R} cells, windows of ${SECONDS} s; agent CPU (ms) node 1 / node 2`);
  for (let r = 0; r < R; r++) {
    const gb0 = [await giveBacks(n1), await giveBacks(n2)];
    if (RULES) {
      await pc.delete('all');
      await pc.import(membranePolicy(RULES));
    }
    const pod = async (n: TestNode, labels: Record<string, string>) => {
      const ns = createNetns('mbci');
      const ep = await n.client.createEndpoint({ containerId: `ci-${ns.name}`, netns: ns.path, ifName: 'eth0', labels });
      return {
        ns,
        ip: ep.ips[0].address.split('/')[0],
        identity: ep.identity,
        del: () => n.client.deleteEndpoint(ep.containerId, 'eth0'),
      };
    };
    const a = await pod(n1, { bench: 'client' });
    const b = await pod(n2, { bench: 'server' });
    agentRequestsMade();
    const wait = r % 2 === 1;
    const t0 = Date.now();
    await eventually(
      'pods known on both nodes',
      () =>
        readIpcache(n2.bpffsDir).get(`${a.ip}/32`) === a.identity && readIpcache(n1.bpffsDir).get(`${b.ip}/32`) === b.identity,
      30_000,
    );
    await settled(agents, { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
    if (wait) {
      await pastGiveBacks();
      await settled(agents, { busyPct: 2, windows: 1, timeoutMs: 15_000, throwOnTimeout: false });
    }
    const line = [
      `cell ${r + 1} (${wait ? 'past the give-backs' : 'settled only'}): measured ${((Date.now() - t0) / 1000).toFixed(1)} s after the pods`,
    ];
    for (const m of METRICS) {
      const c0 = agents.map(processCpuMs);
      await sleep(SECONDS * 1000);
      const c1 = agents.map(processCpuMs);
      line.push(`${m} ${c1[0] - c0[0]} / ${c1[1] - c0[1]}`);
    }
    // Read after the windows: the status requests set off give-backs of their own (after this line).
    const gb1 = [await giveBacks(n1), await giveBacks(n2)];
    line.push(`give-backs before the cell ${gb0.join(' / ')}, after ${gb1.join(' / ')}`);
    console.log(line.join('; '));
    await a.del();
    await b.del();
    agentRequestsMade();
    a.ns.remove();
    b.ns.remove();
    await pastGiveBacks(); // the deletions' give-backs kept out of the next cell, either way
    await settled(agents, { busyPct: 2, windows: 1, timeoutMs: 15_000, throwOnTimeout: false });
  }
  console.log(`load ${load0} -> ${os.loadavg()[0].toFixed(2)}`);
} finally {
  await c.cleanup();
}
