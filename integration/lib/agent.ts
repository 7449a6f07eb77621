// Starts a real membrane-agent for a test, with its own state dir, socket, pin dir, host device and
// pool, and removes every one of them afterwards (even when the test failed).
import { spawn, type ChildProcess, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { AgentClient } from '../../shared/src/api/client.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import { ownChild, ownDir, ownLink, type Release, signalAndWait } from './cleanup.ts';
import { claimSubnet } from './subnets.ts';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const AGENT_MAIN = path.join(REPO, 'shared/src/agent/main.ts');
const AGENT_BUNDLE = path.join(REPO, 'dist/bin/membrane-agent');
const START_TIMEOUT_MS = 120_000;

export interface StartAgentOptions {
  /** --pool values; default: one random 10.x.y.0/24 (plus an IPv6 /112 when ipv6 is true). */
  pools?: string[];
  ipv6?: boolean;
  extraArgs?: string[];
  /** Reuse the dirs of an earlier agent (restart tests). */
  reuse?: TestAgent;
  env?: NodeJS.ProcessEnv;
  /** Run dist/bin/membrane-agent (npm run build) instead of the sources. */
  bundle?: boolean;
  /** Run this membrane-agent bundle instead (e.g. another build's, for a benchmark's A/B). */
  agentBin?: string;
  /** Node's own flags (e.g. --cpu-prof, which NODE_OPTIONS does not take). */
  nodeArgs?: string[];
  /** Run the agent inside this netns (`nsenter --net`), as a node of its own: its host device,
   *  forwarding and routes are that netns', never the machine's. */
  netnsPath?: string;
  /** A state dir of the caller's (e.g. a small tmpfs); left in place at cleanup. */
  stateDir?: string;
  /** Where the agent's log goes (default: agent.log in the state dir). */
  logFile?: string;
  /** Start the agent in a session of its own (setsid), so a scheduling group of its own where the
   *  kernel groups by session (kernel.sched_autogroup_enabled), as a service manager would start it
   *  apart from the workloads; by default it shares the caller's (a benchmark's knob). */
  ownSession?: boolean;
  /** Socket path (default: agent.sock in the state dir). */
  socket?: string;
}

export interface TestAgent {
  id: string;
  socket: string;
  observerSocket: string;
  stateDir: string;
  bpffsDir: string;
  hostDevice: string;
  pools: string[];
  logFile: string;
  /** The netns the agent runs in (undefined: the test process's). */
  netnsPath?: string;
  client: AgentClient;
  pid(): number | undefined;
  /** SIGTERM and wait. */
  stop(): Promise<void>;
  /** SIGKILL and wait: the datapath must keep forwarding. */
  kill9(): Promise<void>;
  /** Start again on the same dirs. */
  /** Stops the agent (SIGTERM) and starts it again on the same dirs; `env`: variables changed for it
   *  from now on. */
  restart(env?: NodeJS.ProcessEnv): Promise<void>;
  /** Delete every endpoint and extra network through the API, stop, and remove dirs, pins, host device. */
  cleanup(): Promise<void>;
}

/** Where a test's agent keeps everything, every name its own (several agents run side by side: no
 *  fixed ports or sockets), and debug logs: the flags every harness starts an agent with. */
export function agentPlaces(p: { stateDir: string; socket: string; bpffsDir: string; hostDevice: string }): string[] {
  return [
    '--state-dir',
    p.stateDir,
    '--socket',
    p.socket,
    '--bpffs-dir',
    p.bpffsDir,
    '--host-device',
    p.hostDevice,
    '--log-level',
    'debug',
    '--metrics-address',
    '127.0.0.1:0',
    '--observer-socket',
    path.join(p.stateDir, 'observer.sock'),
  ];
}

/** After a restart: until the agent verified the container side of every restored endpoint (they
 *  read `verifying` until then); throws after timeoutMs. */
export async function restoreVerified(client: AgentClient, timeoutMs = 30_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; ; await sleep(50)) {
    if (!(await client.status()).verifyingEndpoints) return;
    if (Date.now() > deadline) throw new Error(`restored endpoints still not verified after ${timeoutMs} ms`);
  }
}

/** An endpoint's IPv4 address, without its prefix length (the endpoint has one). */
export const ip4 = (e: Endpoint): string => e.ips.find((x) => x.family === 4)!.address.split('/')[0];

export function randomId(bytes = 4): string {
  return crypto.randomBytes(bytes).toString('hex');
}

/** A random /24 under 10.64.0.0/10 (clear of the agent's default 10.200.0.0/16), claimed for this
 *  process so that a test file running at the same time never gets the same one. */
export function randomSubnet24(): string {
  const prefix = claimSubnet(() => {
    const b = crypto.randomBytes(2);
    return `10.${64 + (b[0] % 128)}.${b[1]}`;
  });
  return `${prefix}.0/24`;
}

export function randomSubnet6(): string {
  const b = crypto.randomBytes(4).toString('hex');
  return `fd00:${b.slice(0, 4)}:${b.slice(4, 8)}::/112`;
}

