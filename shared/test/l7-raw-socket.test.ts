// The proxy workers' RawSocket (proxy/raw-socket.ts) on real loopback connections: what net.Socket
// users rely on and the proxy needs, i.e. bytes both ways, half-close, closing by itself once both
// directions ended (else every connection a client half-closes first would keep its fd), writes
// queued while connecting, a refused connection reported as an error, and the addresses of a
// connection accepted from the proxy's listener (taken from its saved SYN) the same as the socket's.

import { once } from 'node:events';
import net from 'node:net';
import t from 'tap';
import { RawListener } from '../src/l7/proxy/raw-listener.ts';
import { RawSocket } from '../src/l7/proxy/raw-socket.ts';
import { pickProxyPort, portFree, transparentListener } from '../src/l7/proxy/sockets.ts';

t.test('an accepted connection: bytes both ways, the client half-closes first, then it closes by itself', async (t) => {
  const events: string[] = [];
  let closed!: () => void;
  const closedP = new Promise<void>((r) => {
    closed = r;
  });
  const listener = RawListener.bind('127.0.0.1', 0, (s) => {
    t.equal(s.remoteAddress, '127.0.0.1');
    s.on('data', (d: Buffer) => {
      events.push(`data:${d}`);
      s.write(Buffer.from(`echo:${d}`));
    });
    s.on('end', () => {
      events.push('end');
      s.write(Buffer.from('bye'));
      s.end();
    });
    s.on('close', () => {
      events.push('close');
      closed();
    });
    s.start();
  });
  t.teardown(() => listener.close());
  const c = net.connect({ port: listener.port, host: '127.0.0.1', allowHalfOpen: true });
  let got = '';
  c.on('data', (d) => {
    got += d;
    if (got === 'echo:hi') c.end(); // half-close: the server still answers
  });
  c.write('hi');
  await once(c, 'end');
  t.equal(got, 'echo:hibye', 'the answer after the half-close arrives, then the FIN');
  c.end();
  await closedP;
  t.same(events, ['data:hi', 'end', 'close'], 'closed by itself once both directions ended');
});

t.test('connect(): writes and end() before the connection is up are sent once it is, and it reads', async (t) => {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    let got = '';
    s.on('data', (d) => {
      got += d;
    });
    s.on('end', () => s.end(`got:${got}`));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const u = RawSocket.connect('127.0.0.1', (server.address() as net.AddressInfo).port, 5000);
  const events: string[] = [];
  let answer = '';
  u.on('connect', () => events.push('connect'));
  u.on('data', (d: Buffer) => {
    answer += d;
  });
  u.on('end', () => events.push('end'));
  const closed = new Promise<void>((r) => u.on('close', () => r()));
  u.setNoDelay(true);
  t.equal(u.readyState, 'opening');
  u.write(Buffer.from('GET / '));
  u.write(Buffer.from('HTTP/1.1'));
  u.end();
  await closed;
  t.equal(answer, 'got:GET / HTTP/1.1');
  t.same(events, ['connect', 'end'], 'connected, the answer, the FIN, then closed by itself');
});

t.test('connect() to a port nobody listens on: an error, then close', async (t) => {
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const u = RawSocket.connect('127.0.0.1', port, 5000);
  const events: string[] = [];
  u.on('connect', () => events.push('connect'));
  u.on('error', (e: Error) => events.push(`error:${/-111/.test(e.message) ? 'ECONNREFUSED' : e.message}`));
  await new Promise<void>((r) => u.on('close', () => r()));
  t.same(events, ['error:ECONNREFUSED']);
  t.equal(u.destroyed, true);
});

const root = process.getuid?.() === 0; // IP_TRANSPARENT needs CAP_NET_ADMIN
t.test(
  "the proxy's listener: an accepted connection's addresses and ports are the socket's own",
  { skip: !root && 'needs root' },
  async (t) => {
    for (const [family, server, client] of [
      [4, '127.0.0.1', '127.0.0.2'], // IPv4: from the saved SYN
      [6, '::1', '::1'], // IPv6: from getsockname and getpeername
    ] as const) {
      const port = pickProxyPort(portFree);
      let fd: number;
      try {
        fd = transparentListener(family, port);
      } catch (e) {
        if (family === 6) {
          t.comment(`no IPv6 loopback: ${e}`);
          continue;
        }
        throw e;
      }
      const accepted = new Promise<RawSocket>((resolve) => {
        const l = RawListener.fromFd(fd, 16, resolve, () => undefined, family === 4); // as the worker has it
        t.teardown(() => l.close());
      });
      const c = net.connect({ host: server, port, localAddress: client });
      await once(c, 'connect');
      const s = await accepted;
      const local = {},
        remote = {};
      s._handle.getsockname(local);
      s._handle.getpeername(remote);
      t.same(
        [s.localAddress, s.localPort, s.remoteAddress, s.remotePort, s.remoteFamily],
        [server, port, client, c.localPort, family === 4 ? 'IPv4' : 'IPv6'],
        `IPv${family}: the client's address and port, the address and port it connected to`,
      );
      t.same(local, { address: s.localAddress, family: s.remoteFamily, port: s.localPort }, `IPv${family}: as getsockname says`);
      t.same(
        remote,
        { address: s.remoteAddress, family: s.remoteFamily, port: s.remotePort },
        `IPv${family}: as getpeername says`,
      );
      s.destroy();
      c.destroy();
    }
  },
);
