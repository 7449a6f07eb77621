// The DNS proxy's bound on TCP client connections (dns/tcp-clients.ts), with real sockets on loopback:
// a client that opens many idle connections keeps at most its limit open (its least recently active
// ones are closed, with one clear log line), all clients together at most theirs, activity keeps a
// connection from being the one closed, and every way a connection ends (the client's FIN, its RST,
// the idle timeout, the proxy closing) takes it out of the set.
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { TcpClients, type TcpClientLimits } from '../src/dns/tcp-clients.ts';
import { pollUntil } from './lib/poll.ts';

type Warn = { o: Record<string, unknown>; msg: string };

/** A loopback server whose accepted connections are admitted like the proxy's (tcp.ts). */
async function harness(t: Test, limits: Partial<TcpClientLimits>) {
  const warns: Warn[] = [];
  const clients = new TcpClients(limits, { warn: (o, msg) => warns.push({ o: o as Record<string, unknown>, msg }) });
  let accepted = 0;
  let received = 0;
  /** The proxy's side of each connection, in the order accepted. */
  const ours: net.Socket[] = [];
  const server = net.createServer((c) => {
    accepted++;
    ours.push(c);
    clients.admit(c, c.remoteAddress ?? '');
    c.on('data', () => {
      received++;
      clients.touch(c);
    });
    c.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const opened: net.Socket[] = [];
  t.teardown(async () => {
    for (const s of opened) s.destroy();
    clients.closeAll();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  /** Connects from `from` (any 127/8 address is loopback) and waits until the server admitted it. */
  /** `closed` (the stream's own) turns true once the socket closed. */
  const open = async (from = '127.0.0.2'): Promise<net.Socket> => {
    const want = accepted + 1;
    const s = net.connect({ host: '127.0.0.1', port, localAddress: from });
    s.on('error', () => undefined);
    opened.push(s);
    await once(s, 'connect');
    while (accepted < want) await sleep(1);
    return s;
  };
  /** Until `cond` holds (sockets close a few event-loop turns after the server's destroy; 30 s, as
   *  every test wait: a loaded machine runs those turns late). */
  const until = async (cond: () => boolean, what: string) => t.ok(await pollUntil(cond, 30_000, 5), what);
  return { clients, warns, open, until, ours, received: () => received };
}

t.test('one client opening many idle connections keeps only its limit open, the oldest closed', async (t) => {
  const h = await harness(t, { perClient: 4, max: 100, idleMs: 60_000 });
  const socks: net.Socket[] = [];
  for (let i = 0; i < 50; i++) {
    socks.push(await h.open('127.0.0.2'));
    t.ok(h.clients.size <= 4, `set bounded after connection ${i + 1}`);
  }
  t.equal(h.clients.size, 4, 'four open in the proxy');
  await h.until(() => socks.slice(0, 46).every((s) => s.closed), 'the 46 oldest were closed');
  t.ok(
    socks.slice(46).every((s) => !s.closed),
    'the 4 newest stay open',
  );
  t.equal(h.clients.evicted, 46);
  t.equal(h.warns.length, 1, 'one log line for the burst (rate-limited)');
  t.match(h.warns[0]!.msg, /client 127\.0\.0\.2 opened more than 4 TCP connections: closed its least recently active/);
  t.match(h.warns[0]!.o, { limit: 'perClient', value: 4, client: '127.0.0.2', closed: 1 });
  t.equal(
    h.clients.closedBy(h.ours[0]!),
    'connection evicted: 127.0.0.2 over 4 connections (--dns-proxy-tcp-max-per-client)',
    'closedBy names the limit (for the flow records of the queries it took down)',
  );
  t.equal(h.clients.closedBy(h.ours[49]!), undefined, 'and nothing for one still open');

  // Another client is not touched by the first one's flood.
  const other = await h.open('127.0.0.3');
  t.equal(h.clients.size, 5);
  t.notOk(other.closed);
  for (const s of socks.slice(46)) s.destroy();
  other.destroy();
  await h.until(() => h.clients.size === 0, 'all freed once the clients close');
});

t.test('all clients together keep at most max open', async (t) => {
  const h = await harness(t, { perClient: 10, max: 8, idleMs: 60_000 });
  const socks: net.Socket[] = [];
  for (let i = 0; i < 24; i++) socks.push(await h.open(`127.0.1.${1 + (i % 6)}`));
  t.equal(h.clients.size, 8);
  await h.until(() => socks.slice(0, 16).every((s) => s.closed), 'the 16 least recently active were closed');
  t.ok(
    socks.slice(16).every((s) => !s.closed),
    'the 8 newest stay',
  );
  t.match(h.warns[0]!.o, { limit: 'max', value: 8, client: '127.0.1.1' });
  t.match(h.warns[0]!.msg, /more than 8 TCP connections open: closed the least recently active one, from 127\.0\.1\.1/);
  t.equal(h.clients.closedBy(h.ours[0]!), 'connection evicted: over 8 connections (--dns-proxy-tcp-max)');
  h.clients.closeAll();
  await h.until(() => h.clients.size === 0 && socks.every((s) => s.closed), 'closeAll frees every one');
});

t.test('a connection in use is not the one closed', async (t) => {
  const h = await harness(t, { perClient: 3, max: 100, idleMs: 60_000 });
  const [a, b, c] = [await h.open(), await h.open(), await h.open()];
  a.write(Buffer.from([0])); // a sent something: b is now the least recently active
  await h.until(() => h.received() === 1, "the proxy read a's byte (not a fixed 50 ms: a loaded machine can take longer)");
  const d = await h.open();
  await h.until(() => !!b.closed, 'b (idle since it opened) was closed');
  t.notOk(a.closed || c.closed || d.closed, 'a, c and d stay');
  t.equal(h.clients.size, 3);
});

t.test('every end takes the connection out of the set', async (t) => {
  // idleMs 2 s, not less: the FIN and RST clients must not go idle first, and a loaded machine can
  // leave this process unscheduled for a few hundred ms between their connect and their close.
  const h = await harness(t, { perClient: 100, max: 100, idleMs: 2000 });
  const fin = await h.open();
  const rst = await h.open();
  t.equal(h.clients.size, 2);
  fin.end(); // the client half-closes: the proxy ends its side too and the socket closes
  await h.until(() => h.clients.size === 1, 'FIN from the client: out');
  rst.resetAndDestroy();
  await h.until(() => h.clients.size === 0, 'RST from the client: out');
  const silent = await h.open(); // connects and never sends
  t.equal(h.clients.size, 1);
  await h.until(() => !!silent.closed && h.clients.size === 0, 'a client that never sends is closed after idleMs');
  t.equal(h.clients.evicted, 0, 'none of these counts as an eviction');
  t.same(
    h.ours.map((c) => h.clients.closedBy(c)),
    [undefined, undefined, 'connection idle for 2 s (--dns-proxy-tcp-idle-timeout)'],
    'closedBy: nothing for the client closing, the idle timeout for the silent one',
  );
  t.equal(h.warns.length, 0);
});