export async function startAgent(opts: StartAgentOptions = {}): Promise<TestAgent> {
  const id = opts.reuse?.id ?? randomId();
  const ownStateDir = !opts.reuse && !opts.stateDir;
  const stateDir = opts.reuse?.stateDir ?? opts.stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), `mbr-agent-${id}-`));
  const pools = opts.reuse?.pools ?? opts.pools ?? [opts.ipv6 ? `${randomSubnet24()},${randomSubnet6()}` : randomSubnet24()];
  const socket = opts.reuse?.socket ?? opts.socket ?? path.join(stateDir, 'agent.sock');
  const bpffsDir = opts.reuse?.bpffsDir ?? `/sys/fs/bpf/mbt-${id}`;
  const hostDevice = opts.reuse?.hostDevice ?? `mbh${id}`;
  const logFile = opts.reuse?.logFile ?? opts.logFile ?? path.join(stateDir, 'agent.log');
  const netnsPath = opts.reuse?.netnsPath ?? opts.netnsPath;
  const inNetns = (cmd: string[]) =>
    (netnsPath ? ['nsenter', [`--net=${netnsPath}`, ...cmd]] : [cmd[0], cmd.slice(1)]) as [string, string[]];
  const args = [
    ...(opts.nodeArgs ?? []),
    // Benchmarks run the built agent (what a node runs: no TypeScript loader in the hot paths).
    ...(opts.agentBin ? [opts.agentBin] : opts.bundle ? [AGENT_BUNDLE] : ['--import', 'tsx', AGENT_MAIN]),
    ...agentPlaces({ stateDir, socket, bpffsDir, hostDevice }),
    ...pools.flatMap((p) => ['--pool', p]),
    // A containerd on the machine must not be taken for the runtime of a test's pods (a test that
    // drives a private containerd passes its socket).
    ...(opts.extraArgs?.includes('--cri-socket') ? [] : ['--cri-socket', path.join(stateDir, 'no-cri.sock')]),
    ...(opts.extraArgs ?? []),
  ];
  // Removed at exit even when cleanup() never runs (tap's timeout, a crash, a SIGKILL: lib/cleanup.ts); cleanup()
  // releases them after removing them itself. A caller's state dir stays theirs.
  const owned: Release[] = [ownDir(bpffsDir), ownLink(hostDevice, netnsPath)];
  if (ownStateDir) owned.push(ownDir(stateDir));
  const env = { ...process.env, ...opts.env };
  delete env.NODE_EXTRA_CA_CERTS;
  let child: ChildProcess | undefined;
  const client = new AgentClient({ socketPath: socket, timeoutMs: 30_000 });

  const launch = async () => {
    const log = fs.openSync(logFile, 'a');
    // nsenter execs the agent: the PID we hold is the agent's own.
    const [cmd, argv] = inNetns([process.execPath, ...args]);
    child = spawn(cmd, argv, { cwd: REPO, env, stdio: ['ignore', log, log], detached: opts.ownSession === true });
    fs.closeSync(log);
    ownChild(child);
    const c = child;
    const exited = new Promise<number | null>((resolve) => c.once('exit', (code) => resolve(code)));
    // A shared 2-vCPU machine under other suites starts an agent slowly (as cluster.ts allows).
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      const done = await Promise.race([exited.then((code) => ({ code })), sleep(50).then(() => null)]);
      if (done) throw new Error(`agent exited with ${done.code} during start:\n${tail(logFile)}`);
      try {
        await client.healthz();
        return;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline)
        throw new Error(`agent did not become healthy within ${START_TIMEOUT_MS / 1000} s:\n${tail(logFile)}`);
    }
  };

  const waitExit = (signal: NodeJS.Signals) => signalAndWait(child, signal);

  const agent: TestAgent = {
    id,
    socket,
    observerSocket: path.join(stateDir, 'observer.sock'),
    stateDir,
    bpffsDir,
    hostDevice,
    pools,
    logFile,
    client,
    netnsPath,
    pid: () => child?.pid,
    stop: () => waitExit('SIGTERM'),
    kill9: () => waitExit('SIGKILL'),
    restart: async (more?: NodeJS.ProcessEnv) => {
      await waitExit('SIGTERM');
      if (more) Object.assign(env, more);
      await launch();
    },
    cleanup: async () => {
      try {
        if (child && child.exitCode === null && child.signalCode === null) {
          for (const ep of await client.listEndpoints()) await client.deleteEndpoint(ep.containerId, ep.ifName);
          for (const n of await client.listNetworks())
            if (n.name !== 'default') await client.deleteNetwork(n.name).catch(() => undefined);
        }
      } finally {
        await waitExit('SIGTERM');
        try {
          execFileSync(...inNetns(['ip', 'link', 'del', hostDevice]), { stdio: 'ignore' });
        } catch {
          /* already gone */
        }
        fs.rmSync(bpffsDir, { recursive: true, force: true });
        if (ownStateDir) fs.rmSync(stateDir, { recursive: true, force: true });
        for (const release of owned) release();
      }
      // A leak fails the test that made it, not a later reader of `ip link` (the machine is shared).
      const left = [
        ...(linkIn(inNetns, hostDevice) ? [`host device ${hostDevice}`] : []),
        ...(fs.existsSync(bpffsDir) ? [`pin dir ${bpffsDir}`] : []),
        ...(ownStateDir && fs.existsSync(stateDir) ? [`state dir ${stateDir}`] : []),
      ];
      if (left.length) throw new Error(`agent cleanup left ${left.join(', ')}`);
    },
  };
  try {
    await launch();
  } catch (e) {
    await agent.cleanup().catch(() => undefined);
    throw e;
  }
  return agent;
}

function linkIn(inNetns: (cmd: string[]) => [string, string[]], name: string): boolean {
  try {
    execFileSync(...inNetns(['ip', 'link', 'show', 'dev', name]), { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** An agent for one test, cleaned up when the test ends. */
export async function agentFor(t: Test, opts?: StartAgentOptions): Promise<TestAgent> {
  const agent = await startAgent(opts);
  t.teardown(() => agent.cleanup());
  return agent;
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-30).join('\n');
  } catch {
    return '(no log)';
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
