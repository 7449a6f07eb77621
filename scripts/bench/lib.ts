// Shared pieces of the benchmarks: command-line flags, medians, tables, the policy set of the
// many-pod benchmarks, peers run inside netns.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestNetns } from '../../integration/lib/netns.ts';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));

/** `--name VALUE` on the command line; undefined when the flag is absent. */
export function stringArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

/** `--name N` as a number, `dflt` when absent; anything but a number stops the benchmark naming the flag. */
export function numberArg(name: string, dflt: number): number {
  const v = stringArg(name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new Error(`--${name} takes a number, not ${JSON.stringify(v)}`);
  return n;
}

/** Whether `--name` (a switch without a value) is on the command line. */
export const flagArg = (name: string): boolean => process.argv.includes(`--${name}`);

/** `count` policies in a ring, as JSON documents: policy i (named `${prefix}-${i}`) selects app=s<i>
 *  and admits app=s<i+1> on `port`/TCP. Pods labelled app=s<k % count> are all selected, and share
 *  identities the way replicas do. */
export function ringPolicies(count: number, prefix: string, port: number): string {
  return Array.from({ length: count }, (_, i) =>
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: `${prefix}-${i}` },
      spec: {
        endpointSelector: { matchLabels: { app: `s${i}` } },
        ingress: [
          {
            fromEndpoints: [{ matchLabels: { app: `s${(i + 1) % count}` } }],
            toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }],
          },
        ],
      },
    }),
  ).join('\n---\n');
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const idx = (s.length - 1) * p;
  const lo = Math.floor(idx),
    hi = Math.ceil(idx);
  return s[lo] + (s[hi] - s[lo]) * (idx - lo);
}

export function markdownTable(headers: string[], rows: string[][]): string {
  return [
    `| ${headers.join(' | ')} |`,
    `|${headers.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function daemon(ns: TestNetns, cmd: string, args: string[]): ChildProcess {
  return spawn('nsenter', [`--net=${ns.path}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}

let crrBinary: string | undefined;
function crr(): string {
  if (!crrBinary) {
    crrBinary = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-')), 'crr');
    execFileSync('cc', ['-O2', '-o', crrBinary, path.join(BENCH_DIR, 'crr.c')]);
  }
  return crrBinary;
}

/** TCP throughput in Gbit/s (iperf3, receiver side). */
export async function throughput(
  client: TestNetns,
  server: TestNetns,
  ip: string,
  streams: number,
  seconds: number,
  pin?: { client: number; server: number },
  watch?: (serverPid: number) => Promise<void>,
): Promise<number> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  // pin: iperf3's client and server each on that CPU (taskset), e.g. both on one or one on each.
  const on = (cpu: number | undefined, argv: string[]) => (cpu === undefined ? argv : ['taskset', '-c', String(cpu), ...argv]);
  const [srvCmd, ...srvArgs] = on(pin?.server, ['iperf3', '-s', '-1', '-B', ip, '-p', String(port)]);
  const srv = daemon(server, srvCmd, srvArgs);
  try {
    await sleep(300);
    const [cliCmd, ...cliArgs] = on(pin?.client, [
      'iperf3',
      '-c',
      ip,
      '-p',
      String(port),
      '-t',
      String(seconds),
      '-P',
      String(streams),
      '-J',
    ]);
    // watch: runs beside the client (e.g. a scheduler trace), given the server's pid (nsenter execs it).
    const [out] = await Promise.all([
      client.exec(cliCmd, cliArgs, { timeoutMs: (seconds + 20) * 1000 }),
      watch && srv.pid ? watch(srv.pid) : undefined,
    ]);
    return JSON.parse(out).end.sum_received.bits_per_second / 1e9;
  } finally {
    srv.kill('SIGKILL');
  }
}

/** TCP request/response round-trip latency in µs (sockperf ping-pong, median). */
export async function rrLatency(client: TestNetns, server: TestNetns, ip: string, seconds: number): Promise<number> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const srv = daemon(server, 'sockperf', ['sr', '--tcp', '-i', ip, '-p', String(port)]);
  try {
    await sleep(300);
    const out = await client.exec('sockperf', ['pp', '--tcp', '-i', ip, '-p', String(port), '-t', String(seconds)], {
      timeoutMs: (seconds + 20) * 1000,
    });
    const m = /percentile 50\.000 =\s+([\d.]+)/.exec(out);
    if (!m) throw new Error(`sockperf printed no median:\n${out}`);
    return Number(m[1]) * 2; // sockperf reports half the round trip
  } finally {
    srv.kill('SIGKILL');
  }
}

/** New TCP connections per second (connect, 1 byte each way, close). cpu: run client and server on
 * that one CPU (taskset), so every per-packet cost lands on it. */
export async function connectionRate(
  client: TestNetns,
  server: TestNetns,
  ip: string,
  seconds: number,
  cpu?: number,
): Promise<number> {
  const pin = cpu === undefined ? undefined : { client: cpu, server: cpu };
  return (await connectionRateSlices(client, server, ip, seconds, pin)).rate;
}

/** One crr run: connections per second over the whole run, and the connections completed in each
 *  100 ms of it (crr.c). pin: the client's and the server's CPU (taskset). */
