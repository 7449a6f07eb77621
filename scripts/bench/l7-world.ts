// bench:l7's world: the built agent, a client pod (wrk) and a server pod (nginx serving a small
// static response on 80 and 8080), one policy with HTTP rules on 80 (none on 8080), and the peer,
// nginx (Debian) as a reverse proxy on the node in front of the same server (upstream keep-alive,
// access log off, one worker per CPU as Debian configures it). Everything it starts it also removes.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomId, startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { ownDir } from '../../integration/lib/cleanup.ts';
import { metricsText } from '../../integration/lib/metrics.ts';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { CpuGroups } from './l7-cgroups.ts';
import { childrenOf } from './l7-wrk.ts';
import { sleep } from './lib.ts';

export type Variant = 'direct' | 'l7' | 'nginx';

export interface L7World {
  client: TestNetns;
  /** The server pod's address. */
  ip: string;
  /** direct: the server's port 8080 (no HTTP rules); l7: its port 80 (HTTP rules); nginx: the peer. */
  urls: Record<Variant, string>;
  /** The processes that do the proxying for a variant: Membrane's workers and its agent (it turns
   *  their records into flows and metrics), or nginx's workers; none for direct. */
  proxyPids(v: Variant): Promise<number[]>;
  agentPid(): number | undefined;
  /** The agent's Prometheus page (e.g. the L7 latency histogram its workers' records fill). */
  metrics(): Promise<string>;
  /** Worker counts: Membrane's L7 proxy, the nginx peer. */
  workers: { l7: number; nginx: number };
  /** Each service's cpu cgroup (l7-cgroups.ts), with BENCH_CGROUPS=1. */
  groups?: CpuGroups;
  /** Imports the policy with or without the HTTP rules on port 80 and waits until it is in force. */
  setL7(on: boolean): Promise<void>;
  close(): Promise<void>;
}

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

/** `session`: nginx in a session of its own (setsid), hence a scheduling group of its own where the
 *  kernel groups by session (kernel.sched_autogroup_enabled, outside a cpu cgroup), as the L7 proxy's
 *  workers are (the agent starts them detached) and as nginx is with its default `daemon on`. Its
 *  process group (master and workers) is killed at close and at exit: a ^C no longer reaches it. */
function startNginx(ns: TestNetns | null, conf: string, session = false): { child: ChildProcess; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbb-nginx-'));
  ownDir(dir); // removed at exit even when close() never runs or fails half-way
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf.replaceAll('DIR', dir));
  const args = ['-c', path.join(dir, 'nginx.conf'), '-p', dir, '-e', path.join(dir, 'error.log')];
  const child = ns
    ? spawn('nsenter', [`--net=${ns.path}`, 'nginx', ...args], { stdio: 'ignore' })
    : spawn('nginx', args, { stdio: 'ignore', detached: session });
  if (session && child.pid) {
    const group = -child.pid;
    const kill = () => {
      try {
        process.kill(group, 'SIGKILL');
      } catch {
        /* gone */
      }
    };
    process.once('exit', kill);
    child.once('exit', () => {
      kill(); // its workers outlive a killed master
      process.off('exit', kill);
    });
  }
  return { child, dir };
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

export function checkTools(): void {
  for (const bin of ['wrk', 'nginx']) {
    try {
      execFileSync('which', [bin], { stdio: 'ignore' });
    } catch {
      throw new Error(`${bin} is missing: run scripts/setup (it installs wrk and nginx)`);
    }
  }
}

