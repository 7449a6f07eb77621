// Attacks with ICMP errors and ICMPv6 control messages, with real packets (root). C keeps a TCP
// connection to a "world" netns of our own and is otherwise closed; forged ICMP errors quoting C's own
// flow (from pod A) or another endpoint's flow (from A, from the world) must not reach C, while the
// world's genuine errors about C's traffic do. Neighbour discovery and MLD aimed at another pod are
// dropped; the pods' own neighbour discovery keeps working.
import t from 'tap';
import { icmp, ipv4, PROTO, TCP_FLAGS, tcp } from '../shared/src/bpf/packets.ts';
import { ipBytes, parseMac } from '../shared/src/net/index.ts';
import { castOf, closedIngress, frame4, frame6, reasonName } from './lib/attack-pods.ts';
import { ping, type TestNetns } from './lib/netns.ts';
import { createWorld, type TestWorld } from './lib/world.ts';
import { frameInfo, sendFrames, sniff } from './lib/raw.ts';
import { killAll, startEchoServer, startFlow } from './lib/tcp.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['a', 'b', 'c', 'd']);
let worldNet: TestWorld | undefined;
let world: TestNetns;
/** The world's address (198.18.0.0/15). */
let W = '';
const children: { stop(): void }[] = [];

t.before(async () => {
  worldNet = await createWorld([10], '10.0.0.0/8');
  world = worldNet.ns;
  [W] = worldNet.ips;
  await cast.pc.import(closedIngress('c'));
});
t.teardown(() => {
  for (const c of children) c.stop();
  worldNet?.remove();
});

/** The first 28 bytes of the IPv4 packet an ICMP error quotes, with a marker in its IP id. */
const quote = (src: string, dst: string, l4: Buffer, proto: number, id: number) =>
  ipv4({ src, dst, proto, id }, l4).subarray(0, 28);
const arrivedIcmp = (frames: { dir: string; frame: Buffer }[], id: number) =>
  frames.some(
    ({ dir, frame }) =>
      dir === 'in' &&
      frameInfo(frame)?.icmpType === 3 &&
      frame.length >= 14 + 20 + 8 + 6 &&
      frame.readUInt16BE(14 + 20 + 8 + 4) === id,
  );

