// npm run bench:policy (node --import tsx scripts/bench/policy.ts) — not a test. In one interleaved
// run: TCP throughput, request/response latency and connection rate between two pods for
//   plain veth + host routes (no filter), Membrane with 0, 10 and 10,000 rules,
//   iptables FORWARD chains with 10 and 10,000 rules (linear, as the firewall plugin and iptables-based
//   NetworkPolicy do), the same with an ESTABLISHED-first conntrack rule, nftables with a set lookup;
// then the time to import 10,000 rules until they are enforced, and a one-rule update among them: as a
// re-import of the whole 10,000-rule policy, and as the replacement by name of the one policy (of 100
// rules) that holds the changed rule among 100 such policies (`kubectl apply` of one CNP).
// BENCH_ONLY=updates measures the imports and updates alone (no traffic, no peers): a smoke run.
// The rule that admits the benchmark traffic is always the last one (worst case for linear chains).
// Peers use a unique chain / table per run, removed by exact name even when a step fails.
import { execFileSync } from 'node:child_process';
import { stringify as stringifyYaml } from 'yaml';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { randomId, startAgent } from '../../integration/lib/agent.ts';
import type { AgentClient } from '../../shared/src/api/client.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { connectionRate, markdownTable, median, rrLatency, throughput } from './lib.ts';
import { fake, membranePolicy, membranePolicyParts, plainVeth, type Pods } from './topologies.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const BIG = Number(process.env.BENCH_RULES ?? 10_000);
/** The per-policy update: BIG rules as this many policies. */
const PARTS = Number(process.env.BENCH_POLICY_PARTS ?? 100);
const UPDATES_ONLY = process.env.BENCH_ONLY === 'updates';
delete process.env.NODE_EXTRA_CA_CERTS;

type Metric = 'tput' | 'rr' | 'crr';
const METRICS: { key: Metric; label: string; higher: boolean; digits: number }[] = [
  { key: 'tput', label: 'TCP throughput 1 stream (Gbit/s)', higher: true, digits: 2 },
  { key: 'rr', label: 'RR latency p50 (µs)', higher: false, digits: 1 },
  { key: 'crr', label: 'connection rate (conn/s)', higher: true, digits: 0 },
];

const sh = (cmd: string, args: string[], input?: string) => execFileSync(cmd, args, { input, stdio: ['pipe', 'pipe', 'pipe'] });
const quiet = (cmd: string, args: string[]) => {
  try {
    sh(cmd, args);
  } catch {
    /* already gone */
  }
};
async function measure(p: { a: TestNetns; b: TestNetns; ipB: string }): Promise<Record<Metric, number>> {
  return {
    tput: await throughput(p.a, p.b, p.ipB, 1, SECONDS),
    rr: await rrLatency(p.a, p.b, p.ipB, SECONDS),
    crr: await connectionRate(p.a, p.b, p.ipB, SECONDS),
  };
}

// ---- Membrane ---------------------------------------------------------------------------------------

interface MembraneAgent {
  client: AgentClient;
  pc: PolicyClient;
  cleanup(): Promise<void>;
}

async function membraneAgent(): Promise<MembraneAgent> {
  const agent = await startAgent();
  return { client: agent.client, pc: new PolicyClient(agent.client), cleanup: () => agent.cleanup() };
}

/** Two fresh pods per measurement: TIME_WAIT sockets left by a connection-rate run would slow the
 *  next run in the same netns (the port search), whatever the datapath. */
