// node --import tsx scripts/bench/datapath-ab.ts — not a test. The cost of the hardened datapath,
// measured as an A/B in one interleaved run: the datapath before hardening (BENCH_BASE, default the
// commit before bpf/lib/spoof.h appeared: anti-spoofing, endpoint-bound conntrack, fragments, the
// non-evicting table) against this tree, each with its own agent, on fresh pod pairs, with 0 and
// BENCH_RULES (10,000) policy rules: TCP throughput (1 and 4 streams), request/response latency and
// connection rate, the bench:datapath and bench:policy metrics. The goal (issue 9): the hardened one at
// >= 0.98x the base on every metric. The base is checked out with git archive into a temporary
// directory (its own agent, loader and BPF object) and removed afterwards.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { REPO, startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { AgentClient } from '../../shared/src/api/client.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { connectionRate, markdownTable, median, rrLatency, throughput } from './lib.ts';
import { membranePolicy } from './topologies.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const RULES = Number(process.env.BENCH_RULES ?? 10_000);
delete process.env.NODE_EXTRA_CA_CERTS;

type Metric = 'tput1' | 'tput4' | 'rr' | 'crr';
const METRICS: { key: Metric; label: string; higher: boolean; digits: number }[] = [
  { key: 'tput1', label: 'TCP throughput, 1 stream (Gbit/s)', higher: true, digits: 2 },
  { key: 'tput4', label: 'TCP throughput, 4 streams (Gbit/s)', higher: true, digits: 2 },
  { key: 'rr', label: 'request/response RTT p50 (µs)', higher: false, digits: 1 },
  { key: 'crr', label: 'connection rate (conn/s)', higher: true, digits: 0 },
];

function baseRef(): string {
  if (process.env.BENCH_BASE) return process.env.BENCH_BASE;
  const first = execFileSync('git', ['-C', REPO, 'log', '--diff-filter=A', '--format=%H', '--', 'bpf/lib/spoof.h'], {
    encoding: 'utf8',
  })
    .trim()
    .split('\n')
    .pop();
  if (!first) throw new Error('cannot find the commit that added bpf/lib/spoof.h; set BENCH_BASE');
  return `${first}^`;
}

/** The base tree in a temporary directory, with its BPF object built and our node_modules. */
function checkoutBase(ref: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-ab-base-'));
  execFileSync('bash', ['-c', `git -C "${REPO}" archive "${ref}" | tar -x -C "${dir}"`]);
  fs.symlinkSync(path.join(REPO, 'node_modules'), path.join(dir, 'node_modules'));
  execFileSync('bash', [path.join(dir, 'scripts/build-bpf.sh')], { stdio: 'ignore' });
  return dir;
}

interface Variant {
  name: string;
  agent: TestAgent;
  client: AgentClient;
  pc: PolicyClient;
}

async function variant(name: string, start: () => Promise<TestAgent>): Promise<Variant> {
  const agent = await start();
  const client = new AgentClient({ socketPath: agent.socket, timeoutMs: 120_000 });
  return { name, agent, client, pc: new PolicyClient(client) };
}

