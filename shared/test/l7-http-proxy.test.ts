// The HTTP proxy connection over real loopback sockets, between Node's own HTTP client and server:
// keep-alive with allowed and denied requests on one connection, pipelining, chunked and large
// bodies, 100-continue, WebSocket-style upgrade, header rewrites, refused smuggling, an unreachable
// upstream. (The datapath diversion is tested in integration/l7-*.)
import t from 'tap';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { HttpProxyConnection } from '../src/l7/http/connection.ts';
import type { Exchange } from '../src/l7/http/exchange.ts';
import { compileHttpRule, matchHttp } from '../src/l7/http/rules.ts';
import { type ProxySocket, workerIo } from '../src/l7/proxy/io.ts';
import type { HttpRule } from '../src/policy/types.ts';
import { closedLoopbackPort } from './lib/closed-port.ts';

const rules = (
  [
    { method: 'GET|HEAD', path: '/public/.*' },
    { method: 'POST|PUT', path: '/upload' },
    { method: 'GET', path: '/ws' },
    { method: 'GET', path: '/versioned', headerMatches: [{ name: 'X-Version', value: 'v2', mismatch: 'REPLACE' }] },
  ] as Partial<HttpRule>[]
).map((r) => compileHttpRule({ headers: [], headerMatches: [], ...r }));

const exchanges: Exchange[] = [];
let backendConnections = 0;
const received: { method: string; url: string; sha: string; bytes: number; headers: http.IncomingHttpHeaders }[] = [];

const backend = http.createServer((req, res) => {
  if (req.headers['x-early']) {
    // Answers before reading the body (as a server refusing an upload does); Node reads the rest.
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 5 });
    res.end('early');
    req.resume();
    return;
  }
  const h = crypto.createHash('sha256');
  let bytes = 0;
  req.on('data', (d: Buffer) => {
    h.update(d);
    bytes += d.length;
  });
  req.on('end', () => {
    received.push({ method: req.method!, url: req.url!, sha: h.digest('hex'), bytes, headers: req.headers });
    const body = `backend: ${req.method} ${req.url} ${bytes}`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
backend.on('connection', () => {
  backendConnections++;
});
backend.on('upgrade', (req, socket) => {
  // The accept of the client's key (RFC 6455), except on /public/bad-accept: a 101 the proxy must not take.
  const key = String(req.headers['sec-websocket-key']);
  const accept = req.url!.endsWith('bad-accept')
    ? 'x'
    : crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  socket.on('data', (d: Buffer) => socket.write(Buffer.concat([Buffer.from('echo:'), d])));
  socket.on('end', () => socket.end());
});

let backendPort = 0;
let upstreamPort = 0; // where the proxy connects (backendPort, or a closed port in one test)
// Both sockets as the proxy workers have them: EpollSockets (the default), or RawSockets with MEMBRANE_L7_WORKER_IO=libuv
// (proxy/io.ts; the upstream-pool test runs the same connection over net.Sockets).
const proxied = new Set<ProxySocket>();
let proxy: ReturnType<typeof workerIo.bind> | undefined;
const accept = (client: ProxySocket) => {
  proxied.add(client);
  new HttpProxyConnection({
    client,
    connect: () => workerIo.connect('127.0.0.1', upstreamPort, 10_000),
    decide: (_head, view) => {
      const m = matchHttp(rules, view);
      return { allowed: m.allowed, edits: m.edits };
    },
    sink: { request: () => undefined, response: (x) => exchanges.push(x) },
    onClose: () => proxied.delete(client),
  });
  client.start();
};
let proxyPort = 0;

t.before(async () => {
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  backendPort = (backend.address() as net.AddressInfo).port;
  upstreamPort = backendPort;
  proxy = workerIo.bind('127.0.0.1', 0, accept);
  proxyPort = proxy.port;
});
t.teardown(() => {
  proxy?.close();
  for (const c of proxied) c.destroy();
  backend.close();
  backend.closeAllConnections();
});

function request(
  agent: http.Agent,
  method: string,
  path: string,
  body?: Buffer | AsyncIterable<Buffer>,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxyPort, method, path, agent, headers }, (res) => {
      let text = '';
      res.setEncoding('latin1');
      res.on('data', (d: string) => {
        text += d;
      });
      res.on('end', () => resolve({ status: res.statusCode!, body: text, reused: req.reusedSocket }));
    });
    req.on('error', reject);
    if (body && Symbol.asyncIterator in body) {
      (async () => {
        for await (const c of body) if (!req.write(c)) await once(req, 'drain');
        req.end();
      })().catch(reject);
    } else {
      req.end(body);
    }
  });
}

