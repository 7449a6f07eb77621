// npm run bench:dns (builds, then node --import tsx scripts/bench/dns.ts) — not a test. DNS through
// Membrane's DNS proxy against DNS straight to the server, in one interleaved run: dnsperf (Debian) in
// two client pods against dnsmasq (Debian) in a "world" netns (198.18.0.0/15):
//   direct   a pod whose egress to the server is plain L3/L4 (the proxy never sees its DNS)
//   proxy    a pod whose DNS rules (matchPattern "*") send every query through the proxy, answers
//            learned into the name cache, DNS flows recorded
// Queries/s and p50/p99 latency (dnsperf -v: every query's latency), medians over BENCH_ROUNDS rounds of
// BENCH_SECONDS each at BENCH_OUTSTANDING queries in flight, after BENCH_WARMUP seconds of each; and
// the CPU the agent and the server spent per query (from /proc: the ratio of queries/s follows the
// CPU share the proxy gets on a loaded machine, its CPU per query does not; the agent's main thread is
// shown apart from its DNS proxy worker threads). The agent runs with its default --dns-proxy-workers;
// MEMBRANE_DNS_PROXY_WORKERS=0 measures the relay on the agent's thread. Then the first connection after an answer:
// BENCH_FRESH names never seen before, each resolved through the proxy and connected to at once (a
// drop would show as a timeout), and the time from an answer reaching the proxy to its address being
// in the ipcache (the agent's membrane_fqdn_answer_to_datapath_seconds histogram).
// MEMBRANE_DNS_CACHE=on|off: the datapath answers the proxy pod's repeated queries from the answers the
// proxy relayed (--dns-cache, on by default); off measures the relay itself.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { randomId, REPO, startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { startDnsmasq } from '../../integration/lib/dns.ts';
import { killAll, startEchoServer } from '../../integration/lib/tcp.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { parsePrometheusText } from '../../shared/src/metrics/parse.ts';
import { markdownTable, median, percentile } from './lib.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const OUTSTANDING = Number(process.env.BENCH_OUTSTANDING ?? 20);
const FRESH = Number(process.env.BENCH_FRESH ?? 50);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 2);
delete process.env.NODE_EXTRA_CA_CERTS;

const R = Math.floor(Math.random() * 512);
const NET = `198.${18 + (R >> 8)}.${R & 255}`;
const DNS = `${NET}.53`;
const freshIp = (i: number) => `${NET}.${100 + i}`;

const policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-dns}
specs:
- endpointSelector: {matchLabels: {bench: proxy}}
  egress:
  - toCIDR: [${DNS}/32]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
  - toFQDNs: [{matchPattern: "*.fresh.test"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
- endpointSelector: {matchLabels: {bench: direct}}
  egress:
  - toCIDR: [${DNS}/32]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
`;

interface Sample {
  qps: number;
  p50: number;
  p99: number;
  lost: number;
  completed: number;
  agentCpuUs: number;
  /** Of agentCpuUs, the agent's main thread (the rest: DNS proxy workers, GC and libuv threads). */
  agentMainCpuUs: number;
  serverCpuUs: number;
}

/** CPU time (user + system, µs) a process has used so far (/proc/PID/stat, clock ticks). */
function cpuUs(pid: number | undefined, thread?: number): number {
  if (!pid) return 0;
  try {
    const f = fs.readFileSync(thread ? `/proc/${pid}/task/${thread}/stat` : `/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1e6) / 100;
  } catch {
    return 0;
  }
}

/** One dnsperf run, with the CPU the agent and the DNS server spent meanwhile (per query: what the
 *  proxy costs does not move with the machine's load the way queries/s does). */
async function measure(
  ns: TestNetns,
  queryFile: string,
  agentPid: number | undefined,
  serverPid: number | undefined,
): Promise<Sample> {
  const a0 = cpuUs(agentPid);
  const m0 = cpuUs(agentPid, agentPid);
  const s0 = cpuUs(serverPid);
  const r = await dnsperf(ns, queryFile);
  const n = Math.max(1, r.completed);
  return {
    ...r,
    agentCpuUs: (cpuUs(agentPid) - a0) / n,
    agentMainCpuUs: (cpuUs(agentPid, agentPid) - m0) / n,
    serverCpuUs: (cpuUs(serverPid) - s0) / n,
  };
}

