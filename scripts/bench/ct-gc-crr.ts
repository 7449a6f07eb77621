// node --import tsx scripts/bench/ct-gc-crr.ts — not a test. What the agent's conntrack collection
// (agent/conntrack.ts, every --conntrack-gc-interval s, 15 by default) costs the connection rate across
// nodes, amplified: on one 2-node cluster (MODE=tunnel|native, tunnel) with a pod on each and RULES
// (10000) rules on the server pod, R (8) pairs of S (4) s crr samples, in each pair one plain and one
// with this process walking both nodes' tables as the agent's collection does (maps/conntrack.ts
// collectExpired: a batched dump, the expiry test, batched deletes, the owners' counts) every WALK_MS
// (1000, 15x the agent's rate), the order alternating. Prints each pair's ratio, the median, and what
// one walk took (ms of this process's time, entries walked). If a walk every second costs the rate
// nothing measurable, the agent's one every 15 s cannot. Measured 2026-12-05 (loaded, load 6-10): during
// crr the tables hold < 1,000 entries (the datapath deletes a flow's entry once its close completes),
// a walk of both 0.5-0.6 ms (median; max 12-56 ms), and walked / plain over 20 pairs 0.64-1.38x,
// median 0.95x (runs of 8 and 12 pairs: 0.83x, 0.99x): no cost the noise does not swamp.
// Run under the bench lock: flock /work/wt/.bench.lock node --import tsx scripts/bench/ct-gc-crr.ts
import os from 'node:os';
import path from 'node:path';
import { startCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { objGet } from '../../shared/src/bpf/libbpf.ts';
import { collectExpired, fill, type ConntrackFds } from '../../shared/src/maps/conntrack.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { connectionRate, median, settled, sleep } from './lib.ts';
import { membranePolicy } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const MODE = process.env.MODE ?? 'tunnel';
const RULES = Number(process.env.RULES ?? 10_000);
const S = Number(process.env.S ?? 4);
const R = Number(process.env.R ?? 8);
const WALK_MS = Number(process.env.WALK_MS ?? 1000);
const load0 = os.loadavg()[0].toFixed(2);
const c = await startCluster({ nodes: 2, agentArgs: ['--routing-mode', MODE, '--log-level', 'info'] });

const fdsOf = (n: TestNode): ConntrackFds => ({
  conntrack: objGet(path.join(n.bpffsDir, 'conntrack')),
  owned: objGet(path.join(n.bpffsDir, 'ct_owned')),
  reclaimed: objGet(path.join(n.bpffsDir, 'ct_reclaimed')),
  capacity: Number(process.env.CT_MAX ?? 131_072), // the agent's default --ct-max
});

try {
  const [n1, n2] = c.nodes;
  const fds = [fdsOf(n1), fdsOf(n2)];
  if (RULES) await new PolicyClient(n2.client).import(membranePolicy(RULES));
  const { a, b } = await podPairAcross(n1, n2, 'mbgc');
  const agents = [n1.agent.pid()!, n2.agent.pid()!];
  await sleep(12_000); // past the give-backs of the requests above (lib.ts GIVE_BACK_WINDOW_MS)
  await settled(agents, { busyPct: 2, timeoutMs: 30_000, throwOnTimeout: false });
  const walks: { ms: number; entries: number }[] = [];
  const sample = async (walking: boolean) => {
    let stop = false;
    const walker = (async () => {
      while (walking && !stop) {
        await sleep(WALK_MS);
        if (stop) break;
        for (const f of fds) {
          const entries = fill(f).entries;
          const t0 = performance.now();
          collectExpired(f, process.hrtime.bigint());
          walks.push({ ms: performance.now() - t0, entries });
        }
      }
    })();
    try {
      return await connectionRate(a.ns, b.ns, b.ip, S);
    } finally {
      stop = true;
      await walker;
    }
  };
  console.log(`${MODE} cluster, ${RULES} rules, ${R} pairs of ${S} s crr, a walk of both tables every ${WALK_MS} ms`);
  const ratios: number[] = [];
  for (let r = 0; r < R; r++) {
    const first = r % 2 === 0;
    const x = await sample(first);
    await sleep(2000);
    const y = await sample(!first);
    await sleep(2000);
    const [walked, plain] = first ? [x, y] : [y, x];
    ratios.push(walked / plain);
    console.log(
      `pair ${r + 1}: plain ${Math.round(plain)}, walked ${Math.round(walked)} conn/s: ${(walked / plain).toFixed(3)}x`,
    );
  }
  const big = walks.filter((w) => w.entries > 1000);
  console.log(
    `median walked / plain ${median(ratios).toFixed(3)}x; a walk ${median(walks.map((w) => w.ms)).toFixed(1)} ms median, ` +
      `${big.length ? median(big.map((w) => w.ms)).toFixed(1) : '-'} ms with > 1,000 entries (median ${big.length ? median(big.map((w) => w.entries)) : 0} entries), max ${Math.max(...walks.map((w) => w.ms)).toFixed(1)} ms`,
  );
  console.log(`load ${load0} -> ${os.loadavg()[0].toFixed(2)}`);
} finally {
  await c.cleanup();
}