async function membranePods(m: MembraneAgent): Promise<{ a: TestNetns; b: TestNetns; ipB: string; cleanup(): Promise<void> }> {
  const a = createNetns('mbb'),
    b = createNetns('mbb');
  const ids = [`bench-${a.name}`, `bench-${b.name}`];
  const cleanup = async () => {
    for (const id of ids) await m.client.deleteEndpoint(id, 'eth0').catch(() => undefined);
    a.remove();
    b.remove();
  };
  try {
    await m.client.createEndpoint({ containerId: ids[0], netns: a.path, ifName: 'eth0', labels: { bench: 'client' } });
    const eb = await m.client.createEndpoint({ containerId: ids[1], netns: b.path, ifName: 'eth0', labels: { bench: 'server' } });
    return { a, b, ipB: eb.ips[0].address.split('/')[0], cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

// ---- iptables / nftables peers ----------------------------------------------------------------------

/** Host veth names of a plainVeth topology (pv<id>0 / pv<id>1), from its routes. */
function hostVeths(p: Pods): [string, string] {
  const dev = (ip: string) => JSON.parse(sh('ip', ['-j', 'route', 'show', `${ip}/32`]).toString())[0].dev as string;
  return [dev(p.ipA), dev(p.ipB)];
}

interface Filter {
  name: string;
  install(p: Pods): () => void;
}

function iptablesFilter(n: number, establishedFirst: boolean): Filter {
  return {
    name: `iptables ${establishedFirst ? 'ESTABLISHED-first ' : ''}${n} rules`,
    install(p) {
      const chain = `MBB${randomId(3).toUpperCase()}`;
      const [va, vb] = hostVeths(p);
      const lines = ['*filter', `:${chain} - [0:0]`];
      if (establishedFirst) lines.push(`-A ${chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`);
      for (let i = 1; i < n; i++) lines.push(`-A ${chain} -s ${fake(i)}/32 -p tcp -m tcp --dport 443 -j ACCEPT`);
      lines.push(
        `-A ${chain} -s ${p.ipA}/32 -d ${p.ipB}/32 -j ACCEPT`,
        `-A ${chain} -s ${p.ipB}/32 -d ${p.ipA}/32 -j ACCEPT`,
        `-A ${chain} -j DROP`,
        'COMMIT',
        '',
      );
      const jumps = [
        ['-i', va, '-o', vb],
        ['-i', vb, '-o', va],
      ];
      try {
        sh('iptables-restore', ['--noflush'], lines.join('\n'));
        for (const j of jumps) sh('iptables', ['-I', 'FORWARD', ...j, '-j', chain]);
      } catch (e) {
        remove();
        throw e;
      }
      function remove() {
        for (const j of jumps) quiet('iptables', ['-D', 'FORWARD', ...j, '-j', chain]);
        quiet('iptables', ['-F', chain]);
        quiet('iptables', ['-X', chain]);
      }
      return remove;
    },
  };
}

function nftablesFilter(n: number): Filter {
  return {
    name: `nftables set ${n} rules`,
    install(p) {
      const table = `mbb${randomId(3)}`;
      const [va, vb] = hostVeths(p);
      const elems = [`${p.ipA} . ${p.ipB}`, `${p.ipB} . ${p.ipA}`];
      for (let i = 1; i < n; i++) elems.push(`${fake(i)} . ${p.ipB}`);
      const script = `table ip ${table} {
  set allowed { type ipv4_addr . ipv4_addr; elements = { ${elems.join(', ')} } }
  chain mbb_forward {
    type filter hook forward priority 0; policy accept;
    iifname { "${va}", "${vb}" } ip saddr . ip daddr @allowed accept
    iifname { "${va}", "${vb}" } drop
  }
}
`;
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mbb-nft-')), 'rules.nft');
      fs.writeFileSync(file, script);
      const remove = () => {
        quiet('nft', ['delete', 'table', 'ip', table]);
        fs.rmSync(path.dirname(file), { recursive: true, force: true });
      };
      try {
        sh('nft', ['-f', file]);
      } catch (e) {
        remove();
        throw e;
      }
      return remove;
    },
  };
}

// ---- the run ----------------------------------------------------------------------------------------

const samples = new Map<string, Record<Metric, number[]>>();
function record(name: string, r: Record<Metric, number>): void {
  const s = samples.get(name) ?? { tput: [], rr: [], crr: [] };
  for (const m of METRICS) s[m.key].push(r[m.key]);
  samples.set(name, s);
  process.stderr.write(`${name}: ${JSON.stringify(r)}\n`);
}

const importTimes: { total: number; enforced: number; entries: number }[] = [];
const yamlImportTimes: { total: number; enforced: number }[] = [];
const updateTimes: { total: number; enforced: number; upserts: number }[] = [];
const unrelatedTimes: { total: number; enforced: number; upserts: number }[] = [];
const partTimes: { total: number; enforced: number; upserts: number }[] = [];

/** A one-rule policy for other endpoints than the big one's: the work must follow it, not the 10,000. */
const unrelatedPolicy = (port: number) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'bench-unrelated' },
    spec: {
      endpointSelector: { matchLabels: { bench: 'client' } },
      egress: [{ toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }] }],
    },
  });

