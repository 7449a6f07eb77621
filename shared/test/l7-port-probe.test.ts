// portFree (l7/proxy/sockets.ts), the check the agent makes at start for the L7 and DNS proxy ports:
// a port someone listens on (either loopback address, the wildcard, another agent's SO_REUSEPORT
// proxy listener) is taken, a port nobody listens on is free, and the check itself never listens, so
// a connection arriving while it runs (a diverted SYN) is refused, never accepted and then reset.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { closeFd, portFree, transparentListener } from '../src/l7/proxy/sockets.ts';

const root = process.getuid?.() === 0; // IP_TRANSPARENT needs CAP_NET_ADMIN

/** A port in the proxies' range that a listener could take just now (so nobody listens there). */
async function unusedPort(): Promise<number> {
  for (;;) {
    const port = 10000 + Math.floor(Math.random() * 20000);
    const s = net.createServer();
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) {
      await new Promise((r) => s.close(r));
      return port;
    }
  }
}

async function listening(host: string, port: number, t: Test): Promise<net.Server> {
  const s = net.createServer((c) => c.destroy());
  s.listen({ port, host, ipv6Only: host === '::' ? false : undefined });
  await once(s, 'listening');
  t.teardown(() => new Promise((r) => s.close(r)));
  return s;
}

t.test('taken while someone listens on it, free again once they stop', { skip: !root && 'needs root' }, async (t) => {
  for (const host of ['127.0.0.1', '::1', '0.0.0.0', '::']) {
    const port = await unusedPort();
    t.equal(portFree(port), true, `${port} free before`);
    const s = await listening(host, port, t);
    t.equal(portFree(port), false, `a listener on ${host} takes it`);
    await new Promise((r) => s.close(r));
    t.equal(portFree(port), true, `free after ${host}'s listener closed`);
  }
  // Another agent's proxy worker: transparent, SO_REUSEPORT; the probe must not join its group.
  const port = await unusedPort();
  const fd = transparentListener(4, port);
  t.equal(portFree(port), false, "another proxy's SO_REUSEPORT listener takes it");
  closeFd(fd);
  t.equal(portFree(port), true, 'free after it closed');
});

t.test('no connection is accepted while the check runs', { skip: !root && 'needs root' }, async (t) => {
  const port = await unusedPort();
  // A client connecting over and over (8 at a time, 3,000 attempts in all) while the check runs in
  // a loop; it reports how many connections were established. A check that listens, even for a
  // moment, accepts some of them (34 of 1,117 attempts in 3 s when measured, load 6).
  const client = spawn(
    process.execPath,
    [
      '-e',
      `const net = require('net'); let left = 3000, ok = 0, busy = 0;
       function go() {
         if (left === 0) { if (busy === 0) console.log(JSON.stringify({ ok })); return; }
         left--; busy++;
         const s = net.connect(${port}, '127.0.0.1');
         s.on('connect', () => { ok++; s.destroy(); });
         s.on('close', () => { busy--; go(); });
         s.on('error', () => {});
       }
       for (let i = 0; i < 8; i++) go();`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  client.stdout.on('data', (d: Buffer) => (out += d));
  let running = true;
  let checks = 0;
  let taken = 0;
  client.on('exit', () => (running = false));
  await new Promise<void>((resolve) => {
    const loop = () => {
      for (let i = 0; i < 100; i++, checks++) if (!portFree(port)) taken++;
      if (running) setImmediate(loop);
      else resolve();
    };
    loop();
  });
  t.ok(checks > 0, `${checks} checks ran`);
  t.equal(taken, 0, 'each found the port free');
  t.same(JSON.parse(out), { ok: 0 }, 'every connection refused');
});
