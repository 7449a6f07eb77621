// How long a client may take for a request head at the L7 proxy (worker.ts closeSlowHeads), with real
// connections from a pod: the sweep's interval is SWEEP_MS here (MEMBRANE_L7_HEAD_SWEEP_MS; 30 s by
// default), so a client gets 1.5-3 s per head. A client trickling its head (slowloris) and one idle
// between requests are closed; one that keeps sending requests, or waits for a slow server's answer,
// is not. A client told FIN after a `Connection: close` answer (or a 403) that keeps sending a byte
// every 100 ms without closing is closed the same way (the proxy had read and dropped its bytes for
// ever); one that closes is unaffected. Not shorter: a busy client that a loaded machine leaves unscheduled for one sweep interval
// owes the same head at two sweeps and is closed, as it should be (with 500 ms, 1 of 3 runs beside two
// CPU burners: 5 answers, then closed at 1436 ms).
import t from 'tap';
import { castOf } from './lib/attack-pods.ts';
import { serveThroughL7 } from './lib/l7-workers.ts';
import { killAll } from './lib/tcp.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const SWEEP_MS = 1500;
/** How long the clients that must be closed wait for it (the trickle never finishes its head by then). */
const GIVE_UP_MS = 12_000;
/** The busy client's and the slow server's time: over two sweep intervals, so at least two sweeps
 *  look at the connection while it is busy or waits. */