/** How long a raw exchange may wait for the proxy's answer or close: 30 s as every test wait
 *  (lib/poll.ts); only an exchange that never ends meets it, and a loaded machine can leave this
 *  process unscheduled for seconds. */
const WAIT_MS = 30_000;

/** Writes raw bytes on a new connection and reads until `done(text)` or the server closes (or WAIT_MS). */
async function raw(bytes: string, done: (text: string) => boolean): Promise<{ text: string; closed: boolean }> {
  const s = net.connect(proxyPort, '127.0.0.1');
  let text = '';
  let closed = false;
  s.write(bytes);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, WAIT_MS);
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      if (done(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
    s.on('close', () => {
      closed = true;
      clearTimeout(timer);
      resolve();
    });
    s.on('error', () => undefined);
  });
  s.destroy();
  return { text, closed };
}

const count = (text: string, s: string) => text.split(s).length - 1;

t.test('keep-alive: allowed and denied requests share one connection', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const before = backendConnections;
  const a = await request(agent, 'GET', '/public/a');
  t.same([a.status, a.body], [200, 'backend: GET /public/a 0']);
  const d = await request(agent, 'GET', '/private');
  t.same([d.status, d.body, d.reused], [403, 'Access denied', true], 'denied with 403 "Access denied" on the same connection');
  const p = await request(agent, 'POST', '/private', Buffer.alloc(100_000, 1));
  t.same([p.status, p.body, p.reused], [403, 'Access denied', true], 'a denied request with a body: the body is discarded');
  const b = await request(agent, 'GET', '/public/b');
  t.same([b.status, b.body, b.reused], [200, 'backend: GET /public/b 0', true], 'and the connection still works');
  t.equal(backendConnections - before, 1, 'one upstream connection for the whole client connection');
  t.notOk(
    received.some((r) => r.url === '/private'),
    'denied requests never reach the server',
  );
  t.match(
    exchanges.find((x) => x.path === '/private'),
    { method: 'GET', status: 403, verdict: { allowed: false }, localReason: 'denied' },
  );
  t.ok(exchanges.find((x) => x.path === '/public/b')!.latencyNs > 0, 'responses carry a latency');
  agent.destroy();
});

t.test('pipelining: responses come back in request order, 403s in their place', async (t) => {
  const r = await raw(
    'GET /public/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /secret HTTP/1.1\r\nHost: a\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /public/3 HTTP/1.1\r\nHost: a\r\n\r\n',
    (x) => x.includes('GET /public/3 0'),
  );
  const order = [...r.text.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1]);
  t.same(order, ['200', '403', '403', '200']);
  t.ok(
    r.text.indexOf('/public/1') < r.text.indexOf('Access denied') &&
      r.text.indexOf('Access denied') < r.text.indexOf('/public/3'),
  );
  t.equal(count(r.text, 'Access denied'), 1, 'the 403 to HEAD has no body');
});

