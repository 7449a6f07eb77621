// Attacks around toFQDNs and the DNS rules, with real packets (the setup: lib/dns-fqdn-file.ts):
// another resolver than the policy names, a forged "answer" sent by the pod itself, two queries in
// one TCP stream, a forged answer from the world the proxy never forwarded, and a hostile server the
// client may ask that answers another question or slips in an address of another name.
import t from 'tap';
import { spawn } from 'node:child_process';
import * as packet from 'dns-packet';
import fs from 'node:fs';
import path from 'node:path';
import { ip4, REPO } from './lib/agent.ts';
import { probe } from './lib/probe.ts';
import { resolveAndConnect, startDnsmasq } from './lib/dns.ts';
import { dnsFqdnForFile, nodeIn, until } from './lib/dns-fqdn-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

// The per-client TCP limit set by its flag (default 64), so the flood test below checks the flag.
const PER_CLIENT = 8;
const f = dnsFqdnForFile(t, { agentArgs: ['--dns-proxy-tcp-max-per-client', `${PER_CLIENT}`] });

t.test('attacks around the DNS rules, with real packets', async (t) => {
  const { world, W, eps, nsOf, children, tmp, hosts, cacheList } = f;
  // Another real server: answers the bystander, and the client is dropped on the way there, UDP and TCP.
  const second = await startDnsmasq(world, fs.mkdtempSync(path.join(tmp, 'dns2-')), W.dns2, { hosts: hosts(W.spoof), ttl: 300 });
  children.push(second.child);
  t.same(
    (await resolveAndConnect(nsOf.bystander, W.dns2, 'api.test.internal', 0)).ips,
    [W.spoof],
    'the second server answers (a pod without policy asks it)',
  );
  t.equal(
    (await resolveAndConnect(nsOf.client, W.dns2, 'api.test.internal', 0)).error,
    'ETIMEOUT',
    'the client resolving through a server its policy does not name: dropped',
  );
  t.equal((await resolveAndConnect(nsOf.client, W.dns2, 'api.test.internal', 0, { tcp: true })).error, 'timeout', 'over TCP too');
  t.notOk(
    (await cacheList()).some((e) => e.ip === W.spoof),
    'nothing learned from it',
  );
  t.equal(await probe(nsOf.client, W.spoof, 80), 'timeout', 'and its answer opens nothing');

  // Two queries in one TCP stream: an allowed name, then a refused one. Each is judged on its own.
  const pipelined = JSON.parse(
    await nodeIn(
      nsOf.client,
      `
    const p = require('dns-packet'), net = require('net');
    const s = net.connect(53, '${W.dns}');
    const q = (id, name) => p.streamEncode({ type: 'query', id, flags: p.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
    s.on('connect', () => s.write(Buffer.concat([q(1, 'api.test.internal'), q(2, 'evil.example')])));
    let buf = Buffer.alloc(0); const got = {};
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const r = p.decode(buf.subarray(2, 2 + buf.readUInt16BE(0))); buf = buf.subarray(2 + buf.readUInt16BE(0));
        got[r.id] = { rcode: r.flags & 15, ips: r.answers.map((a) => a.data) };
      }
      if (got[1] && got[2]) { process.stdout.write(JSON.stringify(got)); process.exit(0); }
    });
    setTimeout(() => { process.stdout.write(JSON.stringify(got)); process.exit(0); }, 4000);`,
    ),
  ) as Record<string, { rcode: number; ips: string[] }>;
  t.same(pipelined['1'], { rcode: 0, ips: [W.api] }, 'TCP: the allowed first query is answered');
  t.same(pipelined['2'], { rcode: 5, ips: [] }, 'TCP: the refused name behind it in the same stream gets REFUSED, no address');

  // Queries the proxy would judge as another name than the server resolves (the one label "api.test"
  // under "internal" reads as api.test.internal), or with a second question it would not judge:
  // FORMERR, the proxy's own answer (forwarded, dnsmasq answers them REFUSED).
  const odd = JSON.parse(
    await nodeIn(
      nsOf.client,
      `
    const dgram = require('dgram');
    const label = (l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]);
    const q = (id, labels, qd, extra) => Buffer.concat([Buffer.from([0, id, 1, 0, 0, qd, 0, 0, 0, 0, 0, 0]), ...labels.map(label), Buffer.from([0, 0, 1, 0, 1]), extra]);
    const s = dgram.createSocket('udp4'); const got = {};
    s.on('message', (m) => {
      got[m.readUInt16BE(0)] = m[3] & 15;
      if (got[1] !== undefined && got[2] !== undefined) { process.stdout.write(JSON.stringify(got)); process.exit(0); }
    });
    s.send(q(1, ['api.test', 'internal'], 1, Buffer.alloc(0)), 53, '${W.dns}');
    s.send(q(2, ['api', 'test', 'internal'], 2, Buffer.concat([label('evil'), label('example'), Buffer.from([0, 0, 1, 0, 1])])), 53, '${W.dns}');
    setTimeout(() => { process.stdout.write(JSON.stringify(got)); process.exit(0); }, 4000);`,
    ),
  ) as Record<string, number>;
  t.same(odd, { 1: 1, 2: 1 }, 'a dot inside a label, and two questions: FORMERR from the proxy');

  // A forged answer from the world, sent from the server's address and port straight to the pod (no
  // query behind it): the pod receives it, but the agent learns only from answers its proxy forwarded.
  const listener = spawn(
    'nsenter',
    [
      `--net=${nsOf.client.path}`,
      process.execPath,
      '-e',
      `
    const s = require('dgram').createSocket('udp4');
    s.on('message', (m, r) => { process.stdout.write('got ' + r.address + ':' + r.port + ' ' + m.length + '\\n'); process.exit(0); });
    s.bind(40053, () => process.stdout.write('ready\\n'));
    setTimeout(() => { process.stdout.write('nothing\\n'); process.exit(0); }, 8000);`,
    ],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  let heard = '';
  listener.stdout.on('data', (d: Buffer) => {
    heard += d.toString();
  });
  await until('the pod listener', async () => (heard.includes('ready') ? true : undefined), 10_000);
  const forged = packet.encode({
    type: 'response',
    id: 4242,
    flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE,
    questions: [{ type: 'A', name: 'www.pattern.test' }],
    answers: [{ type: 'A', name: 'www.pattern.test', ttl: 300, data: W.spoof }],
  });
  await world.exec('python3', [
    '-c',
    `import socket,struct,sys
p=bytes.fromhex(sys.argv[3])
s=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.bind((sys.argv[1],0))
s.sendto(struct.pack('!HHHH',53,40053,8+len(p),0)+p,(sys.argv[2],0))`,
    W.dns,
    ip4(eps.client),
    forged.toString('hex'),
  ]);
  await until('the pod to hear the forged answer', async () => (/got|nothing/.test(heard) ? true : undefined), 10_000);
  t.match(heard, `got ${W.dns}:53`, 'the forged answer reached the pod as if from the server');
  t.notOk(
    (await cacheList()).some((e) => e.ip === W.spoof),
    'an answer the proxy did not forward teaches nothing',
  );
  t.equal(await probe(nsOf.client, W.spoof, 80), 'timeout', 'so the forged address of an allowed name stays closed');
  second.stop();
});

// A hostile server the client may ask (its DNS rules allow the names): it answers another question
// than the one asked, or slips an address of another name into a right answer.
const HOSTILE_SERVER = `
const p = require('dns-packet'), dgram = require('dgram'), net = require('net');
const [ip, spoof, legit] = process.argv.slice(1);
const answer = (q) => {
  const name = q.questions[0].name;
  const swap = name.startsWith('swap.');
  return p.encode({ type: 'response', id: q.id, flags: p.RECURSION_DESIRED | p.RECURSION_AVAILABLE,
    questions: [{ type: 'A', name: swap ? 'www.pattern.test' : name }],
    answers: swap ? [{ type: 'A', name: 'www.pattern.test', ttl: 2, data: spoof }]
      : [{ type: 'A', name, ttl: 2, data: legit }, { type: 'A', name: 'www.pattern.test', ttl: 2, data: spoof }] });
};
const u = dgram.createSocket('udp4');
u.on('message', (m, r) => u.send(answer(p.decode(m)), r.port, r.address));
u.bind(53, ip);
net.createServer((c) => { let b = Buffer.alloc(0); c.on('data', (d) => { b = Buffer.concat([b, d]);
  while (b.length >= 2 && b.length >= 2 + b.readUInt16BE(0)) { const m = b.subarray(2, 2 + b.readUInt16BE(0)); b = b.subarray(2 + m.length); c.write(p.streamEncode(p.decode(answer(p.decode(m))))); } });
  c.on('error', () => {}); }).listen(53, ip, () => process.stdout.write('ready\\n'));
`;

t.test('a hostile server: an answer to another question, an address of another name', async (t) => {
  const { world, W, nsOf, children, cacheList } = f;
  const hostile = spawn('nsenter', [`--net=${world.path}`, process.execPath, '-e', HOSTILE_SERVER, W.evilDns, W.spoof, W.api], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(hostile);
  let ready = '';
  hostile.stdout!.on('data', (d: Buffer) => {
    ready += d.toString();
  });
  await until('the hostile server', async () => (ready.includes('ready') ? true : undefined), 10_000);
  const swapped = await resolveAndConnect(nsOf.client, W.evilDns, 'swap.test.internal', 0);
  t.ok(swapped.error, `UDP: an answer naming another question is not passed on (${swapped.error})`);
  const swappedTcp = await resolveAndConnect(nsOf.client, W.evilDns, 'swap.test.internal', 0, { tcp: true });
  t.equal(swappedTcp.error, 'SERVFAIL', 'TCP: SERVFAIL');
  const slipped = await resolveAndConnect(nsOf.client, W.evilDns, 'api.test.internal', 80);
  t.same(
    [slipped.ips, slipped.connect],
    [[W.api, W.spoof], 'ok'],
    'a right answer passes unchanged (with the slipped-in record) and its address opens',
  );
  t.notOk(
    (await cacheList()).some((e) => e.ip === W.spoof),
    'nothing learned for www.pattern.test from either',
  );
  t.equal(
    await probe(nsOf.client, W.spoof, 80),
    'timeout',
    'the address the server slipped in, which the pod was given, stays closed',
  );
  hostile.kill('SIGKILL');
});

// A client that sends its queries and closes its side (a TCP half-close) still gets its answers,
// then the proxy closes the connection.
t.test('TCP: queries sent before a half-close are answered', async (t) => {
  const { W, nsOf } = f;
  const got = JSON.parse(
    await nodeIn(
      nsOf.client,
      `
    const p = require('dns-packet'), net = require('net');
    const s = net.connect(53, '${W.dns}');
    const q = (id, name) => p.streamEncode({ type: 'query', id, flags: p.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
    s.on('connect', () => s.end(Buffer.concat([q(1, 'api.test.internal'), q(2, 'evil.example')])));
    let buf = Buffer.alloc(0); const got = {};
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const r = p.decode(buf.subarray(2, 2 + buf.readUInt16BE(0))); buf = buf.subarray(2 + buf.readUInt16BE(0));
        got[r.id] = { rcode: r.flags & 15, ips: r.answers.map((a) => a.data) };
      }
    });
    s.on('error', (e) => { got.error = e.code; });
    s.on('close', () => { process.stdout.write(JSON.stringify(got)); process.exit(0); });
    setTimeout(() => { got.open = true; process.stdout.write(JSON.stringify(got)); process.exit(0); }, 8000);`,
    ),
  ) as Record<string, unknown>;
  t.same(
    got,
    { 1: { rcode: 0, ips: [W.api] }, 2: { rcode: 5, ips: [] } },
    'the allowed name answered, the refused one REFUSED, then the proxy closed',
  );
});

// A pod opening many TCP connections to its resolver and never sending: the proxy keeps at most
// --dns-proxy-tcp-max-per-client of one client's open (dns/tcp-clients.ts), closing the oldest, and
// frees them all when it goes.
const OPENED = PER_CLIENT + 4;
t.test('a pod opening 12 idle TCP connections to the DNS proxy: 8 (its flag) stay open, 4 are closed', async (t) => {
  const { W, nsOf, agent } = f;
  type Conns = { open: number; evicted: number };
  const conns = async () => ((await agent.client.status()) as { dns?: { tcpConnections?: Conns } }).dns?.tcpConnections;
  const before = await until('the DNS proxy status', conns);
  const held = nodeIn(
    nsOf.client,
    `
    const net = require('net');
    let connected = 0, closed = 0;
    for (let i = 0; i < ${OPENED}; i++) {
      const s = net.connect(53, '${W.dns}');
      s.on('connect', () => connected++);
      s.on('close', () => closed++);
      s.on('error', () => {});
    }
    setTimeout(() => { process.stdout.write(JSON.stringify({ connected, closed })); process.exit(0); }, 6000);`,
  );
  const during = await until('the proxy to have closed 4 connections', async () => {
    const c = await conns();
    return c && c.evicted - before.evicted >= 4 ? c : undefined;
  });
  t.ok(during.open <= PER_CLIENT, `at most ${PER_CLIENT} open in the proxy (${during.open})`);
  t.same(
    JSON.parse(await held),
    { connected: OPENED, closed: 4 },
    `all ${OPENED} were accepted; 4 were closed by the proxy (the oldest: dns-tcp-clients.test.ts)`,
  );
  t.equal((await conns())!.evicted - before.evicted, 4, 'exactly 4 closed to stay within the limit');
  await until('every connection gone from the proxy once the pod closed them', async () =>
    (await conns())?.open === 0 ? true : undefined,
  );
  t.pass('all freed');
});
