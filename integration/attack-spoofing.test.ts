// Attacks on identity with real packets (root): pod A crafts frames with raw sockets in its netns and
// tries to speak as pod C (IPv4 and IPv6 source, source MAC, ARP), to open a way into C with a forged
// C:53 -> D:4444 datagram that D then "answers", and to reach C with replies nobody asked for. Each
// fails: nothing arrives (sniffed on the target's eth0), the drop is counted by reason and shown as a
// DROPPED flow; the same traffic with A's own identity passes.
import t from 'tap';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { arp, eth, ETH_P, PROTO, TCP_FLAGS, tcp, udp } from '../shared/src/bpf/packets.ts';
import { castOf, closedIngress, frame4, frame6, reasonName, waitFor } from './lib/attack-pods.ts';
import { sendFrames, sniff } from './lib/raw.ts';
import { tcpRequest, startEchoServer, killAll, untilListening } from './lib/tcp.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['a', 'b', 'c', 'd']);
const marker = (what: string) => Buffer.from(`${what}-${Math.random().toString(36).slice(2)}`);
const seen = (frames: { frame: Buffer }[], m: Buffer) => frames.some((f) => f.frame.includes(m));
const SPOOFED = reasonName(132),
  BAD_MAC = reasonName(130);

/** Runs `python3 -c script args` in a pod; resolves with its stdout (30 s: a python start at load 12
 *  alone takes seconds). */
const py = (
  pod: { ns: { exec(c: string, a: string[], o?: { timeoutMs?: number }): Promise<string> } },
  script: string,
  ...args: string[]
) => pod.ns.exec('python3', ['-c', script, ...args], { timeoutMs: 30_000 });

t.test('A cannot send as C: IPv4 and IPv6 sources, another MAC; its own packets pass', async (t) => {
  const { a, c, d } = cast.pods;
  const before = await cast.drops();
  const m = { v4: marker('SPOOF4'), v6: marker('SPOOF6'), mac: marker('SPOOFMAC'), own4: marker('OWN4'), own6: marker('OWN6') };
  const cap = await sniff(d.ns, 60); // until stop(): a slow run must not end it before the spoofed frames
  await sendFrames(a.ns, [
    frame4(a, { src: c.ip4, dst: d.ip4, proto: PROTO.UDP }, udp(53, 4444, m.v4)),
    frame6(a, { src: c.ip6, dst: d.ip6, next: PROTO.UDP }, udp(53, 4444, m.v6)),
    frame4(a, { dst: d.ip4, proto: PROTO.UDP, srcMac: c.mac }, udp(5000, 4444, m.mac)),
    frame4(a, { dst: d.ip4, proto: PROTO.UDP }, udp(5000, 4444, m.own4)),
    frame6(a, { dst: d.ip6, next: PROTO.UDP }, udp(5000, 4444, m.own6)),
  ]);
  await waitFor(
    'the own packets at D',
    async () => (seen(cap.frames(), m.own4) && seen(cap.frames(), m.own6) ? true : undefined),
    5000,
  );
  await new Promise((r) => setTimeout(r, 300)); // the spoofed ones were sent first: anything still in flight lands now
  const frames = await cap.stop();
  t.ok(seen(frames, m.own4) && seen(frames, m.own6), "A's own datagrams reach D");
  t.notOk(seen(frames, m.v4), "a datagram with C's IPv4 source does not");
  t.notOk(seen(frames, m.v6), "nor with C's IPv6 source");
  t.notOk(seen(frames, m.mac), "nor with C's MAC");
  const after = await cast.dropsReaching(before, { [SPOOFED]: 2, [BAD_MAC]: 1 });
  t.ok((after[SPOOFED] ?? 0) - (before[SPOOFED] ?? 0) >= 2, `${SPOOFED} counted (${before[SPOOFED] ?? 0} -> ${after[SPOOFED]})`);
  t.ok((after[BAD_MAC] ?? 0) - (before[BAD_MAC] ?? 0) >= 1, `${BAD_MAC} counted`);
  // Visible as a DROPPED flow with the reason, as seen at A's egress.
  const observer = new ObserverClient(cast.agent.observerSocket);
  t.teardown(() => observer.close());
  const drop = await waitFor('the DROPPED flow', async () =>
    (await observer.collect({ whitelist: [{ sourceIp: [c.ip4], destinationIp: [d.ip4], verdict: ['DROPPED'] }] }))
      .map((r) => r.flow)
      .find((f) => f?.dropReason === 132),
  );
  t.match(drop, { verdict: 'DROPPED', dropReasonDesc: SPOOFED }, 'observe shows it dropped as spoofed');
});