async function membraneRun(m: MembraneAgent, n: number): Promise<void> {
  const pods = await membranePods(m);
  try {
    await m.pc.delete('all');
    if (n > 0) {
      const t0 = performance.now();
      const r = await m.pc.import(membranePolicy(n));
      const total = performance.now() - t0;
      if (n === BIG) {
        importTimes.push({ total, enforced: r.enforcedMs, entries: r.stats.policyUpserts });
        // One rule changed among BIG: only the difference is written.
        const t1 = performance.now();
        const u = await m.pc.import(membranePolicy(n).replace(`"${fake(1)}/32"`, `"${fake(BIG + 1)}/32"`));
        updateTimes.push({
          total: performance.now() - t1,
          enforced: u.enforcedMs,
          upserts: u.stats.policyUpserts + u.stats.policyRemovals,
        });
        // Another policy (one rule, the client pod) changed next to them: only its entries are computed.
        await m.pc.import(unrelatedPolicy(1));
        const t3 = performance.now();
        const o = await m.pc.import(unrelatedPolicy(2));
        unrelatedTimes.push({
          total: performance.now() - t3,
          enforced: o.enforcedMs,
          upserts: o.stats.policyUpserts + o.stats.policyRemovals,
        });
        await m.pc.delete(['bench-unrelated']);
        // The same rules as PARTS policies; one rule changed by replacing the one policy holding it.
        await m.pc.delete('all');
        await m.pc.import(membranePolicyParts(n, PARTS).all);
        for (const change of [fake(BIG + 1), fake(1)]) {
          const text = membranePolicyParts(n, PARTS, change).part(0);
          const t4 = performance.now();
          const r = await m.pc.import(text);
          partTimes.push({
            total: performance.now() - t4,
            enforced: r.enforcedMs,
            upserts: r.stats.policyUpserts + r.stats.policyRemovals,
          });
        }
        // The same policy as YAML, from scratch.
        await m.pc.delete('all');
        const t2 = performance.now();
        const y = await m.pc.import(stringifyYaml(JSON.parse(membranePolicy(n))));
        yamlImportTimes.push({ total: performance.now() - t2, enforced: y.enforcedMs });
      }
    }
    if (!UPDATES_ONLY) record(`Membrane ${n} rules`, await measure(pods));
  } finally {
    await pods.cleanup();
    await m.pc.delete('all');
  }
}

/** A fresh plain-veth pair per measurement (see membranePods), with the filter installed or none. */
async function peerRun(f: Filter | null): Promise<void> {
  const p = await plainVeth();
  try {
    if (!f) {
      record('plain veth (no filter)', await measure(p));
      return;
    }
    const remove = f.install(p);
    try {
      record(f.name, await measure(p));
    } finally {
      remove();
    }
  } finally {
    await p.cleanup();
  }
}

const ms = (xs: number[], digits = 0) => median(xs).toFixed(digits);

