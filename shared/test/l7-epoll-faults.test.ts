// The proxy worker's epoll I/O layer (proxy/epoll-*.ts) when things go wrong, in a child process on
// real loopback connections: out of fds (its RLIMIT_NOFILE used up), the listener pauses instead of
// spinning and accepts what waited once fds free up, and a connect fails as an 'error' naming EMFILE
// (the worker answers 503) instead of throwing; a listener that throws closes its connection (no fd
// left behind) and the loop goes on serving the others.

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { pollUntil } from './lib/poll.ts';

const requires = `const fs = require('node:fs');
const { EpollListener } = require(${JSON.stringify(path.resolve('shared/src/l7/proxy/epoll-listener.ts'))});
const { EpollSocket } = require(${JSON.stringify(path.resolve('shared/src/l7/proxy/epoll-socket.ts'))});
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
`;

/** Echoes what each connection sends; on "fill" it uses every fd up (/dev/null opened until EMFILE)
 *  and tries a connect, so the connections the parent opens next wait; on "measure" it fills again
 *  (Node closes a few fds of its own meanwhile) and reports its CPU over 1 s and what it accepted, on
 *  "free" it closes the /dev/null fds. Until "free" it keeps each accepted connection open after the
 *  client's end: one fd freed by something else (it happens under a suite's load) then lets in one
 *  connection, not the whole backlog one after another. */
const EMFILE_CHILD = `${requires}
const accepted = [];
const l = EpollListener.bind('127.0.0.1', 0, (s) => {
  accepted.push(s);
  s.on('data', (d) => s.write(d));
  s.on('end', () => (held.length ? ended.push(s) : s.end()));
  s.start();
});
const held = [];
const ended = [];
out({ port: l.port });
let buf = '';
process.stdin.on('data', (d) => {
  buf += d;
  if (buf.includes('fill\\n')) {
    buf = '';
    for (;;) { try { held.push(fs.openSync('/dev/null', 'r')); } catch { break; } }
    const u = EpollSocket.connect('127.0.0.1', l.port, 5000);
    u.on('error', (e) => out({ connectError: e.code, message: e.message }));
  }
  if (buf.includes('measure\\n')) {
    buf = '';
    for (;;) { try { held.push(fs.openSync('/dev/null', 'r')); } catch { break; } } // what Node closed since
    const c0 = process.cpuUsage();
    const w0 = performance.now();
    setTimeout(() => {
      const c = process.cpuUsage(c0);
      out({ cpuShare: (c.user + c.system) / 1000 / (performance.now() - w0), after: accepted.length });
    }, 1000);
  }
  if (buf.includes('free\\n')) {
    for (const fd of held.splice(0)) fs.closeSync(fd);
    for (const s of ended.splice(0)) s.end();
  }
});
`;

/** Echoes on `port`, except that "boom" makes its 'data' listener throw; the connection callback of
 *  `port2` throws. Reports uncaught exceptions and goes on, as a process with such a handler does. */
const THROW_CHILD = `${requires}
process.on('uncaughtException', (e) => out({ uncaught: e.message }));
const l = EpollListener.bind('127.0.0.1', 0, (s) => {
  s.on('data', (d) => {
    if (String(d) === 'boom') throw new Error('boom from a data listener');
    s.write(d);
  });
  s.on('end', () => s.end());
  s.start();
});
const l2 = EpollListener.bind('127.0.0.1', 0, () => { throw new Error('boom from a connection listener'); });
out({ port: l.port, port2: l2.port });
setInterval(() => undefined, 1000); // alive after the throw, as a worker is (its control connection)
`;

function child(
  t: { teardown(fn: () => void): void; comment(m: string): void },
  script: string,
  prefix: string[] = [],
): ChildProcessWithoutNullStreams {
  const [cmd, ...args] = [...prefix, process.execPath, '--import', 'tsx', '-e', script];
  const c = spawn(cmd, args, { stdio: 'pipe' });
  t.teardown(() => c.kill('SIGKILL'));
  c.stderr.on('data', (d) => t.comment(String(d)));
  return c;
}

/** The child's next JSON line that has `key`. */
function line(c: ChildProcessWithoutNullStreams, key: string): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    let buf = '';
    const on = (d: Buffer) => {
      buf += d;
      for (const l of buf.split('\n').slice(0, -1)) {
        const o = JSON.parse(l) as Record<string, unknown>;
        if (key in o) {
          c.stdout.off('data', on);
          resolve(o);
          return;
        }
      }
    };
    c.stdout.on('data', on);
  });
}

/** Connects to port, sends `msg`: connected once the kernel completed it (accepted or in the backlog),
 *  done with what came back once the connection closed. */