/** The world with the L7 policy in force; `clientTwReuse` is the client pod's net.ipv4.tcp_tw_reuse. */
export async function startL7World(clientTwReuse: string): Promise<L7World> {
  const nginxPort = 18000 + Math.floor(Math.random() * 2000); // nginx on the node: random, so runs never clash
  // The built agent and proxy (npm run bench:l7 builds first): what a node runs.
  // BENCH_L7_WORKERS: the proxy's worker count (default: the agent's, one per two CPUs, 1-2); nginx's
  // is its own (below).
  const workers = process.env.BENCH_L7_WORKERS;
  // BENCH_AGENT_SESSION=1: the agent in a session (scheduling group) of its own, as its workers and the
  // nginx peer are; by default it shares this script's with wrk and the server, so its work on the L7
  // records (flows, metrics) is taken from the client's and server's share of a busy CPU. On a node
  // the agent runs as a service, apart from the pods, with its workers in its cgroup.
  const agent: TestAgent = await startAgent({
    bundle: true,
    // BENCH_AGENT_BIN: another build's membrane-agent bundle (its dist/ copied whole: the workers and
    // the datapath are found next to it), for an A/B of the agent (l7-agent-ab.ts).
    agentBin: process.env.BENCH_AGENT_BIN,
    // BENCH_BPF_OBJECT: another datapath object for the agent (e.g. an older commit's endpoint.o, to
    // tell a datapath change from the window in a pair of runs with nginx as the yardstick).
    extraArgs: [
      ...(workers ? ['--l7-proxy-workers', workers] : []),
      ...(process.env.BENCH_BPF_OBJECT ? ['--bpf-object', process.env.BENCH_BPF_OBJECT] : []),
    ],
    // BENCH_AGENT_NODE_FLAGS: Node flags for the agent (e.g. --trace-gc; its log is kept with BENCH_WORKER_LOGS).
    nodeArgs: process.env.BENCH_AGENT_NODE_FLAGS?.split(' ').filter(Boolean),
    ownSession: process.env.BENCH_AGENT_SESSION === '1',
  });
  const pc = new PolicyClient(agent.client);
  const netns = createNetns('mbb'),
    server = createNetns('mbb');
  // BENCH_CGROUPS=1: each service in a cpu cgroup of its own (l7-cgroups.ts says why; l7-cgroup-ab.ts
  // compares the two setups in one run). By default none: every process in its session's group.
  const groups = process.env.BENCH_CGROUPS === '1' ? new CpuGroups() : undefined;
  // wrk runs in the client's group.
  const client: TestNetns = groups
    ? {
        ...netns,
        exec: (cmd, args, opts) => {
          const [c, a] = cmd === 'wrk' ? groups.wrap('client', cmd, args) : [cmd, args];
          return netns.exec(c, a, opts);
        },
      }
    : netns;
  const procs: ChildProcess[] = [];
  const dirs: string[] = [];
  const close = async () => {
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
    await pc.delete('all').catch(() => undefined);
    // BENCH_WORKER_LOGS=DIR keeps the workers' logs (e.g. --trace-gc through MEMBRANE_L7_WORKER_NODE_FLAGS).
    const keep = process.env.BENCH_WORKER_LOGS;
    if (keep) {
      fs.mkdirSync(keep, { recursive: true });
      const l7 = path.join(agent.stateDir, 'l7');
      for (const f of fs.readdirSync(l7).filter((x) => x.endsWith('.log'))) fs.copyFileSync(path.join(l7, f), path.join(keep, f));
      fs.copyFileSync(agent.logFile, path.join(keep, 'agent.log'));
    }
    await agent.cleanup();
    groups?.remove();
    netns.remove();
    server.remove();
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  };
  try {
    await client.exec('sysctl', ['-qw', `net.ipv4.tcp_tw_reuse=${clientTwReuse}`]);
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
    // The peer: nginx on the node in front of the same server, with the worker count of Debian's
    // nginx.conf (`worker_processes auto`: one per CPU), as a user would run it; each proxy at its own
    // default. (With one worker on 2 CPUs nginx lets the client close first often enough to run its
    // ports out of TIME_WAIT in one-request-per-connection runs: docs/performance-history.md, L7 HTTP.) BENCH_NGINX_WORKERS
    // sets it apart (e.g. as many as BENCH_L7_WORKERS, to compare worker counts). nginx runs in a session
    // (so a scheduling group) of its own, as the L7 workers do: in the client's and server's session it
    // had the whole request path (wrk, nginx, server) in one group, while each L7 request crossed
    // groups twice, each crossing waiting for the other group's turn on a busy CPU (bench:l7:sched;
    // BENCH_NGINX_SESSION=0 puts it back in this process's session to see the difference).
    const nginxWorkers = Number(process.env.BENCH_NGINX_WORKERS) || os.availableParallelism();
    const p = startNginx(
      null,
      nginxConf(
        'DIR',
        `  upstream server { server ${ip}:80; keepalive 512; }`,
        [`${gateway}:${nginxPort}`],
        nginxWorkers,
        '    location / { proxy_pass http://server; proxy_http_version 1.1; proxy_set_header Connection ""; }',
      ),
      process.env.BENCH_NGINX_SESSION !== '0',
    );
    procs.push(p.child);
    dirs.push(p.dir);
    // One policy for the whole matrix (HTTP rules on 80, none on 8080): no policy change, and none of
    // the agent's work that follows one, lands inside a measurement. nginx reaches the server from the
    // node (host identity), which is never diverted.
    const urls: Record<Variant, string> = {
      direct: `http://${ip}:8080/`,
      l7: `http://${ip}/`,
      nginx: `http://${gateway}:${nginxPort}/`,
    };
    await pc.import(policy(false));
    await waitHttp(client, urls.direct);
    await waitHttp(client, urls.nginx);
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
    // BENCH_AGENT_NICE=N: the agent's threads at nice N (not its workers), to see what the agent's bursts
    // (a batch of records every 50 ms, ~0.5-1.5 ms of CPU each in a loaded profile) do to the proxy's tail
    // on a machine whose CPUs are all busy. Set once the workers run (a worker the agent starts later,
    // e.g. in bench:l7:ab, inherits it).
    const nice = process.env.BENCH_AGENT_NICE;
    if (nice && agent.pid())
      for (const tid of fs.readdirSync(`/proc/${agent.pid()}/task`))
        execFileSync('renice', ['-n', nice, '-p', tid], { stdio: 'ignore' });
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
    // The agent with every process it starts (its L7 workers, also those it restarts: a child starts in
    // its parent's group), nginx's master and workers, the server's.
    if (groups) {
      const tree = (pid?: number) => (pid ? [pid, ...childrenOf(pid)] : []);
      groups.add('membrane', () => tree(agent.pid()));
      groups.add('nginx', () => tree(p.child.pid));
      groups.add('server', () => tree(s.child.pid));
      groups.setup(true);
    }
    const l7Workers = ((await agent.client.status()).l7 as { workers: unknown[] }).workers.length;
    return {
      client,
      ip,
      urls,
      proxyPids,
      agentPid: () => agent.pid(),
      metrics: () => metricsText(agent.client),
      workers: { l7: l7Workers, nginx: nginxWorkers },
      groups,
      setL7,
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