/** The import and update rows (all a BENCH_ONLY=updates run has). */
function updateRows(): string[][] {
  return [
    [
      `import ${BIG} rules: API round trip / until enforced (median)`,
      `${ms(importTimes.map((x) => x.total))} ms / ${ms(importTimes.map((x) => x.enforced))} ms (${importTimes[0]?.entries} map entries)`,
    ],
    [
      `import ${BIG} rules as YAML: API round trip / until enforced`,
      `${ms(yamlImportTimes.map((x) => x.total))} ms / ${ms(yamlImportTimes.map((x) => x.enforced))} ms`,
    ],
    [
      `change 1 rule among ${BIG}, whole policy re-imported: API round trip / until enforced`,
      `${ms(updateTimes.map((x) => x.total))} ms / ${ms(
        updateTimes.map((x) => x.enforced),
        1,
      )} ms (${updateTimes[0]?.upserts} entries written)`,
    ],
    [
      `change 1 rule among ${BIG} in ${PARTS} policies, its policy replaced by name: API round trip / until enforced`,
      `${ms(partTimes.map((x) => x.total))} ms / ${ms(
        partTimes.map((x) => x.enforced),
        1,
      )} ms (${partTimes[0]?.upserts} entries written)`,
    ],
    [
      `change a 1-rule policy of another pod next to ${BIG} rules: API round trip / until enforced`,
      `${ms(unrelatedTimes.map((x) => x.total))} ms / ${ms(
        unrelatedTimes.map((x) => x.enforced),
        1,
      )} ms (${unrelatedTimes[0]?.upserts} entries written)`,
    ],
  ];
}

function report(): string {
  if (UPDATES_ONLY)
    return `Medians of ${importTimes.length} imports, ${updateTimes.length} and ${partTimes.length} updates (BENCH_ONLY=updates: no traffic)\n\n${markdownTable(['update', 'result'], updateRows())}\n`;
  const base = samples.get('Membrane 0 rules')!;
  const veth = samples.get('plain veth (no filter)')!;
  const rows = [...samples].map(([name, s]) => [
    name,
    ...METRICS.map((m) => {
      const v = median(s[m.key]);
      const r0 = v / median(base[m.key]),
        rv = v / median(veth[m.key]);
      return `${v.toFixed(m.digits)} (${r0.toFixed(2)}× / ${rv.toFixed(2)}×)`;
    }),
  ]);
  const head = `Medians of ${ROUNDS} rounds, ${SECONDS} s each; ratios against Membrane with 0 rules / plain veth (same run)`;
  const crr = (name: string) => median(samples.get(name)!.crr);
  const goals = [
    [
      'Membrane 10k vs 0 rules (tput / RR / CRR)',
      METRICS.map((m) => (median(samples.get(`Membrane ${BIG} rules`)![m.key]) / median(base[m.key])).toFixed(2)).join(' / '),
    ],
    [
      'Membrane 10k vs plain veth (tput / RR / CRR)',
      METRICS.map((m) => (median(samples.get(`Membrane ${BIG} rules`)![m.key]) / median(veth[m.key])).toFixed(2)).join(' / '),
    ],
    ['CRR: Membrane 10k / iptables 10k', (crr(`Membrane ${BIG} rules`) / crr(`iptables ${BIG} rules`)).toFixed(1) + '×'],
    ['CRR: Membrane 10k / nftables set 10k', (crr(`Membrane ${BIG} rules`) / crr(`nftables set ${BIG} rules`)).toFixed(2) + '×'],
    ...updateRows(),
  ];
  return `${head}\n\n${markdownTable(['topology', ...METRICS.map((m) => m.label)], rows)}\n\n${markdownTable(['goal check', 'result'], goals)}\n`;
}

async function main(): Promise<void> {
  process.stderr.write(
    `policy benchmark: ${ROUNDS} rounds x ${SECONDS} s, ${BIG} rules; ${os.cpus().length} CPUs, kernel ${os.release()}\n`,
  );
  const filters = [10, BIG].flatMap((n) => [iptablesFilter(n, false), iptablesFilter(n, true), nftablesFilter(n)]);
  const m = await membraneAgent();
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      process.stderr.write(`-- round ${round}\n`);
      const steps: (() => Promise<void>)[] = UPDATES_ONLY
        ? [() => membraneRun(m, BIG)]
        : [() => peerRun(null), ...[0, 10, BIG].map((n) => () => membraneRun(m, n)), ...filters.map((f) => () => peerRun(f))];
      // A different order each round, so drift over the run does not favour one topology.
      const shift = (round - 1) * 3;
      for (const step of [...steps.slice(shift % steps.length), ...steps.slice(0, shift % steps.length)]) await step();
    }
  } finally {
    await m.cleanup();
  }
  process.stdout.write(report());
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