t.test("forged ICMP errors do not reach C; the world's genuine ones do", async (t) => {
  const { a, b, c, d } = cast.pods;
  const srv = await startEchoServer(world, 7000, '0.0.0.0');
  const srvD = await startEchoServer(d.ns, 7000, '0.0.0.0');
  t.teardown(() => killAll([srv, srvD]));
  const flow = startFlow(c.ns, W, 7000);
  const bflow = startFlow(b.ns, d.ip4, 7000);
  children.push(flow, bflow);
  const deadline = Date.now() + 10_000;
  while ((flow.echoed() === 0 || bflow.echoed() === 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.ok(flow.echoed() > 0 && bflow.echoed() > 0, 'C -> world and B -> D run');
  const cPort = Number(
    (await c.ns.exec('ss', ['-Htn', 'state', 'established', 'dst', W])).trim().split(/\s+/)[2].split(':').pop(),
  );
  const bPort = Number(
    (await b.ns.exec('ss', ['-Htn', 'state', 'established', 'dst', d.ip4])).trim().split(/\s+/)[2].split(':').pop(),
  );
  const cap = await sniff(c.ns, 60); // until stop(): a slow run must not end it first
  const err = (quoted: Buffer) => icmp(3, 3, 0, quoted);
  // From A (its own source): about C's own flow, and about B's flow.
  await sendFrames(a.ns, [
    frame4(a, { dst: c.ip4, proto: PROTO.ICMP }, err(quote(c.ip4, W, tcp(cPort, 7000, TCP_FLAGS.ACK), PROTO.TCP, 0x1111))),
    frame4(a, { dst: c.ip4, proto: PROTO.ICMP }, err(quote(b.ip4, d.ip4, tcp(bPort, 7000, TCP_FLAGS.ACK), PROTO.TCP, 0x2222))),
  ]);
  // From the world, about B's flow: not C's packet.
  await world.exec('python3', [
    '-c',
    `import socket,sys
s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP)
s.sendto(bytes.fromhex(sys.argv[2]),(sys.argv[1],0))`,
    c.ip4,
    icmpWithChecksum(err(quote(b.ip4, W, tcp(bPort, 7000, TCP_FLAGS.ACK), PROTO.TCP, 0x3333))).toString('hex'),
  ]);
  // The world's genuine error about C's own traffic: C sends to a closed UDP port on W.
  await c.ns.exec('python3', [
    '-c',
    'import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.sendto(b"x",(sys.argv[1],7999))',
    W,
  ]);
  // The genuine error was sent last: once it is in (polled, a loaded machine can be slow), the forged
  // ones sent before it had their chance; a moment more for anything still in flight.
  const genuine = (fs: { dir: string; frame: Buffer }[]) =>
    fs.some(({ dir, frame }) => dir === 'in' && frameInfo(frame)?.icmpType === 3 && frameInfo(frame)?.src === W);
  await pollUntil(() => genuine(cap.frames()), 20_000, 100);
  await new Promise((r) => setTimeout(r, 500));
  const frames = await cap.stop();
  t.ok(genuine(frames), "the world's port unreachable about C's datagram reaches C");
  t.notOk(arrivedIcmp(frames, 0x1111), "A's error quoting C's connection does not (A is not the peer)");
  t.notOk(arrivedIcmp(frames, 0x2222), "A's error quoting B's connection does not");
  t.notOk(arrivedIcmp(frames, 0x3333), "the world's error quoting B's packet does not");
  const before = flow.echoed();
  await pollUntil(() => flow.echoed() > before || flow.failed() !== null, 20_000, 100);
  t.ok(flow.echoed() > before && flow.failed() === null, "C's connection lives on");
});

function icmpWithChecksum(b: Buffer): Buffer {
  const out = Buffer.from(b);
  out.writeUInt16BE(0, 2);
  let sum = 0;
  for (let i = 0; i + 1 < out.length; i += 2) sum += out.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  out.writeUInt16BE(~sum & 0xffff, 2);
  return out;
}

t.test("neighbour discovery and MLD aimed at another pod are dropped; the pods' own still works", async (t) => {
  const { a, c, d } = cast.pods;
  const before = await cast.drops();
  const cap = await sniff(c.ns, 60); // until stop()
  const ns = (target: string) => icmp(135, 0, 0, Buffer.concat([ipBytes(target), Buffer.from([1, 1]), parseMac(a.mac)]));
  await sendFrames(a.ns, [
    frame6(a, { dst: c.ip6, next: PROTO.ICMPV6, hopLimit: 255 }, ns(c.ip6)),
    frame6(a, { dst: c.ip6, next: PROTO.ICMPV6, hopLimit: 255 }, icmp(136, 0, 0xa0000000, ipBytes(d.ip6))),
    frame6(a, { dst: c.ip6, next: PROTO.ICMPV6, hopLimit: 1 }, icmp(143, 0, 0)),
    frame6(
      a,
      { src: 'fe80::1', dst: 'ff02::1', next: PROTO.ICMPV6, hopLimit: 255, dstMac: '33:33:00:00:00:01' },
      icmp(134, 0, 0x40000000, Buffer.alloc(8)),
    ),
  ]);
  await new Promise((r) => setTimeout(r, 1000));
  const frames = await cap.stop();
  const fromA = frames.filter(
    ({ dir, frame }) =>
      dir === 'in' &&
      [135, 136, 143].includes(frameInfo(frame)?.icmpType ?? -1) &&
      ['fe80::1', a.ip6].includes(frameInfo(frame)!.src),
  );
  t.equal(fromA.length, 0, 'no NS, NA or MLD from A reaches C');
  const forbidden = reasonName(176);
  const after = await cast.dropsReaching(before, { [forbidden]: 4 });
  t.ok(
    (after[forbidden] ?? 0) - (before[forbidden] ?? 0) >= 4,
    `counted as ${forbidden} (${(after[forbidden] ?? 0) - (before[forbidden] ?? 0)})`,
  );
  await a.ns.exec('ip', ['-6', 'neigh', 'flush', 'dev', 'eth0']);
  t.ok(await ping(a.ns, d.ip6, 2), "A's own neighbour discovery with its gateway still works: it pings D over IPv6");
  t.ok(await ping(a.ns, d.ip4, 1), 'and over IPv4');
});