t.test('ARP: A cannot answer for C, a proper ARP still works', async (t) => {
  const { a, b, c } = cast.pods;
  const gw4 = a.ep.ips.find((x) => x.family === 4)!.gateway;
  const before = await cast.drops();
  await sendFrames(a.ns, [
    eth('ff:ff:ff:ff:ff:ff', a.mac, ETH_P.ARP, arp(2, a.mac, c.ip4, 'ff:ff:ff:ff:ff:ff', c.ip4)), // gratuitous: "C is at A's MAC"
    eth(a.gwMac, a.mac, ETH_P.ARP, arp(2, c.mac, c.ip4, a.gwMac, gw4)), // with C's MAC as sender
  ]);
  const after = await cast.dropsReaching(before, { [SPOOFED]: 1, [BAD_MAC]: 1 });
  t.ok((after[SPOOFED] ?? 0) - (before[SPOOFED] ?? 0) >= 1, "the ARP claiming C's address is dropped as spoofed");
  t.ok((after[BAD_MAC] ?? 0) - (before[BAD_MAC] ?? 0) >= 1, "the one with C's MAC as sender too");
  await a.ns.exec('ip', ['neigh', 'flush', 'dev', 'eth0']);
  const echo = await startEchoServer(b.ns, 7070, '0.0.0.0');
  t.teardown(() => killAll([echo]));
  t.equal(await tcpRequest(a.ns, b.ip4, 7070), 'ping', 'A resolves its gateway by ARP and reaches B');
});

t.test('a forged C:53 -> D:4444 datagram opens no way into C; real replies do pass', async (t) => {
  const { a, c, d } = cast.pods;
  t.teardown(() => cast.pc.delete('all'));
  await cast.pc.import(closedIngress('c'));
  // Captures until stop() (60 s at most): under load the steps below take seconds, and a capture that
  // ended early would miss the "answer" it must not see.
  const cap = await sniff(c.ns, 60);
  await sendFrames(a.ns, [frame4(a, { src: c.ip4, dst: d.ip4, proto: PROTO.UDP }, udp(53, 4444, marker('FORGED')))]);
  const answer = marker('ANSWER');
  await py(
    d,
    'import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("0.0.0.0",4444));s.sendto(sys.argv[2].encode(),(sys.argv[1],53))',
    c.ip4,
    answer.toString(),
  );
  // C asks D for real (from port 53), D answers from 4445: a reply, which passes C's closed ingress.
  // D says when it is bound (a fixed pause lost the ASK when python started slowly under load), and
  // C waits up to 10 s for the reply (D has to be scheduled to answer).
  const server = d.ns.spawn('python3', [
    '-c',
    'import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("0.0.0.0",4445));print("listening",flush=True);d,a=s.recvfrom(100);s.sendto(b"REAL-"+d,a)',
  ]);
  t.teardown(() => {
    if (server.exitCode === null) server.kill('SIGKILL');
  });
  await untilListening(server, "D's UDP server", 30_000);
  const got = await py(
    c,
    'import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(("0.0.0.0",53));s.settimeout(10);s.sendto(b"ASK",(sys.argv[1],4445));print(s.recvfrom(100)[0].decode())',
    d.ip4,
  );
  t.equal(got.trim(), 'REAL-ASK', "C's own request gets D's reply through C's closed ingress");
  const frames = await cap.stop();
  t.notOk(seen(frames, answer), 'D\'s "answer" to the forged datagram never reaches C');
});

t.test('replies nobody asked for do not pass: a raw SYN-ACK and an ACK from D to C', async (t) => {
  const { c, d } = cast.pods;
  t.teardown(() => cast.pc.delete('all'));
  await cast.pc.import(closedIngress('c'));
  const m = marker('UNASKED');
  const cap = await sniff(c.ns, 60); // until stop(), as above
  await sendFrames(d.ns, [
    frame4(d, { dst: c.ip4, proto: PROTO.TCP }, Buffer.concat([tcp(80, 41000, TCP_FLAGS.SYN | TCP_FLAGS.ACK, 1, 1), m])),
    frame4(d, { dst: c.ip4, proto: PROTO.TCP }, Buffer.concat([tcp(80, 41001, TCP_FLAGS.ACK, 1, 1), m])),
    frame6(d, { dst: c.ip6, next: PROTO.TCP }, Buffer.concat([tcp(80, 41002, TCP_FLAGS.SYN | TCP_FLAGS.ACK, 1, 1), m])),
  ]);
  await new Promise((r) => setTimeout(r, 1000));
  t.notOk(seen(await cap.stop(), m), 'none of them reaches C');
  const echo = await startEchoServer(d.ns, 7071, '0.0.0.0');
  t.teardown(() => killAll([echo]));
  t.equal(await tcpRequest(c.ns, d.ip4, 7071), 'ping', "while C's own connection to D gets its replies");
});