/** A fresh client/server pod pair on the variant's agent (labels bench=client / bench=server). */
async function pods(v: Variant): Promise<{ a: TestNetns; b: TestNetns; ipB: string; cleanup(): Promise<void> }> {
  const a = createNetns('mbb'),
    b = createNetns('mbb');
  const ids = [`ab-${a.name}`, `ab-${b.name}`];
  const cleanup = async () => {
    for (const id of ids) await v.client.deleteEndpoint(id, 'eth0').catch(() => undefined);
    a.remove();
    b.remove();
  };
  try {
    await v.client.createEndpoint({ containerId: ids[0], netns: a.path, ifName: 'eth0', labels: { bench: 'client' } });
    const eb = await v.client.createEndpoint({ containerId: ids[1], netns: b.path, ifName: 'eth0', labels: { bench: 'server' } });
    return { a, b, ipB: eb.ips[0].address.split('/')[0], cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

const samples = new Map<string, Record<Metric, number[]>>();

async function run(v: Variant, rules: number): Promise<void> {
  await v.pc.delete('all');
  if (rules) await v.pc.import(membranePolicy(rules));
  const p = await pods(v);
  try {
    const r: Record<Metric, number> = {
      tput1: await throughput(p.a, p.b, p.ipB, 1, SECONDS),
      tput4: await throughput(p.a, p.b, p.ipB, 4, SECONDS),
      rr: await rrLatency(p.a, p.b, p.ipB, SECONDS),
      crr: await connectionRate(p.a, p.b, p.ipB, SECONDS),
    };
    const key = `${v.name}/${rules}`;
    const s = samples.get(key) ?? { tput1: [], tput4: [], rr: [], crr: [] };
    for (const m of METRICS) s[m.key].push(r[m.key]);
    samples.set(key, s);
    process.stderr.write(`${key}: ${JSON.stringify(r)}\n`);
  } finally {
    await p.cleanup();
    await v.pc.delete('all');
  }
}

function report(ref: string): string {
  const rows: string[][] = [];
  const verdicts: string[] = [];
  for (const rules of [0, RULES]) {
    for (const m of METRICS) {
      const base = median(samples.get(`base/${rules}`)![m.key]),
        hard = median(samples.get(`hardened/${rules}`)![m.key]);
      // Ratio "as good as": higher-is-better metrics hardened/base, latency base/hardened.
      const ratio = m.higher ? hard / base : base / hard;
      rows.push([
        `${m.label}, ${rules} rules`,
        base.toFixed(m.digits),
        hard.toFixed(m.digits),
        `${ratio.toFixed(3)}×`,
        ratio >= 0.98 ? 'met' : 'NOT met',
      ]);
      if (ratio < 0.98) verdicts.push(`${m.label} with ${rules} rules`);
    }
  }
  const head = `A/B, ${ROUNDS} rounds × ${SECONDS} s, medians; base = ${ref}; load average ${os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')} at the end (${os.cpus().length} CPUs, kernel ${os.release()})`;
  const table = markdownTable(['metric', 'base', 'hardened', 'hardened vs base (≥ 0.98× wanted)', 'goal'], rows);
  return `${head}\n\n${table}\n\n${verdicts.length ? `below 0.98×: ${verdicts.join('; ')}` : 'every metric at or above 0.98× of the base'}\n`;
}

/** One tree's per-packet cost, measured in a child process (each tree has its own koffi bindings). */
const IN_KERNEL = `
const [root, pinDir] = process.argv.slice(1);
const { loadDatapath, removePins } = await import(root + '/shared/src/bpf/datapath.ts');
const { objGet, progTestRun } = await import(root + '/shared/src/bpf/libbpf.ts');
const { eth, ipv4, tcp } = await import(process.env.PACKETS);
const fs = await import('node:fs');
const SRC = { hostIfindex: 1, endpointId: 91, identity: 9001, flags: 0, hostMac: '02:00:00:00:5b:01', containerMac: '02:00:00:00:5b:02', ips: ['10.245.0.1'] };
const DST = { hostIfindex: 900092, endpointId: 92, identity: 9002, flags: 0, hostMac: '02:00:00:00:5c:01', containerMac: '02:00:00:00:5c:02', ips: ['10.245.0.2'] };
const frame = (sport, flags) => eth(SRC.hostMac, SRC.containerMac, 0x0800, ipv4({ src: SRC.ips[0], dst: DST.ips[0], proto: 6 }, tcp(sport, 80, flags, sport)));
const dp = loadDatapath({ objectPath: root + '/dist/bpf/endpoint.o', pinDir });
const fd = objGet(pinDir + '/prog_from_container');
try {
  for (const e of [SRC, DST]) dp.upsertEndpoint(e);
  progTestRun(fd, frame(999, 0x02));
  const est = progTestRun(fd, frame(999, 0x10), { repeat: 200000 }).durationNs;
  // A RST with no entry is a new flow (policy, an entry in state CLOSED); the same RST again finds it
  // and closes it (the entry is deleted): repeated, it alternates, so its mean is (create + delete) / 2.
  const cycle = 2 * progTestRun(fd, frame(3000, 0x04), { repeat: 200000 }).durationNs;
  process.stdout.write(JSON.stringify({ est, cycle }));
} finally { fs.closeSync(fd); dp.close(); removePins(pinDir); }
`;

/** Per-packet cost in the kernel (BPF_PROG_TEST_RUN, warm, ns per packet; quiet and precise where the
 *  traffic numbers are noisy): each tree's own loader and object, the same frames, interleaved. */
function inKernel(baseDir: string): string {
  const trees: Record<string, string> = { base: baseDir, hardened: REPO };
  const out: Record<string, { est: number[]; cycle: number[] }> = {
    base: { est: [], cycle: [] },
    hardened: { est: [], cycle: [] },
  };
  for (let round = 0; round < 5; round++) {
    for (const [name, root] of Object.entries(trees)) {
      const text = execFileSync(
        process.execPath,
        ['--import', 'tsx', '--input-type=module', '-e', IN_KERNEL, root, `/sys/fs/bpf/mbb-ab-${randomBytes(4).toString('hex')}`],
        {
          cwd: REPO,
          encoding: 'utf8',
          env: { ...process.env, PACKETS: path.join(REPO, 'shared/src/bpf/packets.ts') },
        },
      );
      const r = JSON.parse(text) as { est: number; cycle: number };
      out[name].est.push(r.est);
      out[name].cycle.push(r.cycle);
    }
  }
  const row = (what: string, k: 'est' | 'cycle') => {
    const b = median(out.base[k]),
      h = median(out.hardened[k]);
    return [what, b.toFixed(0), h.toFixed(0), `${(b / h).toFixed(3)}×`];
  };
  return `In the kernel (BPF_PROG_TEST_RUN, ns per packet, median of 5 interleaved rounds):\n\n${markdownTable(
    ['packet', 'base', 'hardened', 'hardened vs base (≥ 0.98× wanted)'],
    [
      row('established pod-to-pod TCP packet (redirect_peer)', 'est'),
      row('a new flow and its end (policy, conntrack insert, delete)', 'cycle'),
    ],
  )}\n\n`;
}

async function main(): Promise<void> {
  const ref = baseRef();
  process.stderr.write(`datapath A/B: base ${ref} vs this tree; ${ROUNDS} rounds x ${SECONDS} s, 0 and ${RULES} rules\n`);
  execFileSync('bash', [path.join(REPO, 'scripts/build-bpf.sh')], { stdio: 'ignore' }); // this tree's object, current
  const baseDir = checkoutBase(ref);
  const variants: Variant[] = [];
  try {
    const baseLib = (await import(path.join(baseDir, 'integration/lib/agent.ts'))) as { startAgent: typeof startAgent };
    process.stdout.write(inKernel(baseDir));
    if (!ROUNDS) return; // BENCH_ROUNDS=0: the in-kernel comparison only
    // The L7 proxy is off for both: what is compared is the datapath, not what runs beside it.
    variants.push(
      await variant('base', () => baseLib.startAgent()),
      await variant('hardened', () => startAgent({ extraArgs: ['--l7-proxy', 'off'] })),
    );
    for (let round = 1; round <= ROUNDS; round++) {
      // Alternate which variant goes first, so drift over the run favours neither.
      const order = round % 2 ? variants : [...variants].reverse();
      for (const rules of [0, RULES]) for (const v of order) await run(v, rules);
    }
  } finally {
    for (const v of variants) await v.agent.cleanup().catch(() => undefined);
    fs.rmSync(baseDir, { recursive: true, force: true });
  }
  if (ROUNDS) process.stdout.write(report(ref));
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
