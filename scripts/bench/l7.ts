// npm run bench:l7 (builds, then node --import tsx scripts/bench/l7.ts) — not a test. HTTP between two pods with
// wrk (client pod) against nginx serving a small static response (server pod), in one interleaved
// run, at several connection counts, keep-alive and one request per connection:
//   direct  L3/L4 policy only: the same server's port 8080, which has no HTTP rules
//   l7      Membrane's L7 policy on port 80 (every request through the proxy, checked against
//           an HTTP rule, reported as L7 flows)
//   nginx   nginx (Debian) as a reverse proxy on the node, in front of the same server: the C proxy
//           a user would otherwise put there (upstream keep-alive, access log off)
// plus the same-run A/B of a port without L7 rules (8080) with and without the L7 policy on port 80
// (redirect_peer traffic never meets the proxy: the cost should be 0).
// After BENCH_WARMUP seconds of each variant in each mode (not recorded), medians over BENCH_ROUNDS
// rounds of BENCH_SECONDS each; BENCH_CONNS picks the connection counts. Each row says whether the
// issue's goals are met (Membrane L7 >= 0.8x nginx's req/s, p99 <= 1.25x nginx's) and what the
// proxying costs in CPU per request (Membrane's workers plus its agent, the agent's part apart, nginx's
// workers): on a loaded machine the ratios move with the load, the CPU cost much less.
// The client pod runs with net.ipv4.tcp_tw_reuse=BENCH_CLIENT_TW_REUSE (default 0, the kernel's own
// default, the same for every column): the proxy, like the server and nginx, closes a one-request
// connection first, so no column leaves a TIME_WAIT in the client. 1 shows what a client that keeps
// its TIME_WAITs would meet with a proxy that lets it close first (README: bench:l7).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { randomId, startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { markdownTable, median, sleep } from './lib.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 5);
const CONNS = (process.env.BENCH_CONNS ?? '1,10,50,100').split(',').map(Number);
// All three by default; a subset (BENCH_VARIANTS=l7) is for looking at one of them, not for the table.
const VARIANTS = (process.env.BENCH_VARIANTS ?? 'direct,l7,nginx').split(',');
// Both by default; BENCH_MODES=close runs one request per connection only (e.g. to profile that path).
const MODES = (process.env.BENCH_MODES ?? 'keep-alive,close').split(',') as Mode[];
const CLIENT_TW_REUSE = process.env.BENCH_CLIENT_TW_REUSE ?? '0';
const NGINX_PORT = 18000 + Math.floor(Math.random() * 2000); // nginx on the node: random, so runs never clash
delete process.env.NODE_EXTRA_CA_CERTS;

// The issue's goals, against nginx measured in the same run.
const GOAL_RPS = 0.8;
const GOAL_P99 = 1.25;

type Variant = 'direct' | 'l7' | 'nginx';
type Mode = 'keep-alive' | 'close';
interface Sample {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  requests: number;
  cpuUsPerReq?: number;
  agentUsPerReq?: number;
}

const TICK_US = 1e6 / 100; // /proc/<pid>/stat times are in USER_HZ (100 on Linux)
/** CPU time (user + system, µs) the processes have used so far; a process that is gone counts 0. */
function cpuUs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15 (utime, stime), counted after "pid (comm) "
    } catch {
      /* gone */
    }
  }
  return ticks * TICK_US;
}
const childrenOf = (pid: number): number[] => {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
};

