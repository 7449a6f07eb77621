// Upstream connection reuse of the HTTP proxy over real loopback sockets: one-request client
// connections share one upstream connection per key (and never across keys), the server never sees
// the client's "Connection: close" (its client gets it back in the response), a server that ends the connection is not reused, and a reused
// connection the server had closed gets an idempotent request again on a fresh one (never a POST).
import t from 'tap';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { HttpProxyConnection } from '../src/l7/http/connection.ts';
import { UpstreamPool } from '../src/l7/proxy/upstream-pool.ts';
import { pollUntil } from './lib/poll.ts';

/** What the backend does with the n-th request (1-based) of a connection. */
let behaviour: (n: number, req: http.IncomingMessage, res: http.ServerResponse) => void = (_n, _req, res) => res.end('ok');
let backendConnections = 0;
const seen: { connection: string | undefined; method: string }[] = [];
const perSocket = new WeakMap<object, number>();
const backend = http.createServer((req, res) => {
  const n = (perSocket.get(req.socket) ?? 0) + 1;
  perSocket.set(req.socket, n);
  seen.push({ connection: req.headers.connection, method: req.method! });
  req.resume();
  req.on('end', () => behaviour(n, req, res));
});
backend.on('connection', () => backendConnections++);

const pool = new UpstreamPool();
let backendPort = 0;
const proxies: net.Server[] = [];
/** A proxy listener whose connections use the pool under `key`. */
async function proxyFor(key: string): Promise<number> {
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    new HttpProxyConnection({
      client,
      connect: () => net.connect({ port: backendPort, host: '127.0.0.1', allowHalfOpen: true }),
      decide: () => ({ allowed: true, edits: [] }),
      sink: { request: () => undefined, response: () => undefined },
      reuse: { take: () => pool.take(key), give: (u) => pool.give(key, u) },
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  proxies.push(server);
  return (server.address() as net.AddressInfo).port;
}

/** One request on its own connection (Connection: close, as wrk -H 'Connection: close' sends it). */
async function oneRequest(port: number, method = 'GET', body = ''): Promise<{ text: string; closedByProxy: boolean }> {
  const s = net.connect(port, '127.0.0.1');
  s.write(`${method} /x HTTP/1.1\r\nHost: b\r\nConnection: close\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
  let text = '';
  s.on('data', (d: Buffer) => {
    text += d.toString('latin1');
  });
  s.on('error', () => undefined);
  const [how] = await Promise.race([
    Promise.all([once(s, 'end').then(() => 'end')]),
    new Promise<string[]>((r) => setTimeout(() => r(['timeout']), 5000)),
  ]);
  s.destroy();
  return { text, closedByProxy: how === 'end' };
}

t.before(async () => {
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  backendPort = (backend.address() as net.AddressInfo).port;
});
t.teardown(() => {
  for (const p of proxies) p.close();
  pool.clear();
  backend.close();
  backend.closeAllConnections();
});

const settle = () => new Promise((r) => setTimeout(r, 50));

t.test('one-request connections of one key share an upstream connection', async (t) => {
  const port = await proxyFor('id-1|b');
  const before = backendConnections;
  seen.length = 0;
  for (let i = 0; i < 5; i++) {
    const r = await oneRequest(port);
    t.match(
      r.text,
      /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\nconnection: close\r\n\r\nok$/,
      `request ${i + 1} answered, with "connection: close"`,
    );
    t.ok(r.closedByProxy, `and its connection ended by the proxy (${i + 1})`);
    await settle();
  }
  t.equal(backendConnections - before, 1, 'five client connections, one upstream connection');
  t.same(
    seen.map((x) => x.connection),
    [undefined, undefined, undefined, undefined, undefined],
    'the server never sees the client connection\'s "Connection: close"',
  );
  t.equal(pool.size, 1, 'the upstream connection is idle in the pool');
});

t.test('another key never gets that connection', async (t) => {
  const port = await proxyFor('id-2|b');
  const before = backendConnections;
  const r = await oneRequest(port);
  t.match(r.text, /^HTTP\/1\.1 200 OK/, 'answered');
  await settle();
  t.equal(backendConnections - before, 1, 'a connection of its own');
  t.equal(pool.size, 2, 'one idle connection per key');
});

t.test('a server that ends the connection is not reused', async (t) => {
  pool.clear();
  const port = await proxyFor('id-3|b');
  behaviour = (_n, _req, res) => {
    res.setHeader('connection', 'close');
    res.end('bye');
  };
  const before = backendConnections;
  for (let i = 0; i < 2; i++) t.match((await oneRequest(port)).text, /\r\n\r\nbye$/, `answered (${i + 1})`);
  await settle();
  t.equal(backendConnections - before, 2, 'a fresh upstream connection each time');
  t.equal(pool.size, 0, 'nothing kept');
  behaviour = (_n, _req, res) => res.end('ok');
});

t.test('a reused connection the server closed: GET goes again on a fresh one, POST does not', async (t) => {
  pool.clear();
  const port = await proxyFor('id-4|b');
  // The server drops every connection at its second request without answering (as when it closes an
  // idle keep-alive connection just as the next request arrives).
  behaviour = (n, req, res) => (n === 2 ? req.socket.destroy() : res.end(`ok ${n}`));
  t.match((await oneRequest(port)).text, /\r\n\r\nok 1$/, 'first request answered');
  await settle();
  t.equal(pool.size, 1, 'its upstream is kept');
  const before = backendConnections;
  const get = await oneRequest(port);
  t.match(get.text, /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok 1$/, 'the GET is answered, on a fresh connection');
  t.equal(backendConnections - before, 1, 'one fresh upstream connection');
  await settle();
  t.equal(pool.size, 1, 'which is kept in turn');
  const post = await oneRequest(port, 'POST', 'abc');
  t.equal(post.text, '', 'a POST is not sent twice: the client connection ends without an answer');
  t.equal(seen.filter((x) => x.method === 'POST').length, 1, 'the server got the POST once');
  behaviour = (_n, _req, res) => res.end('ok');
});

t.test('pool: idle connections expire, and a FIN while idle drops one', async (t) => {
  // idleMs 1 s, not less: a must still be kept when b's FIN has been handled, and a loaded machine
  // can leave this process unscheduled for a few hundred ms in between.
  const p = new UpstreamPool({ idleMs: 1000 });
  const conns: net.Socket[] = [];
  const server = net.createServer((s) => conns.push(s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const open = async () => {
    const s = net.connect(port, '127.0.0.1');
    await once(s, 'connect');
    return s;
  };
  const a = await open();
  const b = await open();
  t.ok(p.give('k', a) && p.give('k', b), 'two idle connections kept');
  t.equal(p.take('other'), undefined, 'none for another key');
  conns[1].end(); // the server closes b
  await once(b, 'end');
  t.equal(p.size, 1, 'the one the server closed is dropped');
  // Polled: the idle timer runs late on a loaded machine, but it runs.
  t.ok(await pollUntil(() => p.size === 0), 'the other expired');
  t.ok(a.writableEnded, 'and was ended');
  t.equal(p.take('k'), undefined, 'nothing left to take');
  server.close();
  for (const c of conns) c.destroy();
});
