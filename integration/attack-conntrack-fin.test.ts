// Attacks on the end of a connection with real TCP stacks and real packets (root): the conntrack entry
// of a pod-to-pod connection ends only once both FINs are acknowledged (bpf/lib/ct.h), and what comes
// after must meet the policy again. C's ingress is closed; C connects to D (its egress is open), and D,
// the side whose packets pass only as replies, tries to keep talking to C after the connection ended:
// after a real close, after a RST, and on a half-closed connection that a policy change denies. Each
// forged frame is sniffed for on C's eth0; it must never arrive.
import t from 'tap';
import { PROTO, TCP_FLAGS, tcp } from '../shared/src/bpf/packets.ts';
import type { CtDetail } from '../shared/src/maps/conntrack.ts';
import { castOf, closedIngress, frame4, reasonName, waitFor } from './lib/attack-pods.ts';
import { sendFrames, sniff } from './lib/raw.ts';
import { untilListening } from './lib/tcp.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['c', 'd']);
const marker = (what: string) => Buffer.from(`${what}-${Math.random().toString(36).slice(2)}`);
const seen = (frames: { frame: Buffer }[], m: Buffer) => frames.some((f) => f.frame.includes(m));
const DENIED = reasonName(133);
let nextPort = 20000 + Math.floor(Math.random() * 20000);

/** The conntrack entries of C's connection from `cport` to D:`dport`. */
const entries = async (cport: number, dport: number) =>
  (await cast.agent.client.request<{ entries: CtDetail[] }>('GET', '/v1/bpf/ct')).entries.filter(
    (e) => e.proto === PROTO.TCP && e.sport === cport && e.dport === dport,
  );

// D: a server on argv[1] that answers what the script says once C's side is done (EOF).
const SERVER = (after: string) =>
  `import socket,sys,time
l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);l.bind(("0.0.0.0",int(sys.argv[1])));l.listen(1)
print("listening",flush=True)
s,_=l.accept()
while s.recv(100):pass
${after}`;

// C: connects from argv[2] to D argv[1]:argv[3], sends, closes its side, prints what it reads.
const CLIENT = `import socket,sys
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(("0.0.0.0",int(sys.argv[2])))
s.settimeout(30);s.connect((sys.argv[1],int(sys.argv[3])));s.sendall(b"hi");s.shutdown(socket.SHUT_WR)
while True:
  d=s.recv(100)
  if not d:break
  print(d.decode(),flush=True)
print("eof",flush=True)`;

