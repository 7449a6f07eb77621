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
import { closedLoopbackPort } from './lib/closed-port.ts';
import { count, h, raw, request, startHarness, WAIT_MS } from './lib/l7-proxy-harness.ts';

startHarness(t);

t.test('keep-alive: allowed and denied requests share one connection', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const before = h.backendConnections;
  const a = await request(agent, 'GET', '/public/a');
  t.same([a.status, a.body], [200, 'backend: GET /public/a 0']);
  const d = await request(agent, 'GET', '/private');
  t.same([d.status, d.body, d.reused], [403, 'Access denied', true], 'denied with 403 "Access denied" on the same connection');
  const p = await request(agent, 'POST', '/private', Buffer.alloc(100_000, 1));
  t.same([p.status, p.body, p.reused], [403, 'Access denied', true], 'a denied request with a body: the body is discarded');
  const b = await request(agent, 'GET', '/public/b');
  t.same([b.status, b.body, b.reused], [200, 'backend: GET /public/b 0', true], 'and the connection still works');
  t.equal(h.backendConnections - before, 1, 'one upstream connection for the whole client connection');
  t.notOk(
    h.received.some((r) => r.url === '/private'),
    'denied requests never reach the server',
  );
  t.match(
    h.exchanges.find((x) => x.path === '/private'),
    { method: 'GET', status: 403, verdict: { allowed: false }, localReason: 'denied' },
  );
  t.ok(h.exchanges.find((x) => x.path === '/public/b')!.latencyNs > 0, 'responses carry a latency');
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
  const got = h.received.find((x) => x.url === '/upload' && x.bytes === size);
  t.equal(got?.sha, sha.digest('hex'), `${size} bytes arrive byte for byte`);
  const denied = await request(agent, 'POST', '/other', gen());
  t.same([denied.status, denied.reused], [403, true], 'a denied chunked upload is discarded, the connection kept');
  t.equal((await request(agent, 'GET', '/public/after')).status, 200);
  agent.destroy();
});

t.test('a response that comes before its request body is all sent: the connection goes on', async (t) => {
  const s = net.connect(h.proxyPort, '127.0.0.1');
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
        port: h.proxyPort,
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
  const got = h.received.filter((x) => x.url === '/versioned').pop();
  t.same([got?.headers['x-version'], got?.headers['x-other']], ['v2', 'kept']);
  agent.destroy();
});

t.test('smuggling attempts get 400 and never reach the server', async (t) => {
  const before = h.received.length;
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
  t.equal(h.received.length, before, 'the server saw nothing');
});

t.test('bytes that are not HTTP/1.x are refused at once and never reach the server: TLS, HTTP/2', async (t) => {
  const before = h.received.length;
  // The start of a TLS ClientHello: a record header, no line ends; the proxy must not wait for a head.
  const hello = await raw('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', () => false);
  t.match(hello.text, /^HTTP\/1\.1 400 Bad Request\r\n[\s\S]*not an HTTP\/1\.x request\n$/, 'a TLS record gets a 400 at once');
  t.ok(hello.closed, 'and the connection is closed');
  const tlsError = await new Promise<string>((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: h.proxyPort, rejectUnauthorized: false });
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
  t.equal(h.received.length, before, 'the server saw nothing');
});

t.test('an unreachable destination answers 503', async (t) => {
  h.upstreamPort = await closedLoopbackPort();
  t.teardown(() => {
    h.upstreamPort = h.backendPort;
  });
  const r = await raw('GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n', () => false);
  t.match(r.text, /^HTTP\/1\.1 503 Service Unavailable/);
});

/** Sends `bytes` on a new connection; how it ended: the text, whether the proxy's FIN came ('end')
 *  and the socket error, if any (a reset would lose a response still on its way). */
async function closing(bytes: string): Promise<{ text: string; fin: boolean; error?: string }> {
  const s = net.connect(h.proxyPort, '127.0.0.1');
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