function dnsperf(
  ns: TestNetns,
  queryFile: string,
  seconds = SECONDS,
): Promise<Omit<Sample, 'agentCpuUs' | 'agentMainCpuUs' | 'serverCpuUs'>> {
  const child = spawn(
    'nsenter',
    [
      `--net=${ns.path}`,
      'dnsperf',
      '-s',
      DNS,
      '-d',
      queryFile,
      '-l',
      String(seconds),
      '-c',
      '4',
      '-q',
      String(OUTSTANDING),
      '-t',
      '2',
      '-v',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const lat: number[] = [];
  let tail = '';
  let rest = '';
  child.stdout.on('data', (d: Buffer) => {
    const lines = (rest + d.toString()).split('\n');
    rest = lines.pop() ?? '';
    for (const l of lines) {
      if (l.startsWith('> ')) lat.push(Number(l.slice(l.lastIndexOf(' ') + 1)) * 1e6);
      else tail += `${l}\n`;
    }
  });
  return new Promise((resolve, reject) =>
    child.once('exit', (code) => {
      const qps = /Queries per second:\s+([\d.]+)/.exec(tail);
      const lost = /Queries lost:\s+(\d+)/.exec(tail);
      const completed = /Queries completed:\s+(\d+)/.exec(tail);
      if (code !== 0 || !qps) {
        reject(new Error(`dnsperf failed (${code}):\n${tail}`));
        return;
      }
      resolve({
        qps: Number(qps[1]),
        p50: percentile(lat, 0.5),
        p99: percentile(lat, 0.99),
        lost: Number(lost?.[1] ?? 0),
        completed: Number(completed?.[1] ?? 0),
      });
    }),
  );
}

const FIRST_CONNECTIONS = `
const dns = require('dns'), net = require('net');
const [server, n] = process.argv.slice(1);
const r = new dns.promises.Resolver({ timeout: 2000, tries: 1 });
r.setServers([server]);
const connect = (ip) => new Promise((res) => {
  const s = net.connect({ host: ip, port: 80 });
  const t = setTimeout(() => { s.destroy(); res('timeout'); }, 2000);
  s.on('connect', () => s.write('ping'));
  s.on('data', () => { clearTimeout(t); s.destroy(); res('ok'); });
  s.on('error', (e) => { clearTimeout(t); res('error ' + e.code); });
});
(async () => {
  const out = { ok: 0, failed: [] };
  for (let i = 0; i < Number(n); i++) {
    const name = 'n' + i + '.fresh.test';
    try { const [ip] = await r.resolve4(name); const c = await connect(ip); if (c === 'ok') out.ok++; else out.failed.push(name + ' ' + c); }
    catch (e) { out.failed.push(name + ' ' + e.code); }
  }
  process.stdout.write(JSON.stringify(out));
})();
`;

function firstConnections(ns: TestNetns): Promise<{ ok: number; failed: string[] }> {
  const env = { ...process.env, NODE_OPTIONS: '' };
  const child = spawn('nsenter', [`--net=${ns.path}`, process.execPath, '-e', FIRST_CONNECTIONS, DNS, String(FRESH)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env,
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve) => child.once('exit', () => resolve(JSON.parse(out || '{"ok":0,"failed":["no output"]}'))));
}

/** p50/p99 (upper bucket bounds) of a Prometheus histogram. */
function histogramQuantiles(text: string, name: string): { count: number; p50: number; p99: number } {
  const samples = parsePrometheusText(text).get(name)?.samples ?? [];
  const buckets = samples
    .filter((s) => s.name === `${name}_bucket`)
    .map((s) => ({ le: Number(s.labels.le === '+Inf' ? Infinity : s.labels.le), n: s.value }))
    .sort((a, b) => a.le - b.le);
  const count = buckets.at(-1)?.n ?? 0;
  const q = (p: number) => buckets.find((b) => b.n >= count * p)?.le ?? NaN;
  return { count, p50: q(0.5), p99: q(0.99) };
}

async function main(): Promise<void> {
  const load = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-dns-'));
  const wHost = `mbw${randomId(3)}`;
  const nss: TestNetns[] = [];
  const children: ReturnType<typeof spawn>[] = [];
  let agent: TestAgent | undefined;
  try {
    agent = await startAgent({ bundle: fs.existsSync(path.join(REPO, 'dist/bin/membrane-agent')) });
    const pc = new PolicyClient(agent.client);
    const pods: Record<string, TestNetns> = {};
    for (const name of ['direct', 'proxy']) {
      const ns = createNetns('mbb');
      nss.push(ns);
      await agent.client.createEndpoint({
        containerId: `bench-dns-${name}-${randomId()}`,
        netns: ns.path,
        ifName: 'eth0',
        labels: { bench: name },
      });
      pods[name] = ns;
    }
    const world = createNetns('mbw');
    nss.push(world);
    execFileSync('ip', ['link', 'add', wHost, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', world.path]);
    execFileSync('ip', ['link', 'set', wHost, 'up']);
    execFileSync('sysctl', ['-qw', `net.ipv4.conf.${wHost}.proxy_arp=1`, `net.ipv4.neigh.${wHost}.proxy_delay=0`]);
    execFileSync('ip', ['route', 'add', `${NET}.0/24`, 'dev', wHost]);
    await world.exec('ip', ['addr', 'add', `${DNS}/32`, 'dev', 'eth0']);
    for (let i = 0; i < FRESH; i++) await world.exec('ip', ['addr', 'add', `${freshIp(i)}/32`, 'dev', 'eth0']);
    await world.exec('ip', ['link', 'set', 'eth0', 'up']);
    await world.exec('ip', ['route', 'add', 'default', 'dev', 'eth0']);
    children.push(await startEchoServer(world, 80, '0.0.0.0'));
    const names: [string, string][] = [
      [`${NET}.10`, 'bench.test.internal'],
      ...Array.from({ length: FRESH }, (_, i): [string, string] => [freshIp(i), `n${i}.fresh.test`]),
    ];
    const dnsmasq = await startDnsmasq(world, tmp, DNS, { hosts: names, ttl: 300 });
    children.push(dnsmasq.child);
    await pc.import(policy);
    const queries = path.join(tmp, 'queries.txt');
    fs.writeFileSync(queries, 'bench.test.internal A\n');

    const samples: Record<'direct' | 'proxy', Sample[]> = { direct: [], proxy: [] };
    // Both paths warm (the proxy's JIT, the server's cache) before anything counts.
    if (WARMUP > 0) for (const v of ['direct', 'proxy'] as const) await dnsperf(pods[v], queries, WARMUP);
    for (let round = 0; round < ROUNDS; round++) {
      for (const v of round % 2 ? (['proxy', 'direct'] as const) : (['direct', 'proxy'] as const)) {
        samples[v].push(await measure(pods[v], queries, agent.pid(), dnsmasq.child.pid));
        const last = samples[v].at(-1)!;
        process.stderr.write(
          `round ${round + 1} ${v}: ${last.qps.toFixed(0)} q/s, CPU per query: agent ${last.agentCpuUs.toFixed(1)} µs (main thread ${last.agentMainCpuUs.toFixed(1)}), server ${last.serverCpuUs.toFixed(1)} µs\n`,
        );
      }
    }
    const first = await firstConnections(pods.proxy);
    const metricsAddr = (await agent.client.status()).metrics.address;
    const learn = histogramQuantiles(
      await fetch(`http://${metricsAddr}/metrics`).then((r) => r.text()),
      'membrane_fqdn_answer_to_datapath_seconds',
    );

    const row = (v: 'direct' | 'proxy') => {
      const s = samples[v];
      return [
        v,
        median(s.map((x) => x.qps)).toFixed(0),
        median(s.map((x) => x.p50)).toFixed(0),
        median(s.map((x) => x.p99)).toFixed(0),
        String(s.reduce((n, x) => n + x.lost, 0)),
        median(s.map((x) => x.agentCpuUs)).toFixed(1),
        median(s.map((x) => x.agentMainCpuUs)).toFixed(1),
        median(s.map((x) => x.serverCpuUs)).toFixed(1),
      ];
    };
    const ratio = median(samples.proxy.map((x) => x.qps)) / median(samples.direct.map((x) => x.qps));
    console.log(
      `\nDNS through Membrane's DNS proxy vs direct (dnsperf, ${OUTSTANDING} in flight, ${ROUNDS} rounds x ${SECONDS} s, load before: ${load})\n`,
    );
    console.log(
      markdownTable(
        ['variant', 'queries/s', 'p50 µs', 'p99 µs', 'lost', 'agent CPU µs/query', 'of which main thread', 'server CPU µs/query'],
        [row('direct'), row('proxy')],
      ),
    );
    console.log(`\nproxy / direct queries/s: ${ratio.toFixed(2)}x (goal >= 0.8x)`);
    const cache = ((await agent.client.status()) as { dns?: { cache?: { enabled: boolean; hits: number } } }).dns?.cache;
    console.log(
      `datapath answer cache (MEMBRANE_DNS_CACHE): ${cache?.enabled ? `on, ${cache.hits} queries answered by it` : 'off'}`,
    );
    console.log(
      `first connection right after a fresh answer: ${first.ok}/${FRESH} connected${first.failed.length ? `; failed: ${first.failed.join(', ')}` : ''} (goal: never dropped)`,
    );
    console.log(
      `answer -> ipcache (agent histogram, ${learn.count} answers with addresses): p50 <= ${(learn.p50 * 1e6).toFixed(0)} µs, p99 <= ${(learn.p99 * 1e6).toFixed(0)} µs`,
    );
    console.log(
      `load after: ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')} (a shared machine: numbers are noisy while others run suites)`,
    );
  } finally {
    killAll(children);
    try {
      execFileSync('ip', ['route', 'del', `${NET}.0/24`], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
    try {
      execFileSync('ip', ['link', 'del', wHost], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
    await agent?.cleanup();
    for (const ns of nss) ns.remove();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
