// The proxy connection when one side goes away while the other is held, over real loopback sockets
// and the worker's own socket layer (proxy/io.ts: epoll; l7-upstream-death-libuv.test.ts: libuv).
// A client uploading a large body is held (the proxy stops reading it: what it read for the server
// cannot be sent, the server reads no more) when the server resets mid-answer, ends its answer short,
// closes without answering, or was never reached; and the mirror, a client that stops reading a large
// answer (the proxy stops reading the server for it), then resets or half-closes. Each time the
// client's connection ends, a cut answer is cut (a reset, never a FIN that could pass for the end of
// it), and the proxy lets go of both its sockets. Before 2026-12-06 the client of the last three
// upload cases was never read again: it waited for the proxy to read its bytes, the proxy for its FIN
// (integration/l7-epoll-attack.test.ts's storm: 1 of 40 uploads "hung").
import t, { type Test } from 'tap';
import net from 'node:net';
import os from 'node:os';
import { once } from 'node:events';
import { HttpProxyConnection } from '../src/l7/http/connection.ts';
import { type ProxySocket, workerIo } from '../src/l7/proxy/io.ts';
import { pendingSocketError } from '../src/l7/proxy/sockets.ts';
import { closedLoopbackPort } from './lib/closed-port.ts';
import { pollUntil } from './lib/poll.ts';

/** The layers' write() answers false from this many queued bytes on (the pair then holds the other side). */
const HIGH_WATER = 16 * 1024;
const ECONNRESET = os.constants.errno.ECONNRESET;
/** Long enough for anything that is going to happen; what these cases catch never happens at all. */
const ENDS_WITHIN_MS = 20_000;

/** One connection the proxy accepted: its two sockets and whether the connection closed. */
interface Proxied {
  client: ProxySocket;
  upstream?: ProxySocket;
  closed: boolean;
}
const proxied: Proxied[] = [];
let upstreamPort = 0;

const proxy = workerIo.bind('127.0.0.1', 0, (client) => {
  const p: Proxied = { client, closed: false };
  proxied.push(p);
  new HttpProxyConnection({
    client,
    connect: () => {
      p.upstream = workerIo.connect('127.0.0.1', upstreamPort, 10_000);
      return p.upstream;
    },
    decide: () => ({ allowed: true, edits: [] }),
    sink: { request: () => undefined, response: () => undefined },
    onClose: () => {
      p.closed = true;
    },
  });
  client.start();
});

/** The server: it reads each connection's request head, then nothing more (the proxy's bytes for it
 *  pile up) until a case says what it does with it. */
const heads: net.Socket[] = [];
const serverSockets = new Set<net.Socket>();
const server = net.createServer({ allowHalfOpen: true }, (s) => {
  serverSockets.add(s);
  s.on('error', () => undefined);
  let text = '';
  const onData = (d: Buffer) => {
    text += d.toString('latin1');
    if (!text.includes('\r\n\r\n')) return;
    s.off('data', onData);
    s.pause();
    heads.push(s);
  };
  s.on('data', onData);
});

t.before(async () => {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  upstreamPort = (server.address() as net.AddressInfo).port;
});
t.teardown(() => {
  proxy.close();
  for (const p of proxied) p.client.destroy();
  for (const s of serverSockets) s.destroy();
  server.close();
});

/** What a client got: the answer's first bytes (its head) and how many came, how its connection
 *  ended first ('end': the proxy's FIN; 'error:CODE'), whether it was reset at all (a reset may come
 *  as an end: a write took its error, or libuv took it for one), and whether it closed. */
interface Seen {
  head: string;
  bytes: number;
  how?: string;
  reset: boolean;
  closed: boolean;
}

