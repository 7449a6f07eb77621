// The peers of l7-epoll-attack.test.ts, as Node scripts run inside a pod's netns: a server that answers
// small, large and reset-midway responses, and clients that misbehave (reset, half-close, never read,
// trickle their headers, hold connections open). Each prints one JSON line per result.
import { type ChildProcess, spawn } from 'node:child_process';
import type { TestNetns } from './netns.ts';

/** GET /big/<n>: n bytes (printing "sent <bytes>" each time the socket is full); GET /rst/<x>: 64 KiB
 *  of a 1 MiB answer at once, then a reset (while a request body may still come); anything else: "ok:<url>". Idle connections close after 500 ms. */
export const SERVER = `
const http = require('node:http');
const chunk = Buffer.alloc(65536, 120);
const srv = http.createServer((req, res) => {
  req.resume();
  if (req.url.startsWith('/rst/')) {
    res.writeHead(200, { 'content-length': 1048576 });
    res.write(chunk, () => req.socket.resetAndDestroy()); // before the request's body is in, if any
    return;
  }
  req.on('end', () => {
    const u = req.url;
    if (u.startsWith('/big/')) {
      const n = Number(u.slice(5));
      res.writeHead(200, { 'content-length': n });
      let sent = 0;
      const more = () => {
        while (sent < n) {
          const c = chunk.subarray(0, Math.min(chunk.length, n - sent));
          sent += c.length;
          if (!res.write(c)) { console.log('sent ' + sent); res.once('drain', more); return; }
        }
        res.end();
      };
      more();
    } else res.end('ok:' + u);
  });
});
srv.keepAliveTimeout = 500;
srv.listen(80, '0.0.0.0', () => console.log('listening'));
`;

/** Modes (argv: mode, ip, ...):
 *  get <path> [half]: one request (half: then shut the write side), prints {status, bytes, complete, how}.
 *  storm <n>: n connections, 10 at a time, each one of six abuses (see below), prints the tallies.
 *  hold <n> [req]: n connections (req: each sends a keep-alive GET /hold and waits for its answer),
 *    prints {held, statuses} once all are up (and answered); closes them all when stdin ends.
 *  noread <path>: sends the request and never reads; prints {sent: true}; closes when stdin ends.
 *  slowloris <n>: trickles one request's headers a byte at a time; meanwhile n requests on other
 *    connections; the last header byte only once those are answered; prints what each got.
 *  idle <n>: n connections at once that send nothing; prints {up} once each has connected or failed,
 *    then {closed, how} each time the peer ends one (how: tally of 'end' / 'error:CODE'); the line
 *    "probe" on stdin: a keep-alive GET /probe on each connection still open, then {probe: tally of
 *    statuses and how the others ended}; closes them all when stdin ends. */