t.test('bodies: chunked and large uploads are streamed through intact', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const chunks = Array.from({ length: 64 }, (_, i) => crypto.randomBytes(1024 * 1024 + i));
  const sha = crypto.createHash('sha256');
  for (const c of chunks) sha.update(c);
  const size = chunks.reduce((n, c) => n + c.length, 0);
  async function* gen() {
    for (const c of chunks) yield c;
  }
  const r = await request(agent, 'POST', '/upload', gen()); // no length: Node sends it chunked
  t.equal(r.status, 200);
  const got = received.find((x) => x.url === '/upload' && x.bytes === size);
  t.equal(got?.sha, sha.digest('hex'), `${size} bytes arrive byte for byte`);
  const denied = await request(agent, 'POST', '/other', gen());
  t.same([denied.status, denied.reused], [403, true], 'a denied chunked upload is discarded, the connection kept');
  t.equal((await request(agent, 'GET', '/public/after')).status, 200);
  agent.destroy();
});

t.test('a response that comes before its request body is all sent: the connection goes on', async (t) => {
  const s = net.connect(proxyPort, '127.0.0.1');
  let text = '';
  let closed = false;
  s.on('data', (d: Buffer) => {
    text += d.toString('latin1');
  });
  s.on('close', () => {
    closed = true;
  });
  s.on('error', () => undefined);
  const until = async (what: string, ok: () => boolean) => {
    for (const t0 = Date.now(); !ok() && !closed; ) {
      if (Date.now() - t0 > WAIT_MS) throw new Error(`no ${what} within ${WAIT_MS / 1000} s; got ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  s.write('POST /upload HTTP/1.1\r\nHost: a\r\nX-Early: 1\r\nContent-Length: 10\r\n\r\n12345');
  await until('early response', () => text.includes('early'));
  t.match(text, /^HTTP\/1\.1 200 [\s\S]*early$/, "the server's early answer reaches the client");
  s.write('67890GET /public/after-early HTTP/1.1\r\nHost: a\r\n\r\n');
  await until('second response', () => text.includes('/public/after-early'));
  t.notOk(closed, 'the connection is still open');
  t.notMatch(text, / 400 /, 'the rest of the body is not taken for a bad request');
  t.match(text, /backend: GET \/public\/after-early 0/, 'the next request on it is answered');
  s.destroy();
});

t.test('Expect: 100-continue', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const allowed = await new Promise<number>((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: proxyPort,
        method: 'PUT',
        path: '/upload',
        agent,
        headers: { expect: '100-continue', 'content-length': 5 },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      },
    );
    req.on('continue', () => req.end('hello'));
    req.on('error', reject);
  });
  t.equal(allowed, 200, "the server's 100 Continue reaches the client, then the body goes through");
  const r = await raw('PUT /secret HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n', () => false);
  t.match(
    r.text,
    /^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*connection: close/,
    'denied before the body is sent: 403 and the connection closes',
  );
  t.ok(r.closed);
  agent.destroy();
});

t.test('upgrade: an allowed WebSocket handshake becomes a tunnel', async (t) => {
  const ws = (p: string) =>
    `GET ${p} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
  const r = await raw(`${ws('/ws')}frame-1`, (x) => x.includes('echo:frame-1'));
  t.match(r.text, /^HTTP\/1\.1 101 Switching Protocols/);
  t.match(r.text, /echo:frame-1$/, 'bytes after the handshake pass both ways');
  const bad = await raw(`${ws('/public/bad-accept')}frame-1`, () => false);
  t.same([bad.text, bad.closed], ['', true], 'a 101 with a wrong accept: the connection ends, nothing passed on, no tunnel');
  const d = await raw('GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', (x) =>
    x.includes('Access denied'),
  );
  t.match(d.text, /^HTTP\/1\.1 403/, 'a denied upgrade gets 403');
});

t.test('headerMatches REPLACE rewrites the request; others pass unchanged', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.equal((await request(agent, 'GET', '/versioned', undefined, { 'x-version': 'v1', 'x-other': 'kept' })).status, 200);
  const got = received.filter((x) => x.url === '/versioned').pop();
  t.same([got?.headers['x-version'], got?.headers['x-other']], ['v2', 'kept']);
  agent.destroy();
});

t.test('smuggling attempts get 400 and never reach the server', async (t) => {
  const before = received.length;
  const r = await raw(
    'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /secret HTTP/1.1\r\nHost: a\r\n\r\n',
    () => false,
  );
  t.match(r.text, /^HTTP\/1\.1 400 Bad Request/);
  t.ok(r.closed, 'and the connection is closed');
  const r2 = await raw(
    'GET /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n',
    () => false,
  );
  t.match(r2.text, /^HTTP\/1\.1 501/);
  t.equal(received.length, before, 'the server saw nothing');
});

t.test('bytes that are not HTTP/1.x are refused at once and never reach the server: TLS, HTTP/2', async (t) => {
  const before = received.length;
  // The start of a TLS ClientHello: a record header, no line ends; the proxy must not wait for a head.
  const hello = await raw('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', () => false);
  t.match(hello.text, /^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*not an HTTP\/1\.x request\n$/, 'a TLS record gets a 400 at once');
  t.ok(hello.closed, 'and the connection is closed');
  const tlsError = await new Promise<string>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: proxyPort, rejectUnauthorized: false });
    const timer = setTimeout(() => {
      s.destroy();
      resolve('no answer within 5 s');
    }, 5000);
    s.on('error', (e) => {
      clearTimeout(timer);
      resolve(`error: ${e.message}`);
    });
    s.on('secureConnect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve('handshake completed');
    });
  });
  t.match(tlsError, /^error: /, `a real TLS client fails at once (${tlsError})`);
  const h2 = await raw('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', () => false);
  t.match(h2.text, /^HTTP\/1\.1 400 Bad Request/, 'the HTTP/2 connection preface gets a 400');
  t.ok(h2.closed);
  t.equal(received.length, before, 'the server saw nothing');
});

