// A client reading a large last answer slowly through the L7 proxy, with the head sweep (worker.ts
// closeSlowHeads) at SWEEP_MS. Once the proxy has handed the whole answer to the kernel and queued its
// FIN, the connection owes only the client's close (connection.ts CLIENT_CLOSE_OWED), and the sweep
// closes it at two sweeps while megabytes of the answer may still be in the socket's send queue: the
// close() leaves them to the kernel, which sends them and then the FIN. So a reader that takes many
// sweeps for a `Connection: close` GET of SIZE bytes must still get every byte (length and SHA-256)
// and a plain end, no reset: one reading a little every tenth of a sweep interval (an answer with a
// length, and a close-delimited one), and one that reads nothing for over two sweep intervals at a
// time. And what the sweep is for: a client that got everything and never closes is closed (its next
// byte after that gets a reset). A close() that reset (SO_LINGER 0) fails every case: 6.1-6.7 of
// 8 MiB came. Real pods, the agent's worker; the I/O layer is the environment's
// (MEMBRANE_L7_WORKER_IO=libuv for libuv's handles, as l7-epoll-attack.test.ts).
import t from 'tap';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { castOf } from './lib/attack-pods.ts';
import { serveThroughL7 } from './lib/l7-workers.ts';
import { killAll } from './lib/tcp.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const SWEEP_MS = 2000;
/** The answer: more than the proxy socket's send queue and the client's receive buffer hold together,
 *  so the proxy is still writing it at first and the kernel holds MiBs of it once the proxy is done. */
const SIZE = 8 * 1024 * 1024;
/** Each client reads the first FAST bytes as fast as they come (the window and the proxy's send queue
 *  grow as for any download), then BURST bytes every PAUSE_MS (steady: a tenth of a sweep interval;
 *  stalled: over two). */