const policy = (l7: boolean) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-web}
spec:
  endpointSelector: {matchLabels: {bench: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {bench: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]${
      l7
        ? `
      rules: {http: [{method: "GET", path: "/.*"}]}`
        : ''
    }
    - ports: [{port: "8080", protocol: TCP}]
  - fromEntities: [host]
`;

function nginxConf(dir: string, server: string, listen: string[], workers: number, body: string): string {
  return `daemon off;
worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
${server}
  server {
${listen.map((l) => `    listen ${l} backlog=8192 reuseport;`).join('\n')}
${body}
  }
}
`;
}

function startNginx(ns: TestNetns | null, conf: string): { child: ChildProcess; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbb-nginx-'));
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf.replaceAll('DIR', dir));
  const args = ['-c', path.join(dir, 'nginx.conf'), '-p', dir, '-e', path.join(dir, 'error.log')];
  const child = ns
    ? spawn('nsenter', [`--net=${ns.path}`, 'nginx', ...args], { stdio: 'ignore' })
    : spawn('nginx', args, { stdio: 'ignore' });
  return { child, dir };
}

function parseWrk(out: string): Sample {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : NaN;
  };
  const dur = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) return NaN;
    const v = Number(m[1]);
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v; // ms
  };
  const errors =
    [...out.matchAll(/(connect|read|write|timeout) (\d+)/g)].reduce((n, m) => n + Number(m[2]), 0) +
    (num(/Non-2xx or 3xx responses: (\d+)/) || 0);
  return {
    requests: num(/(\d+) requests in /),
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    p50: dur(/ 50%\s+([\d.]+)(us|ms|s)/),
    p99: dur(/ 99%\s+([\d.]+)(us|ms|s)/),
    errors,
  };
}

/** wrk's numbers, and the CPU time `proxy` (the processes between client and server) spent per
 *  request, with the part of it that is the agent's (`agent`, one of them) apart. */
async function wrk(
  client: TestNetns,
  url: string,
  conns: number,
  mode: Mode,
  proxy: number[] = [],
  agent?: number,
  seconds = SECONDS,
): Promise<Sample> {
  const args = [
    '-t',
    String(Math.min(2, conns)),
    '-c',
    String(conns),
    '-d',
    `${seconds}s`,
    '--latency',
    ...(mode === 'close' ? ['-H', 'Connection: close'] : []),
    url,
  ];
  const cpu0 = cpuUs(proxy);
  const agent0 = agent ? cpuUs([agent]) : 0;
  const out = await client.exec('wrk', args, { timeoutMs: (seconds + 30) * 1000 });
  const sample = parseWrk(out);
  if (proxy.length && sample.requests > 0) sample.cpuUsPerReq = (cpuUs(proxy) - cpu0) / sample.requests;
  if (agent && sample.requests > 0) sample.agentUsPerReq = (cpuUs([agent]) - agent0) / sample.requests;
  return sample;
}

async function waitHttp(client: TestNetns, url: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      await client.exec('curl', ['-sf', '--max-time', '2', '-o', '/dev/null', url]);
      return;
    } catch {
      await sleep(200);
    }
  }
  throw new Error(`${url} does not answer`);
}

async function main(): Promise<void> {
  for (const bin of ['wrk', 'nginx']) {
    try {
      execFileSync('which', [bin], { stdio: 'ignore' });
    } catch {
      throw new Error(`${bin} is missing: run scripts/setup (it installs wrk and nginx)`);
    }
  }
  const load = os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  // The built agent and proxy (npm run bench:l7 builds first): what a node runs.
  const agent: TestAgent = await startAgent({ bundle: true });
  const pc = new PolicyClient(agent.client);
  const client = createNetns('mbb'),
    server = createNetns('mbb');
  const procs: ChildProcess[] = [];
  const dirs: string[] = [];
  try {
    await client.exec('sysctl', ['-qw', `net.ipv4.tcp_tw_reuse=${CLIENT_TW_REUSE}`]);
    await agent.client.createEndpoint({
      containerId: `bench-l7-c-${randomId()}`,
      netns: client.path,
      ifName: 'eth0',
      labels: { bench: 'client' },
    });
    const srv = await agent.client.createEndpoint({
      containerId: `bench-l7-s-${randomId()}`,
      netns: server.path,
      ifName: 'eth0',
      labels: { bench: 'server' },
    });
    const ip = srv.ips[0].address.split('/')[0];
    const gateway = srv.ips[0].gateway;
    // The server: nginx, one worker, a small static answer on 80 and 8080.
    const s = startNginx(
      server,
      nginxConf('DIR', '', ['0.0.0.0:80', '0.0.0.0:8080'], 1, '    location / { return 200 "hello from the server\\n"; }'),
    );
    procs.push(s.child);
    dirs.push(s.dir);
    // The peer: nginx on the node in front of the same server (as many workers as the L7 proxy).
    const workers = ((await agent.client.status()).l7 as { workers: unknown[] } | undefined)?.workers.length ?? 2;
    const p = startNginx(
      null,
      nginxConf(
        'DIR',
        `  upstream server { server ${ip}:80; keepalive 512; }`,
        [`${gateway}:${NGINX_PORT}`],
        workers,
        '    location / { proxy_pass http://server; proxy_http_version 1.1; proxy_set_header Connection ""; }',
      ),
    );
    procs.push(p.child);
    dirs.push(p.dir);
    // One policy for the whole matrix (HTTP rules on 80, none on 8080): no policy change, and none of
    // the agent's work that follows one, lands inside a measurement. nginx reaches the server from the
    // node (host identity), which is never diverted.
    const urls: Record<Variant, string> = {
      direct: `http://${ip}:8080/`,
      l7: `http://${ip}/`,
      nginx: `http://${gateway}:${NGINX_PORT}/`,
    };
    await pc.import(policy(false));
    await waitHttp(client, urls.direct);
    await waitHttp(client, urls.nginx);

    // Who does the proxying: Membrane's workers and the agent (it turns their records into flows and
    // metrics), or nginx's workers.
    const proxyPids = async (v: Variant): Promise<number[]> =>
      v === 'l7'
        ? [
            ...((await agent.client.status()).l7 as { workers: { pid?: number }[] }).workers
              .map((w) => w.pid ?? 0)
              .filter(Boolean),
            agent.pid()!,
          ]
        : v === 'nginx'
          ? childrenOf(p.child.pid!)
          : [];
    const samples = new Map<string, Sample[]>();
    const rec = (key: string, v: Sample) => {
      samples.set(key, [...(samples.get(key) ?? []), v]);
      process.stderr.write(`${key}: ${JSON.stringify(v)}\n`);
    };
    const setL7 = async (on: boolean) => {
      await pc.import(policy(on));
      if (on) {
        for (let i = 0; i < 300; i++) {
          const st = (await agent.client.status()).l7 as { workers: { connected: boolean }[] };
          if (st.workers.every((w) => w.connected)) break;
          await sleep(100);
        }
        await waitHttp(client, urls.l7);
      }
      await sleep(2000); // the agent's work after a policy change (maps, snapshot, revalidation) is done before wrk starts
    };
    await setL7(true);
    // Warm-up, not recorded: the proxy workers start with the first L7 policy, and their first seconds
    // (JIT) cost several times what they cost afterwards, in each mode (one request per connection runs
    // code keep-alive never does: accepting, connecting, closing); nginx gets the same.
    for (const v of ['direct', 'l7', 'nginx'].filter((x) => VARIANTS.includes(x)) as Variant[]) {
      for (const mode of MODES) await wrk(client, urls[v], 10, mode, [], undefined, WARMUP);
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        for (const conns of CONNS) {
          for (const v of (round % 2 ? ['nginx', 'l7', 'direct'] : ['direct', 'l7', 'nginx']).filter((x) =>
            VARIANTS.includes(x),
          ) as Variant[]) {
            rec(
              `${v}|${mode}|${conns}`,
              await wrk(client, urls[v], conns, mode, await proxyPids(v), v === 'l7' ? agent.pid() : undefined),
            );
          }
        }
      }
      // Non-L7 port, A/B: without and with the L7 policy on port 80.
      for (const on of round % 2 ? [true, false] : [false, true]) {
        await setL7(on);
        rec(`8080|${on ? 'l7-on' : 'l7-off'}`, await wrk(client, `http://${ip}:8080/`, 50, 'keep-alive'));
      }
      await setL7(true);
    }
    await pc.delete('all');

    const med = (key: string, f: keyof Sample) => median((samples.get(key) ?? []).map((x) => x[f] ?? NaN));
    const rows: string[][] = [];
    for (const mode of MODES) {
      for (const conns of CONNS) {
        const k = (v: Variant) => `${v}|${mode}|${conns}`;
        const cell = (v: Variant) =>
          `${med(k(v), 'rps').toFixed(0)} / ${med(k(v), 'p50').toFixed(2)} / ${med(k(v), 'p99').toFixed(2)}`;
        const rps = med(k('l7'), 'rps') / med(k('nginx'), 'rps');
        const p99 = med(k('l7'), 'p99') / med(k('nginx'), 'p99');
        const goal =
          [rps >= GOAL_RPS ? '' : `req/s < ${GOAL_RPS}×`, p99 <= GOAL_P99 ? '' : `p99 > ${GOAL_P99}×`]
            .filter(Boolean)
            .join(', ') || 'met';
        const cpu = (v: Variant) => med(k(v), 'cpuUsPerReq').toFixed(0);
        const agentCpu = med(k('l7'), 'agentUsPerReq').toFixed(0);
        rows.push([
          mode,
          String(conns),
          cell('direct'),
          cell('l7'),
          cell('nginx'),
          `${rps.toFixed(2)}×`,
          `${p99.toFixed(2)}×`,
          goal,
          `${cpu('l7')} (agent ${agentCpu}) / ${cpu('nginx')}`,
        ]);
      }
    }
    const errors = [...samples].filter(([, v]) => v.some((x) => x.errors)).map(([k]) => k);
    console.log(
      `\nL7 HTTP benchmark: ${WARMUP} s warm-up per variant, then ${ROUNDS} interleaved rounds × ${SECONDS} s, medians; wrk in the client pod, nginx (1 worker) serving in the server pod; client pod net.ipv4.tcp_tw_reuse=${CLIENT_TW_REUSE}; ${os.cpus().length} CPUs; load average at start ${load}\n`,
    );
    console.log(
      markdownTable(
        [
          'mode',
          'conns',
          'direct req/s / p50 / p99 ms',
          'Membrane L7 req/s / p50 / p99 ms',
          'nginx proxy req/s / p50 / p99 ms',
          'L7/nginx req/s',
          'L7/nginx p99',
          `goal (≥ ${GOAL_RPS}× req/s, ≤ ${GOAL_P99}× p99)`,
          'proxy CPU µs/request L7 workers + agent (agent) / nginx',
        ],
        rows,
      ),
    );
    const off = med('8080|l7-off', 'rps'),
      on = med('8080|l7-on', 'rps');
    console.log(
      `\nPort 8080 (no L7 rules), 50 connections keep-alive: ${off.toFixed(0)} req/s without the L7 policy on port 80, ${on.toFixed(0)} req/s with it (${(on / off).toFixed(2)}×).`,
    );
    if (errors.length) console.log(`\nwrk reported errors (socket errors or non-2xx) in: ${errors.join(', ')}`);
    console.log(
      `Load average at the end: ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')} (numbers taken while other work runs are noisy).`,
    );
  } finally {
    // nginx's workers outlive a killed master: note them, ask politely, then make sure.
    const workers = procs.flatMap((c) => (c.pid ? childrenOf(c.pid) : []));
    for (const c of procs) c.kill('SIGTERM');
    for (let i = 0; i < 50 && procs.some((c) => c.exitCode === null && c.signalCode === null); i++) await sleep(100);
    for (const c of procs) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const pid of workers) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await agent.cleanup();
    client.remove();
    server.remove();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
