// The HTTP proxy connection over real loopback sockets, for l7-http-proxy.test.ts (and its libuv
// run): Node's HTTP server as the backend (it records what it receives and answers WebSocket
// handshakes), the proxy as the workers run it (proxy/io.ts) with a fixed rule set, and the clients
// the tests speak through it.
import type { Test } from 'tap';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { HttpProxyConnection } from '../../src/l7/http/connection.ts';
import type { Exchange } from '../../src/l7/http/exchange.ts';
import { compileHttpRule, matchHttp } from '../../src/l7/http/rules.ts';
import { type ProxySocket, workerIo } from '../../src/l7/proxy/io.ts';
import type { HttpRule } from '../../src/policy/types.ts';

const rules = (
  [
    { method: 'GET|HEAD', path: '/public/.*' },
    { method: 'POST|PUT', path: '/upload' },
    { method: 'GET', path: '/ws' },
    { method: 'GET', path: '/versioned', headerMatches: [{ name: 'X-Version', value: 'v2', mismatch: 'REPLACE' }] },
  ] as Partial<HttpRule>[]
).map((r) => compileHttpRule({ headers: [], headerMatches: [], ...r }));

/** What the tests read and set: the proxy's records, what the backend h.received, the ports. */
export const h = {
  exchanges: [] as Exchange[],
  received: [] as { method: string; url: string; sha: string; bytes: number; headers: http.IncomingHttpHeaders }[],
  backendConnections: 0,
  backendPort: 0,
  /** Where the proxy connects (h.backendPort, or a closed port in one test). */
  upstreamPort: 0,
  proxyPort: 0,
};

const backend = http.createServer((req, res) => {
  if (req.headers['x-early']) {
    // Answers before reading the body (as a server refusing an upload does); Node reads the rest.
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 5 });
    res.end('early');
    req.resume();
    return;
  }
  const digest = crypto.createHash('sha256');
  let bytes = 0;
  req.on('data', (d: Buffer) => {
    digest.update(d);
    bytes += d.length;
  });
  req.on('end', () => {
    h.received.push({ method: req.method!, url: req.url!, sha: digest.digest('hex'), bytes, headers: req.headers });
    const body = `backend: ${req.method} ${req.url} ${bytes}`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
backend.on('connection', () => {
  h.backendConnections++;
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

// Both sockets as the proxy workers have them: EpollSockets (the default), or RawSockets with MEMBRANE_L7_WORKER_IO=libuv
// (proxy/io.ts; the upstream-pool test runs the same connection over net.Sockets).
const proxied = new Set<ProxySocket>();
let proxy: ReturnType<typeof workerIo.bind> | undefined;
const accept = (client: ProxySocket) => {
  proxied.add(client);
  new HttpProxyConnection({
    client,
    connect: () => workerIo.connect('127.0.0.1', h.upstreamPort, 10_000),
    decide: (_head, view) => {
      const m = matchHttp(rules, view);
      return { allowed: m.allowed, edits: m.edits };
    },
    sink: { request: () => undefined, response: (x) => h.exchanges.push(x) },
    onClose: () => proxied.delete(client),
  });
  client.start();
};

/** Starts the backend and the proxy for the calling test file (its before and teardown). */
export function startHarness(t: Test): void {
  t.before(async () => {
    backend.listen(0, '127.0.0.1');
    await once(backend, 'listening');
    h.backendPort = (backend.address() as net.AddressInfo).port;
    h.upstreamPort = h.backendPort;
    proxy = workerIo.bind('127.0.0.1', 0, accept);
    h.proxyPort = proxy.port;
  });
  t.teardown(() => {
    proxy?.close();
    for (const c of proxied) c.destroy();
    backend.close();
    backend.closeAllConnections();
  });
}

export function request(
  agent: http.Agent,
  method: string,
  path: string,
  body?: Buffer | AsyncIterable<Buffer>,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: h.proxyPort, method, path, agent, headers }, (res) => {
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
export const WAIT_MS = 30_000;

/** Writes raw bytes on a new connection and reads until `done(text)` or the server closes (or WAIT_MS). */
export async function raw(bytes: string, done: (text: string) => boolean): Promise<{ text: string; closed: boolean }> {
  const s = net.connect(h.proxyPort, '127.0.0.1');
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

export const count = (text: string, s: string) => text.split(s).length - 1;
