// The proxy worker's epoll I/O layer (proxy/epoll-*.ts, the default; MEMBRANE_L7_WORKER_IO=libuv for the other) on real loopback
// connections: what l7-raw-socket.test.ts asks of RawSocket (bytes both ways, half-close, closing by
// itself, writes queued while connecting, a refused connection as an error with its errno name, the
// transparent listener's addresses), a write larger than the kernel takes at once arriving whole, and
// that Node's own event loop keeps running beside it (timers, a net.Socket, SIGTERM in a worker-like
// child process) while the epoll loop waits for its sockets.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { EpollListener } from '../src/l7/proxy/epoll-listener.ts';
import { EpollSocket } from '../src/l7/proxy/epoll-socket.ts';
import { pickProxyPort, portFree, transparentListener } from '../src/l7/proxy/sockets.ts';

t.test('an accepted connection: bytes both ways, the client half-closes first, then it closes by itself', async (t) => {
  const events: string[] = [];
  let got = '';
  const clientEnded = new Promise<void>((clientEnd) => {
    const closed = new Promise<void>((resolve) => {
      const listener = EpollListener.bind('127.0.0.1', 0, (s) => {
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
          resolve();
        });
        s.start();
      });
      t.teardown(() => listener.close());
      const c = net.connect({ port: listener.port, host: '127.0.0.1', allowHalfOpen: true });
      c.on('data', (d) => {
        got += d;
        if (got === 'echo:hi') c.end(); // half-close: the server still answers
      });
      c.on('end', () => clientEnd(closed));
      c.write('hi');
    });
  });
  await clientEnded;
  t.equal(got, 'echo:hibye', 'the answer after the half-close arrives, then the FIN');
  t.same(events, ['data:hi', 'end', 'close'], 'closed by itself once both directions ended');
});

t.test('connect(): queued writes and end() go once it is up; 32 MiB each way arrive whole', async (t) => {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    let n = 0;
    s.on('data', (d) => {
      n += d.length;
    });
    s.on('end', () => s.end(Buffer.alloc(n, 1)));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const u = EpollSocket.connect('127.0.0.1', (server.address() as net.AddressInfo).port, 5000);
  const events: string[] = [];
  let answer = 0;
  let drains = 0;
  u.on('connect', () => events.push('connect'));
  u.on('data', (d: Buffer) => {
    answer += d.length;
  });
  u.on('drain', () => drains++);
  u.on('end', () => events.push('end'));
  const closed = new Promise<void>((r) => u.on('close', () => r()));
  t.equal(u.readyState, 'opening');
  const size = 32 * 1024 * 1024;
  t.equal(u.write(Buffer.alloc(size, 2)), false, 'more than the high-water mark queued: wait for drain');
  u.end();
  await closed;
  t.equal(answer, size, 'every byte went and came back');
  t.ok(drains >= 1, "'drain' once the queue went out");
  t.same(events, ['connect', 'end'], 'connected, the answer, the FIN, then closed by itself');
});

t.test('connect() to a port nobody listens on: ECONNREFUSED, then close', async (t) => {
  const probe = net.createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const u = EpollSocket.connect('127.0.0.1', port, 5000);
  const events: string[] = [];
  u.on('connect', () => events.push('connect'));
  u.on('error', (e: Error & { code?: string }) => events.push(`error:${e.code}`));
  await new Promise<void>((r) => u.on('close', () => r()));
  t.same(events, ['error:ECONNREFUSED']);
  t.equal(u.destroyed, true);
});

t.test("Node's loop runs beside the epoll loop: timers and a net.Socket while it waits", async (t) => {
  const listener = EpollListener.bind('127.0.0.1', 0, (s) => {
    s.on('end', () => s.end());
    s.start();
  });
  t.teardown(() => listener.close());
  const idle = net.connect(listener.port, '127.0.0.1'); // the epoll loop has a socket to wait on
  await once(idle, 'connect');
  t.teardown(() => idle.destroy());
  const echo = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1');
  await once(echo, 'listening');
  t.teardown(() => echo.close());
  let ticks = 0;
  await new Promise<void>((resolve) => {
    const iv = setInterval(() => {
      if (++ticks === 5) {
        clearInterval(iv);
        resolve();
      }
    }, 20);
  });
  t.equal(ticks, 5, 'an interval fires');
  const c = net.connect((echo.address() as net.AddressInfo).port, '127.0.0.1');
  c.write('ping');
  const [d] = await once(c, 'data');
  t.equal(String(d), 'ping', 'a net.Socket reads');
  c.destroy();
});

t.test('a worker-like process on the epoll loop stops on SIGTERM', async (t) => {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      '-e',
      `const { EpollListener } = require(${JSON.stringify(path.resolve('shared/src/l7/proxy/epoll-listener.ts'))});
       const l = EpollListener.bind('127.0.0.1', 0, (s) => s.start());
       process.on('SIGTERM', () => { process.stdout.write('term\\n'); process.exit(0); });
       setTimeout(() => process.stdout.write('ready\\n'), 50);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  await new Promise<void>((resolve) =>
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('ready')) resolve();
    }),
  );
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  t.equal(code, 0);
  t.match(out, /ready\nterm\n/, 'the timer ran, then the SIGTERM handler');
});

const root = process.getuid?.() === 0; // IP_TRANSPARENT needs CAP_NET_ADMIN
t.test(
  "the proxy's listener: an accepted connection's addresses are the client's and the one it connected to",
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
      const accepted = new Promise<EpollSocket>((resolve) => {
        const l = EpollListener.fromFd(fd, 16, resolve, () => undefined, family === 4); // as the worker has it
        t.teardown(() => l.close());
      });
      const c = net.connect({ host: server, port, localAddress: client });
      await once(c, 'connect');
      const s = await accepted;
      t.same(
        [s.localAddress, s.localPort, s.remoteAddress, s.remotePort, s.remoteFamily],
        [server, port, client, c.localPort, family === 4 ? 'IPv4' : 'IPv6'],
        `IPv${family}: the client's address and port, the address and port it connected to`,
      );
      s.destroy();
      c.destroy();
    }
  },
);