t.test('an unreachable destination answers 503', async (t) => {
  upstreamPort = await closedLoopbackPort();
  t.teardown(() => {
    upstreamPort = backendPort;
  });
  const r = await raw('GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n', () => false);
  t.match(r.text, /^HTTP\/1\.1 503 Service Unavailable/);
});

/** Sends `bytes` on a new connection; how it ended: the text, whether the proxy's FIN came ('end')
 *  and the socket error, if any (a reset would lose a response still on its way). */
async function closing(bytes: string): Promise<{ text: string; fin: boolean; error?: string }> {
  const s = net.connect(proxyPort, '127.0.0.1');
  let text = '';
  let fin = false;
  let error: string | undefined;
  s.write(bytes);
  s.on('data', (d: Buffer) => {
    text += d.toString('latin1');
  });
  s.on('end', () => {
    fin = true;
    s.end();
  });
  s.on('error', (e: NodeJS.ErrnoException) => {
    error = e.code;
  });
  const timer = setTimeout(() => s.destroy(), 10_000);
  await once(s, 'close');
  clearTimeout(timer);
  return { text, fin, error };
}

t.test('Connection: close: the whole response, then the FIN (never a reset), also with bytes after the request', async (t) => {
  const cases = [
    ['GET /public/c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', '200', 'backend: GET /public/c 0'],
    ['GET /secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', '403', 'Access denied'],
    ['POST /secret HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc', '403', 'Access denied'],
    // A client that pipelines past its close request: the proxy lingers for its bytes (no reset).
    [
      'GET /secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /public/d HTTP/1.1\r\nHost: a\r\n\r\n',
      '403',
      'Access denied',
    ],
  ] as const;
  for (const [bytes, status, body] of cases) {
    const r = await closing(bytes);
    t.match(r.text, new RegExp(`^HTTP/1\\.1 ${status} `), `${JSON.stringify(bytes.slice(0, 12))}: status`);
    t.ok(r.text.endsWith(body), `the response is complete: ${JSON.stringify(r.text.slice(-30))}`);
    t.same({ fin: r.fin, error: r.error }, { fin: true, error: undefined }, 'then the FIN, no reset');
    t.equal(count(r.text, 'HTTP/1.1 '), 1, 'nothing after the close request is answered');
  }
});