export const CLIENT = `
const net = require('node:net');
const [mode, ip, arg, flag] = process.argv.slice(1);
const out = (o) => console.log(JSON.stringify(o));
const req = (p, close = true) => 'GET ' + p + ' HTTP/1.1\\r\\nHost: web\\r\\n' + (close ? 'Connection: close\\r\\n' : '') + '\\r\\n';
const parse = (buf) => {
  const s = buf.toString('latin1');
  const head = s.indexOf('\\r\\n\\r\\n');
  const len = /content-length: *(\\d+)/i.exec(s);
  return { status: Number(s.slice(9, 12)) || 0, bytes: head < 0 ? 0 : buf.length - head - 4, length: len ? Number(len[1]) : -1 };
};
/** One connection: resolves with how it ended ('end', 'error:CODE' or 'hung') and what came. */
function conn(onConnect, onData) {
  return new Promise((resolve) => {
    const c = net.connect({ host: ip, port: 80, allowHalfOpen: true });
    let buf = Buffer.alloc(0);
    let how = 'close';
    const timer = setTimeout(() => { how = 'hung'; c.destroy(); }, 30000);
    c.on('connect', () => onConnect(c));
    c.on('data', (d) => { buf = Buffer.concat([buf, d]); onData?.(c, buf); });
    c.on('end', () => { if (how === 'close') how = 'end'; c.end(); });
    c.on('error', (e) => { if (how === 'close') how = 'error:' + e.code; });
    c.on('close', () => { clearTimeout(timer); resolve({ how, ...parse(buf) }); });
  });
}
async function get(p, half) {
  const r = await conn((c) => { c.write(req(p)); if (half) c.end(); });
  return { ...r, complete: r.length >= 0 && r.bytes === r.length };
}
const abuses = [
  // 0: half a request, then a reset
  () => conn((c) => { c.write('GET /public/half HTTP/1.1\\r\\nHo'); setTimeout(() => c.resetAndDestroy(), 20); }),
  // 1: a reset once the answer (4 MiB) started coming
  () => conn((c) => c.write(req('/big/4194304')), (c, b) => { if (b.length > 100000) c.resetAndDestroy(); }),
  // 2: the request, then the write side shut: the whole answer still comes
  () => get('/half-close', true),
  // 3: the server resets midway through its answer
  () => conn((c) => c.write(req('/rst/x'))),
  // 4: a reset before sending anything
  () => conn((c) => c.resetAndDestroy()),
  // 5: the server answers and resets while the request's body (4 MiB) is still coming
  () => conn((c) => {
    c.write('GET /rst/body HTTP/1.1\\r\\nHost: web\\r\\nContent-Length: 4194304\\r\\n\\r\\n');
    let left = 4194304;
    const more = () => { while (left > 0 && !c.destroyed) { left -= 65536; if (!c.write(Buffer.alloc(65536, 122))) return c.once('drain', more); } };
    more();
  }),
];
async function storm(n) {
  const tally = {};
  let next = 0;
  const one = async () => {
    for (let i; (i = next++) < n; ) {
      const r = await abuses[i % abuses.length]();
      const key = (i % abuses.length) + ':' + (i % abuses.length === 2 ? (r.status === 200 && r.complete ? 'answered' : 'broken ' + r.how + ' ' + r.status) : i % abuses.length === 3 ? (r.how === 'hung' ? 'hung' : r.bytes < 1048576 ? 'cut' : 'whole') : r.how === 'hung' ? 'hung' : 'closed');
      tally[key] = (tally[key] ?? 0) + 1;
    }
  };
  await Promise.all(Array.from({ length: 10 }, one));
  out(tally);
}
async function hold(n, withRequest) {
  const socks = [];
  const statuses = {};
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve) => {
    const c = net.connect({ host: ip, port: 80 });
    socks.push(c);
    let buf = '';
    c.on('error', (e) => { statuses['error:' + e.code] = (statuses['error:' + e.code] ?? 0) + 1; resolve(); });
    c.on('connect', () => { if (!withRequest) resolve(); else c.write(req('/hold', false)); });
    c.on('data', (d) => {
      buf += d;
      if (buf.includes('\\r\\n\\r\\n')) { const s = buf.slice(9, 12); statuses[s] = (statuses[s] ?? 0) + 1; buf = ''; resolve(); }
    });
  })));
  out({ held: socks.filter((c) => !c.destroyed).length, statuses });
  process.stdin.on('end', () => { for (const c of socks) c.destroy(); out({ released: true }); });
  process.stdin.resume();
}
async function noread(p) {
  const c = net.connect({ host: ip, port: 80 }, () => { c.write(req(p)); c.pause(); out({ sent: true }); });
  c.on('error', () => undefined);
  process.stdin.on('end', () => { c.destroy(); out({ released: true }); });
  process.stdin.resume();
}
async function slowloris(n) {
  const text = req('/slow');
  let others = false;
  let answeredBeforeOthers = false;
  const slow = conn((c) => {
    let i = 0;
    const tick = () => {
      if (i === text.length - 1 && !others) return setTimeout(tick, 200);
      c.write(text[i++]);
      if (i < text.length) setTimeout(tick, 200);
    };
    tick();
  }, () => { if (!others) answeredBeforeOthers = true; });
  const got = [];
  for (let i = 0; i < n; i++) got.push((await get('/fast/' + i)).status);
  others = true;
  const s = await slow;
  out({ others: got, answeredBeforeOthers, slow: s.status, slowHow: s.how });
}
async function idle(n) {
  const socks = [];
  const how = {};
  let closed = 0;
  let probing = false;
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve) => {
    const c = net.connect({ host: ip, port: 80 });
    socks.push(c);
    c.on('connect', resolve);
    c.on('error', (e) => { c.how ??= 'error:' + e.code; });
    c.on('end', () => { c.how ??= 'end'; });
    c.on('close', () => {
      resolve();
      if (probing) return;
      closed++;
      how[c.how ?? 'close'] = (how[c.how ?? 'close'] ?? 0) + 1;
      out({ closed, how });
    });
  })));
  out({ up: n - closed });
  const probe = () => {
    probing = true;
    const tally = {};
    const count = (k) => { tally[k] = (tally[k] ?? 0) + 1; };
    const open = socks.filter((c) => !c.destroyed);
    Promise.all(open.map((c) => new Promise((resolve) => {
      let buf = '';
      const done = (k) => { if (resolve) { count(k); resolve(); resolve = undefined; } };
      c.on('data', (d) => { buf += d; if (buf.includes('\\r\\n\\r\\n')) done(buf.slice(9, 12)); });
      c.on('close', () => done(c.how ?? 'close'));
      c.write(req('/probe', false));
    }))).then(() => out({ probe: tally }));
  };
  let input = '';
  process.stdin.on('data', (d) => { input += d; if (input.includes('probe\\n')) { input = ''; probe(); } });
  process.stdin.on('end', () => { for (const c of socks) c.destroy(); out({ released: true }); });
}
const run = { get: () => get(arg, flag === 'half').then(out), storm: () => storm(Number(arg)), hold: () => hold(Number(arg), flag === 'req'), noread: () => noread(arg), idle: () => idle(Number(arg)), slowloris: () => slowloris(Number(arg)) };
run[mode]();
`;

