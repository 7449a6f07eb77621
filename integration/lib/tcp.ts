// TCP peers that run inside a test netns (a node child under nsenter), for "does a connection work"
// and "does a flow survive" checks.
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestNetns } from './netns.ts';

const SERVER = `
const net = require('net');
const srv = net.createServer((s) => { s.on('data', (d) => s.write(d)); s.on('error', () => {}); });
srv.listen(Number(process.argv[1]), process.argv[2], () => process.stdout.write('listening\\n'));
`;

const STREAM = `
// Sends a line every 20 ms and prints a count of echoed bytes every 100 ms: a live flow. SIGTERM
// resets the connection and exits: killed with data still unacknowledged (a flow a policy cut), the
// kernel would keep the orphaned socket retransmitting it for minutes, with backoff, and a later
// test on the same endpoints would count those packets among its own drops.
const net = require('net');
const s = net.connect(Number(process.argv[2]), process.argv[1]);
process.on('SIGTERM', () => { s.resetAndDestroy(); process.exit(0); });
let echoed = 0;
s.on('data', (d) => { echoed += d.length; });
s.on('error', (e) => { process.stdout.write('error ' + e.message + '\\n'); process.exit(1); });
s.on('connect', () => {
  setInterval(() => s.write('x'.repeat(100) + '\\n'), 20);
  setInterval(() => process.stdout.write('echoed ' + echoed + '\\n'), 100);
});
`;

// 3 s for the handshake, then (connected: past the policy) 10 s from the start for the echo, which
// an echo server a loaded machine leaves unscheduled can take; each verdict waits one turn
// (setImmediate) for what already arrived, as lib/probe.ts's.
const REQUEST = `
const net = require('net');
const s = net.connect(Number(process.argv[2]), process.argv[1]);
const timedOut = () => { process.stdout.write('timeout'); process.exit(2); };
let timer = setTimeout(() => setImmediate(() => {
  if (s.connecting) timedOut();
  else timer = setTimeout(() => setImmediate(timedOut), 7000);
}), 3000);
s.on('connect', () => s.write('ping'));
s.on('data', (d) => { process.stdout.write(d.toString()); clearTimeout(timer); s.end(); });
s.on('error', (e) => { process.stdout.write('error ' + e.code); process.exit(1); });
`;

/** `node FLAGS -e SCRIPT ARGS` in the netns (no CA bundle, no NODE_OPTIONS: each start stays cheap);
 *  stdout and stderr piped, stdin too with `stdin`. */
export function nodeIn(
  ns: TestNetns,
  script: string,
  args: string[],
  o: { stdin?: boolean; flags?: string[] } = {},
): ChildProcess {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  delete env.NODE_EXTRA_CA_CERTS;
  return spawn('nsenter', [`--net=${ns.path}`, process.execPath, ...(o.flags ?? []), '-e', script, ...args], {
    stdio: [o.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    env,
  });
}

/** Resolves once a server child prints `listening`; rejects when it exits first or after `ms` (then
 *  kills it: nobody holds it to stop it, and a live child keeps the test file from ever ending). */
export function untilListening(child: ChildProcess, what: string, ms: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${what} did not start`));
    }, ms);
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('listening')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited ${code}`));
    });
  });
}

export async function startEchoServer(ns: TestNetns, port: number, host = '::'): Promise<ChildProcess> {
  const child = nodeIn(ns, SERVER, [String(port), host]);
  await untilListening(child, 'echo server', 60_000); // a node start under nsenter took over 10 s at load 12-20
  return child;
}

/** One request/response over a new connection; resolves with the echoed text or an error string. */
export function tcpRequest(ns: TestNetns, ip: string, port: number): Promise<string> {
  const child = nodeIn(ns, REQUEST, [ip, String(port)]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve) => child.once('exit', () => resolve(out)));
}

export interface LiveFlow {
  echoed(): number;
  failed(): string | null;
  stop(): void;
}

export function startFlow(ns: TestNetns, ip: string, port: number): LiveFlow {
  const child = nodeIn(ns, STREAM, [ip, String(port)]);
  let echoed = 0;
  let failed: string | null = null;
  child.stdout!.on('data', (d: Buffer) => {
    for (const line of d.toString().split('\n')) {
      const m = /^echoed (\d+)/.exec(line);
      if (m) echoed = Number(m[1]);
      if (line.startsWith('error')) failed = line;
    }
  });
  child.once('exit', (code) => {
    if (code && !failed) failed = `flow exited ${code}`;
  });
  return {
    echoed: () => echoed,
    failed: () => failed,
    stop: () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM'); // a reset, not an orphan (STREAM)
      const hard = setTimeout(() => child.kill('SIGKILL'), 5000);
      child.once('exit', () => clearTimeout(hard));
    },
  };
}

export function killAll(children: (ChildProcess | undefined)[]): void {
  for (const c of children) if (c && c.exitCode === null) c.kill('SIGKILL');
}