/** A client like a browser's or curl's: allowHalfOpen, it ends its side when the proxy ends its. */
function client(onConnect: (c: net.Socket) => void): { c: net.Socket; seen: Seen } {
  const seen: Seen = { head: '', bytes: 0, reset: false, closed: false };
  const c = net.connect({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
  onConnect(c);
  c.on('data', (d: Buffer) => {
    if (seen.head.length < 1024) seen.head += d.toString('latin1', 0, 1024);
    seen.bytes += d.length;
  });
  c.on('end', () => {
    seen.how ??= 'end';
    // libuv takes a reset right after data for an end (proxy/sockets.ts pendingSocketError says how):
    // the kernel still holds the reset then.
    seen.reset ||= pendingSocketError(c as never) === ECONNRESET;
    c.end();
  });
  c.on('error', (e: NodeJS.ErrnoException) => {
    seen.how ??= `error:${e.code}`;
    seen.reset ||= e.code === 'ECONNRESET' || e.code === 'EPIPE';
  });
  c.on('close', () => {
    seen.closed = true;
  });
  return { c, seen };
}

/** A client uploading a 1 GiB body, as fast as the proxy reads it, until its connection ends. */
function upload(): { c: net.Socket; seen: Seen } {
  const chunk = Buffer.alloc(64 * 1024, 122);
  return client((c) => {
    c.write('PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1073741824\r\n\r\n');
    const more = () => {
      while (!c.destroyed && !c.writableEnded) if (!c.write(chunk)) return void c.once('drain', more);
    };
    more(); // written at once, before the connection is up: the proxy's first read has 64 KiB of body
  });
}

/** The server's next connection whose head came. */
async function nextHead(t: Test): Promise<net.Socket> {
  const n = heads.length;
  t.ok(await pollUntil(() => heads.length > n, ENDS_WITHIN_MS), 'the request head reached the server');
  return heads[n];
}

/** A proxied connection that is up and held: `side` has HIGH_WATER bytes queued in the proxy. */
async function held(t: Test, side: 'upstream' | 'client', what: string): Promise<Proxied> {
  const p = proxied.at(-1)!;
  t.ok(await pollUntil(() => (p[side]?.writableLength ?? 0) >= HIGH_WATER, ENDS_WITHIN_MS), what);
  return p;
}

/** The client's connection ended and the proxy let go of both its sockets. */
async function allEnded(t: Test, p: Proxied, seen: Seen): Promise<void> {
  t.ok(await pollUntil(() => seen.closed, ENDS_WITHIN_MS), `the client's connection ended (${seen.how})`);
  t.ok(await pollUntil(() => p.closed, ENDS_WITHIN_MS), 'the proxy closed the connection');
  t.ok(p.client.destroyed && (p.upstream?.destroyed ?? true), 'both its sockets are closed');
}

const HEAD_1MIB = 'HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n';
const bodyBytes = (s: Seen) => {
  const at = s.head.indexOf('\r\n\r\n');
  return at < 0 ? 0 : s.bytes - at - 4;
};

t.test('uploading, held: the server answers 64 KiB of 1 MiB and resets', async (t) => {
  const { seen } = upload();
  const s = await nextHead(t);
  const p = await held(t, 'upstream', 'the server reads no more: the proxy holds the client');
  s.write(HEAD_1MIB);
  s.write(Buffer.alloc(65536, 120), () => s.resetAndDestroy());
  await allEnded(t, p, seen);
  t.ok(seen.reset, 'the cut answer is cut: a reset');
  t.ok(bodyBytes(seen) < 1048576, `${bodyBytes(seen)} bytes of the answer came, not all`);
});

t.test('uploading, held: the server answers 64 KiB of 1 MiB and ends (FIN)', async (t) => {
  const { seen } = upload();
  const s = await nextHead(t);
  const p = await held(t, 'upstream', 'the server reads no more: the proxy holds the client');
  s.write(HEAD_1MIB);
  s.write(Buffer.alloc(65536, 120), () => s.end());
  await allEnded(t, p, seen);
  t.ok(seen.reset, 'the cut answer is cut: a reset');
  t.ok(bodyBytes(seen) < 1048576, `${bodyBytes(seen)} bytes of the answer came, not all`);
});

t.test('not uploading: an answer cut short by the server is cut short for the client, a reset', async (t) => {
  // The client sent all it had, so the proxy's close() alone would send a FIN: the end of a
  // close-delimited answer, the end of the connection after one with a length.
  const answers = [
    ['the server resets a close-delimited answer', 'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n', 'reset'],
    ['the server ends an answer with a length short', HEAD_1MIB, 'end'],
    ['the server ends a chunked answer short', 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000\r\n', 'end'],
  ] as const;
  for (const [what, head, how] of answers) {
    const { seen } = client((c) => c.write('GET /cut HTTP/1.1\r\nHost: a\r\n\r\n'));
    const s = await nextHead(t);
    s.write(head);
    s.write(Buffer.alloc(65536, 120), () => (how === 'reset' ? s.resetAndDestroy() : s.end()));
    await allEnded(t, proxied.at(-1)!, seen);
    t.ok(seen.reset, `${what}: the client is reset (${seen.how})`);
  }
});

t.test('uploading, held: the server closes without answering', async (t) => {
  const { seen } = upload();
  const s = await nextHead(t);
  const p = await held(t, 'upstream', 'the server reads no more: the proxy holds the client');
  s.end(); // and reads nothing more: the proxy's bytes for it stay queued
  await allEnded(t, p, seen);
  t.same({ how: seen.how, bytes: seen.bytes }, { how: 'end', bytes: 0 }, "no answer: the connection ends as the server's did");
});

t.test('uploading to a server that cannot be reached: 503, and the connection ends', async (t) => {
  upstreamPort = await closedLoopbackPort();
  t.teardown(() => {
    upstreamPort = (server.address() as net.AddressInfo).port;
  });
  const { seen } = upload();
  t.ok(await pollUntil(() => proxied.at(-1)?.upstream !== undefined, ENDS_WITHIN_MS), 'the proxy connects');
  await allEnded(t, proxied.at(-1)!, seen);
  t.match(seen.head, /^HTTP\/1\.1 503 /, 'answered 503');
  t.equal(seen.how, 'end', 'then the FIN');
});

/** The server's answer to `s`: a head for `size` bytes, then the bytes as fast as they are taken. */
function answer(s: net.Socket, size: number): void {
  s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${size}\r\n\r\n`);
  const chunk = Buffer.alloc(64 * 1024, 120);
  let left = size;
  const more = () => {
    while (left > 0 && !s.destroyed) {
      const c = chunk.subarray(0, Math.min(chunk.length, left));
      left -= c.length;
      if (!s.write(c)) return void s.once('drain', more);
    }
  };
  more();
}

const GET_BIG = 'GET /big HTTP/1.1\r\nHost: a\r\n\r\n';

t.test('a client that stops reading a large answer, then resets: both sockets are let go', async (t) => {
  const { c, seen } = client((c) => {
    c.write(GET_BIG);
    c.pause();
  });
  const s = await nextHead(t);
  answer(s, 256 * 1024 * 1024);
  const p = await held(t, 'client', 'the client reads no more: the proxy holds the server');
  c.resetAndDestroy();
  t.ok(await pollUntil(() => seen.closed, ENDS_WITHIN_MS), 'the client is gone');
  t.ok(await pollUntil(() => p.closed, ENDS_WITHIN_MS), 'the proxy closed the connection');
  t.ok(p.client.destroyed && p.upstream!.destroyed, 'both its sockets are closed');
  t.ok(await pollUntil(() => s.destroyed, ENDS_WITHIN_MS), "and the server's connection ended");
});

t.test('a client that stops reading a large answer and half-closes: then the whole answer, then the FIN', async (t) => {
  const size = 8 * 1024 * 1024;
  const { c, seen } = client((c) => {
    c.write(GET_BIG);
    c.pause();
  });
  const s = await nextHead(t);
  let serverSawEnd = false;
  s.on('end', () => {
    serverSawEnd = true;
  });
  s.resume();
  answer(s, size);
  const p = await held(t, 'client', 'the client reads no more: the proxy holds the server');
  c.end();
  t.ok(await pollUntil(() => serverSawEnd, ENDS_WITHIN_MS), "the client's FIN reached the server");
  c.resume();
  await allEnded(t, p, seen);
  t.same({ how: seen.how, bytes: bodyBytes(seen) }, { how: 'end', bytes: size }, 'the whole answer came, then the FIN');
});
