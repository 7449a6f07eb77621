// A pod-side holder of TCP connections to its resolver, driven line by line from the test: it opens
// connections, sends queries on the ones named, and reports each connection's state, so a test can
// poll what the pod sees (which connections the DNS proxy closed, which still answer) instead of
// sleeping and looking.
import { spawn } from 'node:child_process';
import { REPO } from './agent.ts';
import { until } from './dns-fqdn-file.ts';

const SCRIPT = `
const p = require('dns-packet'), net = require('net'), readline = require('readline');
const [server] = process.argv.slice(1);
const conns = [];
let nextId = 1;
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const open = (n) => {
  for (let i = 0; i < n; i++) {
    const c = { s: net.connect(53, server), connected: false, closed: false, answers: 0, buf: Buffer.alloc(0) };
    conns.push(c);
    c.s.on('connect', () => { c.connected = true; });
    c.s.on('close', () => { c.closed = true; });
    c.s.on('error', () => {});
    c.s.on('data', (d) => {
      c.buf = Buffer.concat([c.buf, d]);
      while (c.buf.length >= 2 && c.buf.length >= 2 + c.buf.readUInt16BE(0)) {
        const r = p.decode(c.buf.subarray(2, 2 + c.buf.readUInt16BE(0)));
        c.buf = c.buf.subarray(2 + c.buf.readUInt16BE(0));
        if ((r.flags & 15) === 0 && r.answers.length) c.answers++;
      }
    });
  }
};
const query = (i, name) => {
  const c = conns[i];
  if (c && !c.closed) c.s.write(p.streamEncode({ type: 'query', id: nextId++ & 0xffff, flags: p.RECURSION_DESIRED, questions: [{ type: 'A', name }] }));
};
const timers = new Map();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, a, b, c] = line.split(' ');
  if (cmd === 'open') open(Number(a));
  else if (cmd === 'query') query(Number(a), b);
  else if (cmd === 'every') timers.set(Number(a), setInterval(() => query(Number(a), c), Number(b)));
  else if (cmd === 'stop') clearInterval(timers.get(Number(a)));
  else if (cmd === 'state') say({ conns: conns.map((c) => ({ connected: c.connected, closed: c.closed, answers: c.answers })) });
});
process.stdin.on('end', () => process.exit(0));
say({ ready: true });
`;

export interface ConnState {
  connected: boolean;
  closed: boolean;
  /** Answers with an address received on it so far. */
  answers: number;
}

export interface DnsTcpDriver {
  /** Opens n more connections (their indexes follow the ones opened before). */
  open(n: number): void;
  /** Sends one A query for `name` on connection i. */
  query(i: number, name: string): void;
  /** Sends one every `ms` on connection i until stop(i). */
  every(i: number, ms: number, name: string): void;
  stop(i: number): void;
  /** The pod's view of each connection, in the order opened. */
  state(): Promise<ConnState[]>;
  /** Closes every connection (the process exits). */
  close(): void;
}

export async function dnsTcpDriver(ns: { path: string }, server: string): Promise<DnsTcpDriver> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn('nsenter', [`--net=${ns.path}`, process.execPath, '-e', SCRIPT, server], {
    cwd: REPO,
    env,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  let partial = '';
  child.stdout.on('data', (d: Buffer) => {
    partial += d.toString();
    const parts = partial.split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
  });
  const next = (what: string) => until(what, async () => lines.shift());
  const send = (line: string) => child.stdin.write(`${line}\n`);
  await next('the pod-side DNS TCP driver to start');
  return {
    open: (n) => send(`open ${n}`),
    query: (i, name) => send(`query ${i} ${name}`),
    every: (i, ms, name) => send(`every ${i} ${ms} ${name}`),
    stop: (i) => send(`stop ${i}`),
    state: async () => {
      send('state');
      return (JSON.parse(await next('the driver state')) as { conns: ConnState[] }).conns;
    },
    close: () => {
      child.stdin.end();
      setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    },
  };
}