const READS = {
  steady: { FAST: 1 << 20, BURST: 64 << 10, PAUSE_MS: 200 },
  stalled: { FAST: 1 << 20, BURST: 1 << 20, PAUSE_MS: 4500 },
  hold: { FAST: SIZE, BURST: SIZE, PAUSE_MS: 0 },
};
/** How long a client waits for its end; nothing here needs a tenth of it on an idle machine. */
const GIVE_UP_MS = 240_000;
/** How long the client that never closes waits to be closed (two to three sweeps, on an idle machine). */
const HOLD_GIVE_UP_MS = 60_000;
const cast = castOf(['web', 'client'], {
  env: { MEMBRANE_L7_PROXY_WORKERS: '1', MEMBRANE_L7_HEAD_SWEEP_MS: String(SWEEP_MS) },
});
const servers: ChildProcess[] = [];

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7-slow-reader}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/.*"}]}}]
`;

/** The answer's bytes: xorshift32 from a fixed seed (a byte lost, doubled or moved changes the hash). */
const BODY = `
function body(n) {
  const b = Buffer.allocUnsafe(n);
  let x = 2463534242;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 255;
  }
  return b;
}
`;

/** GET /len/<n>: n bytes with a content-length, the connection kept; GET /close/<n>: n bytes ended by
 *  the server's close. One request per connection is all these clients send. */
const SERVER = `${BODY}
const net = require('node:net');
const cache = new Map();
net.createServer((s) => {
  s.on('error', () => undefined);
  let head = '';
  s.on('data', (d) => {
    if (head === null) return;
    head += d.toString('latin1');
    if (!head.includes('\\r\\n\\r\\n')) return;
    const m = /^GET \\/(len|close)\\/(\\d+) /.exec(head);
    head = null;
    const n = Number(m[2]);
    if (!cache.has(n)) cache.set(n, body(n));
    s.write(m[1] === 'len' ? 'HTTP/1.1 200 OK\\r\\ncontent-length: ' + n + '\\r\\n\\r\\n' : 'HTTP/1.1 200 OK\\r\\nconnection: close\\r\\n\\r\\n');
    s.write(cache.get(n), () => { if (m[1] === 'close') s.end(); });
  });
}).listen(80, '0.0.0.0', () => console.log('listening'));
`;

/** One `Connection: close` GET of /<kind>/<size> from the client pod, reading as READS[mode] says.
 *  steady, stalled: at the proxy's FIN, ends its side. hold: never ends its side; from the proxy's FIN on, a byte every 200 ms until its connection
 *  fails. Prints {status, bytes, sha256, how, reset, ms}: the body's length and hash, how the
 *  connection ended first ('end': the proxy's FIN; 'error:CODE'), whether a reset came at all (libuv
 *  takes a reset right after data for an end: SO_ERROR says), ms from the connection (hold: from the
 *  FIN). */
const CLIENT = `
const net = require('node:net');
const crypto = require('node:crypto');
const koffi = require(process.argv[6]);
const getsockopt = koffi.load('libc.so.6').func('int getsockopt(int, int, int, void *, void *)');
const [kind, size, ip, mode, reads] = process.argv.slice(1);
const { FAST, BURST, PAUSE_MS } = JSON.parse(reads);
const hold = mode === 'hold';
const c = net.connect({ port: 80, host: ip, allowHalfOpen: true });
const hash = crypto.createHash('sha256');
const start = Date.now();
let head = Buffer.alloc(0), status = 0, bytes = 0, how, reset = false, finAt = 0, burst = 0;
const soError = () => {
  const v = new Int32Array(1), l = new Uint32Array([4]);
  return c._handle && getsockopt(c._handle.fd, 1, 4, v, l) === 0 ? v[0] : 0;
};
const done = () => {
  console.log(JSON.stringify({ status, bytes, sha256: hash.digest('hex'), how, reset, ms: Date.now() - (hold && finAt || start) }));
  process.exit(0);
};
setTimeout(() => { how ??= 'open'; done(); }, hold ? ${HOLD_GIVE_UP_MS} : ${GIVE_UP_MS});
c.on('connect', () => c.write('GET /' + kind + '/' + size + ' HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n'));
c.on('data', (d) => {
  if (!status) {
    head = Buffer.concat([head, d]);
    const at = head.indexOf('\\r\\n\\r\\n');
    if (at < 0) return;
    status = Number(head.toString('latin1', 9, 12));
    d = head.subarray(at + 4);
  }
  hash.update(d);
  bytes += d.length;
  if (bytes < FAST) return;
  burst += d.length;
  if (burst < BURST) return;
  burst = 0;
  c.pause();
  setTimeout(() => c.resume(), PAUSE_MS);
});
c.on('end', () => {
  how ??= 'end';
  reset ||= soError() === 104;
  finAt = Date.now();
  if (!hold) return c.end();
  setInterval(() => c.write('x'), 200);
});
c.on('error', (e) => {
  how ??= 'error:' + e.code;
  reset ||= e.code === 'ECONNRESET' || e.code === 'EPIPE';
});
c.on('close', done);
`;

interface Seen {
  status: number;
  bytes: number;
  sha256: string;
  how: string;
  reset: boolean;
  ms: number;
}

const koffiPath = createRequire(import.meta.url).resolve('koffi');

async function client(kind: 'len' | 'close', size: number, mode: keyof typeof READS): Promise<Seen> {
  const args = [kind, String(size), cast.pods.web.ip4, mode, JSON.stringify(READS[mode]), koffiPath];
  const child = cast.pods.client.ns.spawn(process.execPath, ['-e', CLIENT, ...args]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
  });
  await new Promise((resolve) => child.on('close', resolve));
  return JSON.parse(out.trim().split('\n').pop()!);
}

/** The proxy's sockets to the client pod as ss shows them in the agent's namespace now (they have the
 *  web pod's address: the connection is not rewritten): the client's port, the unsent bytes, and
 *  whether a process still holds the socket (none: the proxy closed it, the kernel sends the rest). */
function proxySockets(): { port: string; sendQ: number; held: boolean }[] {
  const out = execFileSync('ss', ['-tnHp', 'state', 'all', 'dst', cast.pods.client.ip4, 'src', `${cast.pods.web.ip4}:80`], {
    encoding: 'utf8',
  });
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 5)
    .map((f) => ({ port: f[4].split(':').pop()!, sendQ: Number(f[2]), held: f.slice(5).join(' ').includes('users:') }));
}

function sha256(n: number): string {
  const body = new Function(`${BODY}; return body;`)() as (n: number) => Buffer;
  return createHash('sha256').update(body(n)).digest('hex');
}

t.before(async () => {
  await serveThroughL7(cast, SERVER, POLICY, servers);
});
t.teardown(() => killAll(servers));

const WHOLE = sha256(SIZE);

/** Watches the proxy's socket for the connection while `run` runs: the most bytes the kernel held
 *  for the client once the proxy had closed the socket (what the sweep's close left to the kernel; a
 *  sample every 250 ms, so a close just before the end can show 0). */
async function watching(run: () => Promise<Seen>): Promise<{ r: Seen; unsentAtClose: number }> {
  let port = '';
  let unsentAtClose = 0;
  const watch = setInterval(() => {
    for (const s of proxySockets()) {
      if (s.held && s.sendQ > 0) port ||= s.port;
      else if (!s.held && s.port === port) unsentAtClose = Math.max(unsentAtClose, s.sendQ);
    }
  }, 250);
  try {
    return { r: await run(), unsentAtClose };
  } finally {
    clearInterval(watch);
  }
}

const MIB = SIZE >> 20;
const cases = [
  ['steady', 'len', `a steady reader of a ${MIB} MiB answer with a content-length`],
  ['steady', 'close', `a steady reader of a ${MIB} MiB answer delimited by the close`],
  ['stalled', 'len', `a reader of a ${MIB} MiB answer that stalls for two sweeps at a time`],
] as const;
for (const [mode, kind, what] of cases) {
  t.test(`${what} gets all of it`, async (t) => {
    const { r, unsentAtClose } = await watching(() => client(kind, SIZE, mode));
    t.comment(`the proxy closed its socket with ${unsentAtClose} bytes of the answer unsent (ss)`);
    t.equal(r.status, 200, 'answered');
    t.ok(r.ms > 3 * SWEEP_MS, `over three sweep intervals (${r.ms} ms)`);
    t.equal(r.bytes, SIZE, `every byte came (${r.bytes} of ${SIZE})`);
    t.equal(r.sha256, WHOLE, 'the bytes the server sent');
    t.same([r.how, r.reset], ['end', false], `a plain end, no reset: ${JSON.stringify(r)}`);
  });
}

t.test('a client that got its whole answer and never closes is still closed by the sweep', async (t) => {
  const r = await client('len', 1000, 'hold');
  t.same([r.status, r.bytes, r.how], [200, 1000, 'end'], `answered in full, then the proxy's FIN: ${JSON.stringify(r)}`);
  t.ok(r.reset, `its bytes after that got a reset (${r.ms} ms after the FIN)`);
});
