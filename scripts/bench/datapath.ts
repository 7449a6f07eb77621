// npm run bench:datapath — not a test. Throughput (1 and 4 streams), request/response latency and
// connection rate between two pods for plain veth, the reference bridge plugin and Membrane, in one
// interleaved run (ratios against plain veth); then endpoint create/delete latency through the API.
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { startAgent, randomId } from '../../integration/lib/agent.ts';
import { connectionRate, markdownTable, median, percentile, rrLatency, settled, throughput } from './lib.ts';
import { membrane, plainVeth, referenceBridge, type Pods } from './topologies.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
// A node's agent runs long before its pods' traffic: Membrane's cells start once the fresh agent has
// settled (under 2 % of a CPU over a second, at most BENCH_AGENT_SETTLE_S seconds; 0 = measure at once).
// A just-started agent takes 3-6 % of the two CPUs for ~15 s (its JIT and GC), which 4 streams pay
// (docs/performance-history.md, issue 17).
const SETTLE_S = Number(process.env.BENCH_AGENT_SETTLE_S ?? 30);
delete process.env.NODE_EXTRA_CA_CERTS;

type Metric = 'tput1' | 'tput4' | 'rr' | 'crr';
const METRICS: { key: Metric; label: string; unit: string; higherIsBetter: boolean }[] = [
  { key: 'tput1', label: 'TCP throughput, 1 stream', unit: 'Gbit/s', higherIsBetter: true },
  { key: 'tput4', label: 'TCP throughput, 4 streams', unit: 'Gbit/s', higherIsBetter: true },
  { key: 'rr', label: 'request/response RTT (p50)', unit: 'µs', higherIsBetter: false },
  { key: 'crr', label: 'connection rate', unit: 'conn/s', higherIsBetter: true },
];

async function measure(p: Pods): Promise<Record<Metric, number>> {
  return {
    tput1: await throughput(p.a, p.b, p.ipB, 1, SECONDS),
    tput4: await throughput(p.a, p.b, p.ipB, 4, SECONDS),
    rr: await rrLatency(p.a, p.b, p.ipB, SECONDS),
    crr: await connectionRate(p.a, p.b, p.ipB, SECONDS),
  };
}

async function datapath(): Promise<string> {
  const builders = [plainVeth, referenceBridge, membrane];
  const samples = new Map<string, Record<Metric, number[]>>();
  for (let round = 1; round <= ROUNDS; round++) {
    for (const build of builders) {
      const pods = await build();
      try {
        const pid = pods.agent?.pid();
        if (pid && SETTLE_S) {
          const s = await settled([pid], { busyPct: 2, windows: 1, timeoutMs: SETTLE_S * 1000, throwOnTimeout: false });
          process.stderr.write(`round ${round} ${pods.name}: agent settled after ${(s.ms / 1000).toFixed(1)} s\n`);
        }
        const r = await measure(pods);
        const s = samples.get(pods.name) ?? { tput1: [], tput4: [], rr: [], crr: [] };
        for (const m of METRICS) s[m.key].push(r[m.key]);
        samples.set(pods.name, s);
        process.stderr.write(`round ${round} ${pods.name}: ${JSON.stringify(r)}\n`);
      } finally {
        await pods.cleanup();
      }
    }
  }
  const base = samples.get('plain veth + host routes')!;
  const rows = METRICS.map((m) => [
    `${m.label} (${m.unit})`,
    ...[...samples.values()].map((s) => {
      const v = median(s[m.key]);
      const ratio = v / median(base[m.key]);
      return `${v.toFixed(m.key === 'crr' ? 0 : m.key === 'rr' ? 1 : 2)} (${ratio.toFixed(2)}×)`;
    }),
  ]);
  return markdownTable(['metric (median of ' + ROUNDS + ' rounds, ' + SECONDS + ' s each)', ...samples.keys()], rows);
}

async function controlPlane(n = 100): Promise<string> {
  const agent = await startAgent();
  const nss: TestNetns[] = [];
  const create: number[] = [],
    del: number[] = [];
  try {
    for (let i = 0; i < n; i++) nss.push(createNetns('mbb'));
    for (const [i, ns] of nss.entries()) {
      const t0 = performance.now();
      await agent.client.createEndpoint({ containerId: `cp-${i}-${randomId()}`, netns: ns.path, ifName: 'eth0' });
      create.push(performance.now() - t0);
    }
    for (const ep of await agent.client.listEndpoints()) {
      const t0 = performance.now();
      await agent.client.deleteEndpoint(ep.containerId, ep.ifName);
      del.push(performance.now() - t0);
    }
  } finally {
    for (const ns of nss) ns.remove();
    await agent.cleanup();
  }
  const fmt = (xs: number[]) => [`${median(xs).toFixed(2)} ms`, `${percentile(xs, 0.9).toFixed(2)} ms`];
  return markdownTable(
    ['endpoint operation through the agent API (n=' + n + ')', 'median', 'p90'],
    [
      ['create (veth in netns, IPAM, routes, BPF attach, state)', ...fmt(create)],
      ['delete', ...fmt(del)],
    ],
  );
}

const which = process.argv[2] ?? 'all';
if (which === 'all' || which === 'datapath') process.stdout.write(`\n${await datapath()}\n`);
if (which === 'all' || which === 'control') process.stdout.write(`\n${await controlPlane()}\n`);
