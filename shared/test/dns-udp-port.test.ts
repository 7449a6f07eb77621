// udpPortFree (dns/udp-port.ts), the agent's start-time check of the DNS proxy's UDP port: a port
// with a UDP socket on a loopback address or the wildcard is taken, also when that socket is another
// DNS proxy's (SO_REUSEADDR and SO_REUSEPORT set), and the check itself takes no datagram sent to the
// port while it runs.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { HOST_LITTLE_ENDIAN } from '../src/net/index.ts';
import { addressesOnPort, udpPortFree } from '../src/dns/udp-port.ts';
import { transparentUdpSocket } from '../src/l7/proxy/sockets.ts';

const root = process.getuid?.() === 0; // IP_TRANSPARENT needs CAP_NET_ADMIN

t.test(
  'the tables are read in host byte order',
  { skip: !HOST_LITTLE_ENDIAN && 'sample from a little-endian host' },
  async (t) => {
    const udp = [
      '   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
      '14056: 0100007F:7257 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 127072179 2 0000000070a2a312 0',
      '  201: 00000000:7257 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 127072180 2 0000000070a2a313 0',
      '  202: 0100007F:7258 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 127072181 2 0000000070a2a314 0',
    ].join('\n');
    t.same(addressesOnPort(udp, 0x7257), ['127.0.0.1', '0.0.0.0']);
    const udp6 = [
      '  sl  local_address                         remote_address                        st tx_queue rx_queue',
      '14056: 00000000000000000000000001000000:7257 00000000000000000000000000000000:0000 07 00000000:00000000',
      '  300: 0000000000000000FFFF00000100007F:7257 00000000000000000000000000000000:0000 07 00000000:00000000',
    ].join('\n');
    t.same(addressesOnPort(udp6, 0x7257), ['::1', '::ffff:7f00:1']);
  },
);

/** A port in the proxies' range with no UDP socket on it just now. */
function unusedPort(): number {
  for (;;) {
    const port = 10000 + Math.floor(Math.random() * 20000);
    if (udpPortFree(port)) return port;
  }
}

async function bound(t: Test, ip: string, port: number, fd?: number): Promise<dgram.Socket> {
  const s = dgram.createSocket({ type: ip.includes(':') ? 'udp6' : 'udp4', ipv6Only: ip === '::' ? false : undefined });
  await new Promise<void>((resolve) => (fd === undefined ? s.bind(port, ip, resolve) : s.bind({ fd }, resolve)));
  t.teardown(() => new Promise<void>((r) => s.close(() => r())).catch(() => {}));
  return s;
}

t.test('taken while a socket is on it, free again once it closes', { skip: !root && 'needs root' }, async (t) => {
  for (const ip of ['127.0.0.1', '::1', '0.0.0.0', '::']) {
    const port = unusedPort();
    const s = await bound(t, ip, port);
    t.equal(udpPortFree(port), false, `a socket on ${ip} takes it`);
    await new Promise<void>((r) => s.close(() => r()));
    t.equal(udpPortFree(port), true, `free after the socket on ${ip} closed`);
  }
  // Another agent's DNS proxy socket: transparent, SO_REUSEADDR and SO_REUSEPORT. A probe bound with
  // SO_REUSEADDR would have bound next to it and called the port free.
  const port = unusedPort();
  const s = await bound(t, '127.0.0.1', port, transparentUdpSocket('127.0.0.1', port, { reusePort: true }));
  t.equal(udpPortFree(port), false, "another DNS proxy's socket takes it");
  await new Promise<void>((r) => s.close(() => r()));
  t.equal(udpPortFree(port), true, 'free after it closed');
});

t.test('no datagram sent to the port is lost while the check runs', { skip: !root && 'needs root' }, async (t) => {
  // A DNS proxy's socket on the port echoes every datagram; a client process sends 3,000 (8 waiting
  // for their echo at a time) while the check runs in a loop here, sends again any whose echo has not
  // come after 500 ms (so a lost one cannot stall it), and reports how many it sent in all. A check
  // that binds a socket to the port takes some of them, which it then drops: fewer arrive than left.
  const port = unusedPort();
  const proxy = await bound(t, '127.0.0.1', port, transparentUdpSocket('127.0.0.1', port, { reusePort: true }));
  let received = 0;
  let drained: () => void = () => {};
  proxy.on('message', (m, r) => {
    if (String(m) === 'last') return drained();
    received++;
    proxy.send(m, r.port, r.address);
  });
  const client = spawn(
    process.execPath,
    [
      '-e',
      `const s = require('dgram').createSocket('udp4'); const sentAt = new Map(); let next = 0, sent = 0;
       const send = (i) => { sentAt.set(i, Date.now()); sent++; s.send(String(i), ${port}, '127.0.0.1'); };
       const fill = () => { while (sentAt.size < 8 && next < 3000) send(next++); if (sentAt.size === 0) done(); };
       const done = () => { clearInterval(resend); console.log(JSON.stringify({ sent })); s.close(); };
       s.on('message', (m) => { sentAt.delete(Number(String(m))); fill(); });
       const resend = setInterval(() => { for (const [i, at] of sentAt) if (Date.now() - at > 500) send(i); }, 100);
       s.bind(0, '127.0.0.1', fill);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  client.stdout.on('data', (d: Buffer) => (out += d));
  let running = true;
  let checks = 0;
  let free = 0;
  const exited = new Promise<void>((resolve) => client.on('exit', () => resolve()));
  client.on('exit', () => (running = false));
  await new Promise<void>((resolve) => {
    const loop = () => {
      for (let i = 0; i < 100; i++, checks++) if (udpPortFree(port)) free++;
      if (running) setImmediate(loop);
      else resolve();
    };
    loop();
  });
  await exited;
  // The socket's queue is in order: once this one is read, every datagram the client sent has been.
  const marker = await bound(t, '127.0.0.1', 0);
  await new Promise<void>((resolve) => {
    drained = resolve;
    marker.send('last', port, '127.0.0.1');
  });
  t.ok(checks > 0, `${checks} checks ran`);
  t.equal(free, 0, 'each found the port taken');
  const { sent } = JSON.parse(out) as { sent: number };
  t.ok(sent >= 3000, `${sent} datagrams sent`);
  t.equal(received, sent, 'every one arrived at the proxy');
});