function spawnPy(pod: 'c' | 'd', script: string, ...args: (string | number)[]) {
  const child = cast.pods[pod].ns.spawn('python3', ['-c', script, ...args.map(String)]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return { child, out: () => out };
}

/** D's frames to C on the tuple of C's connection cport -> D:dport, each carrying `m`. */
const fromD = (cport: number, dport: number, m: Buffer) => {
  const { c, d } = cast.pods;
  const seg = (flags: number) =>
    frame4(d, { dst: c.ip4, proto: PROTO.TCP }, Buffer.concat([tcp(dport, cport, flags, 5000, 5000), m]));
  return [seg(TCP_FLAGS.ACK | TCP_FLAGS.PSH), seg(TCP_FLAGS.FIN | TCP_FLAGS.ACK), seg(TCP_FLAGS.SYN | TCP_FLAGS.ACK)];
};

t.test('after a real close the entry is gone; the responder cannot send on the old tuple', async (t) => {
  const { c, d } = cast.pods;
  t.teardown(() => cast.pc.delete('all'));
  await cast.pc.import(closedIngress('c'));
  const dport = nextPort++,
    cport = nextPort++;
  const server = spawnPy('d', SERVER('s.sendall(b"BYE");s.close()'), dport);
  await untilListening(server.child, "D's server", 30_000);
  const client = spawnPy('c', CLIENT, d.ip4, cport, dport);
  await waitFor('the client to finish', async () => (client.out().includes('eof') ? true : undefined), 30_000);
  t.match(client.out(), /BYE/, "D's answer and FIN reached C through its closed ingress (replies)");
  // The last ACK ends the entry at once: nothing stays CLOSING until it expires.
  const left = await waitFor(
    'the entry to go',
    async () => ((await entries(cport, dport)).length === 0 ? true : undefined),
    5000,
  ).catch(async () => entries(cport, dport));
  t.equal(left, true, 'both FINs acknowledged: no conntrack entry left');

  const before = await cast.drops();
  const m = marker('AFTERCLOSE');
  const cap = await sniff(c.ns, 60);
  await sendFrames(d.ns, fromD(cport, dport, m));
  const after = await cast.dropsReaching(before, { [DENIED]: 3 });
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(seen(await cap.stop(), m), 'no data, FIN or SYN-ACK of D on the closed tuple reaches C');
  t.ok((after[DENIED] ?? 0) - (before[DENIED] ?? 0) >= 3, `each dropped by policy (${DENIED})`);
});

t.test('a RST ends the entry: what the responder sends after it meets the closed ingress', async (t) => {
  const { c, d } = cast.pods;
  t.teardown(() => cast.pc.delete('all'));
  await cast.pc.import(closedIngress('c'));
  const dport = nextPort++,
    cport = nextPort++;
  // D keeps the connection open (answers nothing) until killed.
  const server = spawnPy('d', SERVER('time.sleep(60)'), dport);
  await untilListening(server.child, "D's server", 30_000);
  spawnPy('c', CLIENT, d.ip4, cport, dport);
  await waitFor('the connection in conntrack', async () => ((await entries(cport, dport)).length ? true : undefined), 30_000);
  // A RST of D's (any sequence number: the datapath does not judge the window) ends the entry.
  await sendFrames(d.ns, [frame4(d, { dst: c.ip4, proto: PROTO.TCP }, tcp(dport, cport, TCP_FLAGS.RST | TCP_FLAGS.ACK, 1, 1))]);
  t.equal(
    await waitFor('the entry to go', async () => ((await entries(cport, dport)).length === 0 ? true : undefined), 5000),
    true,
    'the RST removed the entry',
  );
  const m = marker('AFTERRST');
  const cap = await sniff(c.ns, 60);
  const before = await cast.drops();
  await sendFrames(d.ns, fromD(cport, dport, m));
  await cast.dropsReaching(before, { [DENIED]: 3 });
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(seen(await cap.stop(), m), 'nothing D sends on the tuple after the RST reaches C');
});

t.test('half-closed: the responder streams on until a policy change denies the flow, then is cut', async (t) => {
  const { c, d } = cast.pods;
  t.teardown(() => cast.pc.delete('all'));
  await cast.pc.import(closedIngress('c'));
  const dport = nextPort++,
    cport = nextPort++;
  // After C's FIN, D sends a numbered tick every 100 ms for 30 s, whatever happens to them.
  const server = spawnPy('d', SERVER('for i in range(300):\n  s.send(b"TICK%05d;" % i);time.sleep(0.1)'), dport);
  await untilListening(server.child, "D's server", 30_000);
  const client = spawnPy('c', CLIENT, d.ip4, cport, dport);
  const ticks = () => [...client.out().matchAll(/TICK(\d+)/g)].length;
  await waitFor('ticks after C closed its side', async () => (ticks() >= 3 ? true : undefined), 30_000);
  const ct = await entries(cport, dport);
  t.equal(ct.length, 1, 'one entry (pod to pod)');
  t.equal(ct[0]?.state, 2, 'closing: C sent its FIN, D has not');

  await cast.pc.import(closedIngress('d'));
  await new Promise((r) => setTimeout(r, 1000)); // "cut within a second"
  const cut = ticks();
  await new Promise((r) => setTimeout(r, 2000));
  t.equal(ticks(), cut, `no tick reaches C once D's ingress denies C (${cut} before, D sends 10 a second)`);

  // C's SYN on the same tuple is a new connection: the closing, revoked entry admits nothing.
  const m = marker('REUSE');
  const cap = await sniff(d.ns, 60);
  const before = await cast.drops();
  await sendFrames(c.ns, [
    frame4(c, { dst: d.ip4, proto: PROTO.TCP }, Buffer.concat([tcp(cport, dport, TCP_FLAGS.SYN, 777), m])),
  ]);
  await cast.dropsReaching(before, { [DENIED]: 1 });
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(seen(await cap.stop(), m), "C's SYN reusing the tuple does not reach D");
});