const BUSY_MS = 5000;
const SLOW_MS = 4000;
const cast = castOf(['web', 'client'], {
  env: { MEMBRANE_L7_PROXY_WORKERS: '1', MEMBRANE_L7_HEAD_SWEEP_MS: String(SWEEP_MS) },
});
const servers: ChildProcess[] = [];

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7-head-timeout}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/.*"}]}}]
`;

/** GET /slow/<ms>: answers after ms; anything else at once. Keeps idle connections for a minute. */
const SERVER = `
const http = require('node:http');
const srv = http.createServer((req, res) => {
  req.resume();
  const m = /^\\/slow\\/(\\d+)$/.exec(req.url);
  setTimeout(() => res.end('ok:' + req.url), m ? Number(m[1]) : 0);
});
srv.keepAliveTimeout = 60000;
srv.listen(80, '0.0.0.0', () => console.log('listening'));
`;

/** One connection to ip:80 doing `mode`; prints {statuses, how, ms}: the answers' status codes, how the
 *  connection ended ('end', 'error:CODE' or 'open' when the client stopped first) and when (ms from
 *  the connection).
 *  trickle: a head a byte every 150 ms (never finished within GIVE_UP_MS).
 *  busy: a keep-alive GET every 150 ms for BUSY_MS.
 *  idle: one keep-alive GET, then nothing (up to GIVE_UP_MS).
 *  slow: one keep-alive GET /slow/SLOW_MS.
 *  linger-GET, linger-POST: one `Connection: close` request (a POST is denied: 403), a byte after it;
 *  once the proxy's FIN is in, a byte every 100 ms without closing (up to GIVE_UP_MS); ms is from
 *  that FIN.
 *  close: one `Connection: close` GET; closes once the proxy's FIN is in. */
const CLIENT = `
const net = require('node:net');
const [mode, ip] = process.argv.slice(1);
const statuses = [];
let buf = '';
const start = Date.now();
const linger = mode.startsWith('linger-');
const c = net.connect({ port: 80, host: ip, allowHalfOpen: linger });
c.setNoDelay(true);
let finAt = 0;
const done = (how) => { console.log(JSON.stringify({ statuses, how, ms: Date.now() - (finAt || start) })); process.exit(0); };
c.on('data', (d) => {
  buf += d;
  let m;
  while ((m = /^HTTP\\/1\\.1 (\\d{3})[^]*?\\r\\n\\r\\n([^]*)$/.exec(buf))) {
    const len = Number((/content-length: *(\\d+)/i.exec(buf) || [0, 0])[1]);
    if (m[2].length < len) break;
    statuses.push(Number(m[1]));
    buf = m[2].slice(len);
  }
});
c.on('end', () => {
  if (!linger) return done('end');
  finAt = Date.now();
  setInterval(() => c.write('x'), 100);
  setTimeout(() => done('open'), ${GIVE_UP_MS});
});
c.on('error', (e) => done('error:' + e.code));
c.on('close', () => done('close'));
const get = (p) => c.write('GET ' + p + ' HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n');
c.on('connect', () => {
  if (mode === 'trickle') {
    const head = 'GET /t HTTP/1.1\\r\\nHost: web\\r\\nX-Slow: ' + 'a'.repeat(100);
    let i = 0;
    const tick = setInterval(() => { if (i < head.length) c.write(head[i++]); }, 150);
    setTimeout(() => { clearInterval(tick); done('open'); }, ${GIVE_UP_MS});
  } else if (mode === 'busy') {
    const tick = setInterval(() => get('/busy'), 150);
    setTimeout(() => { clearInterval(tick); setTimeout(() => done('open'), 300); }, ${BUSY_MS});
  } else if (mode === 'idle') {
    get('/idle');
    setTimeout(() => done('open'), ${GIVE_UP_MS});
  } else if (linger || mode === 'close') {
    const method = linger ? mode.slice('linger-'.length) : 'GET';
    const body = method === 'POST' ? 'Content-Length: 0\\r\\n' : '';
    c.write(method + ' /bye HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n' + body + '\\r\\n' + (linger ? 'x' : ''));
  } else if (mode === 'slow') {
    get('/slow/${SLOW_MS}');
    const wait = setInterval(() => { if (statuses.length) { clearInterval(wait); done('open'); } }, 20);
  }
});
`;

async function client(mode: string): Promise<{ statuses: number[]; how: string; ms: number }> {
  const child = cast.pods.client.ns.spawn(process.execPath, ['-e', CLIENT, mode, cast.pods.web.ip4]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
  });
  await new Promise((resolve) => child.on('close', resolve));
  return JSON.parse(out.trim().split('\n').pop()!);
}

t.before(async () => {
  await serveThroughL7(cast, SERVER, POLICY, servers);
});
t.teardown(() => killAll(servers));

t.test('a client trickling its request head is closed once it has taken two sweeps', async (t) => {
  const r = await client('trickle');
  t.equal(r.how, 'end', `the proxy closed it: ${JSON.stringify(r)}`);
  t.same(r.statuses, [], 'nothing was answered');
  t.ok(r.ms < GIVE_UP_MS, `before the client gave up (${r.ms} ms)`);
});

t.test('a client idle after its answer is closed too (keep-alive ends)', async (t) => {
  const r = await client('idle');
  t.same(r.statuses, [200], 'its request was answered');
  t.equal(r.how, 'end', `then the proxy closed the idle connection: ${JSON.stringify(r)}`);
});

t.test('a client that keeps sending requests is never closed', async (t) => {
  const r = await client('busy');
  t.equal(r.how, 'open', `the connection was still open after ${BUSY_MS / 1000} s: ${JSON.stringify(r)}`);
  t.ok(r.statuses.length >= 10 && r.statuses.every((s) => s === 200), `its requests were answered: ${r.statuses.length}`);
});

t.test('a client waiting for a slow server is not closed (the server owes the answer)', async (t) => {
  const r = await client('slow');
  t.same([r.statuses, r.how], [[200], 'open'], `answered after ${SLOW_MS / 1000} s on the same connection: ${JSON.stringify(r)}`);
});

for (const [method, status] of [
  ['GET', 200],
  ['POST', 403],
] as const) {
  t.test(`a client that keeps sending after its last answer (${status}) and the proxy's FIN is closed`, async (t) => {
    const r = await client(`linger-${method}`);
    t.same(r.statuses, [status], `its request was answered: ${JSON.stringify(r)}`);
    t.not(r.how, 'open', `the proxy closed it within ${GIVE_UP_MS / 1000} s of its FIN: ${JSON.stringify(r)}`);
  });
}

t.test('a client that closes after its last answer gets all of it and a plain end', async (t) => {
  const r = await client('close');
  t.same([r.statuses, r.how], [[200], 'end'], JSON.stringify(r));
});