function exchange(port: number, msg: string, closeAfter?: string): { connected: Promise<number>; done: Promise<string> } {
  const c = net.connect(port, '127.0.0.1', () => c.write(msg));
  const connected = new Promise<number>((resolve) => c.on('connect', () => resolve(c.localPort!)));
  const done = new Promise<string>((resolve) => {
    let got = '';
    c.on('data', (d) => {
      got += d;
      if (got === closeAfter) c.end();
    });
    c.on('error', () => undefined);
    c.on('close', () => resolve(got));
  });
  return { connected, done };
}

t.test('out of fds: connect fails with EMFILE, the listener waits without spinning, then accepts', async (t) => {
  const c = child(t, EMFILE_CHILD, ['prlimit', '--nofile=256:']);
  const { port } = (await line(c, 'port')) as { port: number };
  const err = line(c, 'connectError');
  c.stdin.write('fill\n');
  t.match(await err, { connectError: 'EMFILE', message: /EMFILE \(socket\)/ }, "an 'error' naming the call, not a throw");
  // Node closes a few fds of its own now and then (6 in one measured second); each lets in one
  // connection, which the child holds (see EMFILE_CHILD).
  const sent = Array.from({ length: 40 }, (_, i) => `hi${i}`);
  const clients = sent.map((msg) => exchange(port, msg, msg));
  await Promise.all(clients.map((x) => x.connected)); // in the backlog: the listener is readable
  const measured = line(c, 'cpuShare');
  c.stdin.write('measure\n');
  const m = (await measured) as { cpuShare: number; after: number };
  t.ok(m.after < clients.length, `connections still wait after that second (${clients.length - m.after} of ${clients.length})`);
  t.ok(m.cpuShare < 0.2, `the loop does not spin while they wait (${(m.cpuShare * 100).toFixed(0)}% of a CPU)`);
  c.stdin.write('free\n');
  t.same(await Promise.all(clients.map((x) => x.done)), sent, 'once fds are free, the waiting connections are served');
});

t.test('a listener that throws: its connection is closed, no fd is left (a data and a connection listener)', async (t) => {
  const c = child(t, THROW_CHILD);
  const { port } = (await line(c, 'port')) as { port: number };
  // Whether the child still has an fd of its end of the connection from `clientPort` (/proc/net/tcp
  // lists the socket's inode while some process holds it).
  const holds = (clientPort: number, serverPort = port, pid = c.pid) => {
    const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');
    const row = fs
      .readFileSync('/proc/net/tcp', 'utf8')
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .find((f) => f[1]?.endsWith(`:${hex(serverPort)}`) && f[2]?.endsWith(`:${hex(clientPort)}`));
    if (!row || row[9] === '0') return false;
    return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === `socket:[${row[9]}]`;
      } catch {
        return false; // closed meanwhile
      }
    });
  };
  const first = exchange(port, 'first', 'first');
  const firstPort = await first.connected;
  t.equal(await first.done, 'first', 'served');
  t.ok(await pollUntil(() => !holds(firstPort)), 'and closed');
  const uncaught = line(c, 'uncaught');
  const boom = exchange(port, 'boom');
  const boomPort = await boom.connected;
  t.equal(await boom.done, '', 'the connection whose listener threw is closed');
  t.same(await uncaught, { uncaught: 'boom from a data listener' }, 'and the exception reached the process');
  t.ok(await pollUntil(() => !holds(boomPort)), 'its fd is closed');
  c.kill('SIGKILL'); // a fresh one for the next
  const c2 = child(t, THROW_CHILD);
  const { port2 } = (await line(c2, 'port')) as { port2: number };
  const uncaught2 = line(c2, 'uncaught');
  const accepted = exchange(port2, 'hi');
  const acceptedPort = await accepted.connected;
  t.equal(await accepted.done, '', "a connection whose listener's connection callback threw is closed");
  t.same(await uncaught2, { uncaught: 'boom from a connection listener' }, 'that exception reached the process too');
  t.ok(await pollUntil(() => !holds(acceptedPort, port2, c2.pid)), 'and its fd is closed');
});

// epoll-loop.ts's run() schedules itself again in a finally: without it, after the throw it never
// polled again (a worker would hang with its connections; its uncaughtException handler exits instead).
t.test('after a listener threw, the loop serves the next connection', async (t) => {
  const c = child(t, THROW_CHILD);
  const { port } = (await line(c, 'port')) as { port: number };
  const uncaught = line(c, 'uncaught');
  t.equal(await exchange(port, 'boom').done, '', 'the connection whose listener threw is closed');
  await uncaught;
  t.equal(await exchange(port, 'after', 'after').done, 'after', 'the next connection is served');
});