/** Runs the client in ns; resolves with its JSON lines once it exits. */
export function runClient(ns: TestNetns, args: string[]): Promise<Record<string, unknown>[]> {
  const child = ns.spawn(process.execPath, ['-e', CLIENT, ...args]);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d;
    });
    child.stderr!.on('data', (d: Buffer) => {
      err += d;
    });
    child.on('close', (code) =>
      code === 0 ? resolve(lines(out)) : reject(new Error(`client ${args.join(' ')} exited ${code}: ${err}`)),
    );
  });
}

/** A client kept running (hold, noread, idle): its first JSON line, release() to end it, say() to
 *  write a line to its stdin, and until() for the first of its lines (so far or to come) that `fits`,
 *  rejecting with the lines so far once the client exited or `ms` passed. */
export async function startClient(
  ns: TestNetns,
  args: string[],
): Promise<{
  first: Record<string, unknown>;
  release: () => Promise<void>;
  say: (line: string) => void;
  until: (what: string, fits: (l: Record<string, unknown>) => boolean, ms?: number) => Promise<Record<string, unknown>>;
  child: ChildProcess;
}> {
  const child = spawn('nsenter', [`--net=${ns.path}`, process.execPath, '-e', CLIENT, ...args], { stdio: 'pipe' });
  let out = '';
  let exited = false;
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
    for (const w of waiters) w();
  });
  const closed = new Promise<void>((resolve) =>
    child.on('close', () => {
      exited = true;
      for (const w of waiters) w();
      resolve();
    }),
  );
  const until = (what: string, fits: (l: Record<string, unknown>) => boolean, ms = 30_000) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const check = () => {
        const hit = lines(out).find(fits);
        if (hit || exited) {
          waiters.delete(check);
          clearTimeout(timer);
          if (hit) resolve(hit);
          else reject(new Error(`client ${args.join(' ')} exited before ${what}: ${out.trim()}`));
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`client ${args.join(' ')}: no ${what} in ${ms} ms: ${out.trim()}`));
      }, ms);
      waiters.add(check);
      check();
    });
  const first = await until('its first line', () => true, 120_000);
  const release = () => {
    child.stdin!.end();
    return closed;
  };
  const say = (line: string) => {
    child.stdin!.write(`${line}\n`);
  };
  return { first, release, say, until, child };
}

function lines(s: string): Record<string, unknown>[] {
  return s
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