export async function connectionRateSlices(
  client: TestNetns,
  server: TestNetns,
  ip: string,
  seconds: number,
  pin?: { client: number; server: number },
): Promise<{ rate: number; errors: number; slices: number[] }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const bin = crr();
  const on = (cpu: number | undefined, argv: string[]) => (cpu === undefined ? argv : ['taskset', '-c', String(cpu), ...argv]);
  await client.exec('sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000']);
  const [srvCmd, ...srvArgs] = on(pin?.server, [bin, 'server', String(port)]);
  const srv = daemon(server, srvCmd, srvArgs);
  try {
    await sleep(300);
    const [cliCmd, ...cliArgs] = on(pin?.client, [bin, 'client', ip, String(port), String(seconds)]);
    const out = (await client.exec(cliCmd, cliArgs, { timeoutMs: (seconds + 20) * 1000 })).trim().split(' ');
    return { rate: Number(out[0]), errors: Number(out[1]), slices: (out[2] ?? '').split(',').filter(Boolean).map(Number) };
  } finally {
    srv.kill('SIGKILL');
  }
}

/** A crr pod pair: the client's netns, the server's, the server's address. */
export interface CrrPair {
  client: TestNetns;
  server: TestNetns;
  ip: string;
}

/** The connection rate of `cell` measured against a reference pair in the same window: `slices` short
 *  crr runs on each, alternated (cell, ref, ref, cell, cell, ref, ...), `seconds` in all on each side.
 *  Load from other processes on the machine that comes and goes over seconds then falls on both
 *  alike, so cell / ref moves with the cell's datapath rather than with when its turn came (an A/A
 *  run of two identical pairs: scripts/bench/crr-precision.ts). Returns both rates (connections over
 *  the time of their slices). */
export async function connectionRateAgainst(
  cell: CrrPair,
  ref: CrrPair,
  seconds: number,
  slices: number,
): Promise<{ cell: number; ref: number; cellSlices: number[]; refSlices: number[] }> {
  const bin = crr();
  const each = seconds / slices;
  const pairs = [cell, ref].map((p) => ({ ...p, port: 20000 + Math.floor(Math.random() * 20000), n: 0, per: [] as number[] }));
  for (const p of pairs)
    await p.client.exec('sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=1024 65000']);
  const servers = pairs.map((p) => daemon(p.server, bin, ['server', String(p.port)]));
  try {
    await sleep(300);
    for (let k = 0; k < slices; k++) {
      // ABBA: neither side is always the one right after the other's slice.
      for (const p of k % 2 ? [pairs[1], pairs[0]] : pairs) {
        const out = (await p.client.exec(bin, ['client', p.ip, String(p.port), String(each)], { timeoutMs: (each + 20) * 1000 }))
          .trim()
          .split(' ');
        const per = (out[2] ?? '').split(',').filter(Boolean).map(Number);
        p.n += per.reduce((a, b) => a + b, 0);
        p.per.push(...per);
      }
    }
    return { cell: pairs[0].n / seconds, ref: pairs[1].n / seconds, cellSlices: pairs[0].per, refSlices: pairs[1].per };
  } finally {
    for (const s of servers) s.kill('SIGKILL');
  }
}

/** CPU time (user + system, ms) a process has used so far (/proc/PID/stat, 100 clock ticks a second). */
export function processCpuMs(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) * 10;
}

/** CPU time of every thread of a process, in ns (the schedstat of every /proc/PID/task entry: exact, where
 *  /proc/PID/stat counts 10 ms ticks, as coarse as the ~50 ms an agent spends in a 2 s sample). */
export function threadsCpuNs(pid: number): number {
  let ns = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // the thread exited meanwhile
    }
  }
  return ns;
}

/** Waits until the processes are idle again: each under `busyPct` of a CPU over `windows` 1 s windows
 *  in a row (bounded by `timeoutMs`). A control plane still digesting a change (10,000 rules take an
 *  agent seconds of CPU after the import returns), or a just-started agent (its JIT and GC take 3-6 %
 *  of two CPUs for ~15 s, docs/performance-history.md, issue 17), competes with the measured datapath for the same CPUs,
 *  which is not what a steady-state measurement is about; a node's agent runs long before its pods'
 *  traffic. Returns how long it took (ms) and whether they got quiet (`false` only with
 *  `throwOnTimeout: false`, after `timeoutMs`). A process that is gone counts as quiet. */
export async function settled(
  pids: number[],
  { busyPct = 5, windows = 2, timeoutMs = 60_000, throwOnTimeout = true } = {},
): Promise<{ ms: number; quiet: boolean }> {
  const t0 = Date.now();
  const cpu = (pid: number) => {
    try {
      return processCpuMs(pid);
    } catch {
      return 0;
    }
  };
  let quiet = 0;
  while (quiet < windows) {
    if (Date.now() - t0 >= timeoutMs) {
      if (throwOnTimeout) throw new Error(`processes ${pids.join(', ')} still busy after ${timeoutMs / 1000} s`);
      return { ms: Date.now() - t0, quiet: false };
    }
    const a = pids.map(cpu);
    await sleep(1000);
    const busy = pids.some((pid, i) => cpu(pid) - a[i] >= busyPct * 10);
    quiet = busy ? 0 : quiet + 1;
  }
  return { ms: Date.now() - t0, quiet: true };
}

/** How long after an agent's last API request its idle give-backs (agent/idle-memory.ts) can still
 *  come: the deep one 5.5 s after it, the quick one 1 s after it but no sooner than 10 s after the
 *  previous give-back (and the deep one then at once), each up to ~600 ms of the agent's CPU with
 *  10,000 rules. `settled()` cannot see a timer still pending: a cell measured ~3 s after its pods'
 *  requests met the deep one inside its first metric. */
export const GIVE_BACK_WINDOW_MS = 12_000;
let lastAgentRequest = 0;
/** The bench made requests to an agent's API (an endpoint, a policy) just now. */
export function agentRequestsMade(): void {
  lastAgentRequest = Date.now();
}
/** Waits until the give-backs the bench's last agent requests set off are over. */
export async function pastGiveBacks(): Promise<void> {
  await sleep(Math.max(0, lastAgentRequest + GIVE_BACK_WINDOW_MS - Date.now()));
}
