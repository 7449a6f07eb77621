// Attacks with fragments and IPv6 header chains, with real packets (root). D serves TCP 22 and 80 under
// an ingressDeny on port 22 next to an allow-all; A crafts SYNs by hand: split after 8 bytes of TCP
// (the port without the flags), whole-header fragments, IPv6 chains too long to walk. Only what the
// policy admits gets a SYN-ACK. Fragmented UDP that the policy admits arrives through real sockets,
// IPv4 and IPv6, at an endpoint restricted to that port; to another port it does not.
import t from 'tap';
import { EXT, ext6, PROTO, TCP_FLAGS, tcp, withChecksum } from '../shared/src/bpf/packets.ts';
import { castOf, frame4, frame6, reasonName, type Pod } from './lib/attack-pods.ts';
import { frameInfo, sendFrames, sniff } from './lib/raw.ts';
import { killAll, startEchoServer } from './lib/tcp.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['a', 'd']);
const servers: ChildProcess[] = [];
t.teardown(() => killAll(servers));

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d-no-ssh}
spec:
  endpointSelector: {matchLabels: {app: d}}
  ingress: [{fromEntities: [all]}]
  ingressDeny:
  - toPorts: [{ports: [{port: "22", protocol: TCP}]}]
`;

let sport = 42000 + Math.floor(Math.random() * 1000);
/** IP IDs: one per fragmented datagram, never twice in a file (a random one each time could match a
 *  datagram an earlier case left in the kernel's reassembly queue, 30 s, and merge with it). */
let fragId = 1 + Math.floor(Math.random() * 30000);

/** A SYN from A to D:dport, as IPv4 fragments cut at `cuts` (bytes of the TCP segment); a payload
 *  keeps the segment longer than one cut. Resolves with whether D answered SYN-ACK. */
async function fragmentedSyn(a: Pod, d: Pod, dport: number, cuts: number[], expect: 'answered' | 'dropped'): Promise<boolean> {
  const sp = ++sport;
  const seg = withChecksum(
    4,
    a.ip4,
    d.ip4,
    PROTO.TCP,
    Buffer.concat([tcp(sp, dport, TCP_FLAGS.SYN, 1000), Buffer.alloc(32, 0x41)]),
  );
  const bounds = [0, ...cuts, seg.length];
  const id = ++fragId;
  const frames = bounds
    .slice(0, -1)
    .map((start, i) =>
      frame4(
        a,
        { dst: d.ip4, proto: PROTO.TCP, id, offset: start / 8, mf: i < bounds.length - 2 },
        seg.subarray(start, bounds[i + 1]),
        false,
      ),
    );
  return synAcked(a, sp, dport, frames, expect);
}

async function synAcked(a: Pod, sp: number, dport: number, frames: Buffer[], expect: 'answered' | 'dropped'): Promise<boolean> {
  const cap = await sniff(a.ns, 60); // until stop(): a slow run must not end it first
  await sendFrames(a.ns, frames);
  const answered = () =>
    cap.frames().some(({ dir, frame }) => {
      const i = frameInfo(frame);
      return (
        dir === 'in' &&
        i !== undefined &&
        i.sport === dport &&
        i.dport === sp &&
        (i.flags & (TCP_FLAGS.SYN | TCP_FLAGS.ACK)) === (TCP_FLAGS.SYN | TCP_FLAGS.ACK)
      );
    });
  // A SYN-ACK is there within milliseconds, but a loaded CI machine can take seconds to run the
  // sniffer: a case that expects one polls for 15 s. One that expects none gives it 1.5 s (the SYN was
  // sent before; slowness there can only hide an answer, never invent one).
  const waitMs = expect === 'answered' ? 15_000 : 1500;
  for (const end = Date.now() + waitMs; Date.now() < end && !answered(); ) await new Promise((r) => setTimeout(r, 100));
  const yes = answered();
  await cap.stop();
  return yes;
}

t.before(async () => {
  const { d } = cast.pods;
  servers.push(await startEchoServer(d.ns, 22, '::'), await startEchoServer(d.ns, 80, '::'));
  await cast.pc.import(POLICY);
});

t.test('the split SYN: no fragmenting gets past the port 22 deny; allowed fragments reassemble', async (t) => {
  const { a, d } = cast.pods;
  const before = await cast.drops();
  t.notOk(await fragmentedSyn(a, d, 22, [8], 'dropped'), 'a SYN split after 8 bytes of TCP gets no SYN-ACK from port 22');
  const after = await cast.dropsReaching(before, { [reasonName(135)]: 1, [reasonName(175)]: 1 });
  t.ok((after[reasonName(135)] ?? 0) > (before[reasonName(135)] ?? 0), `the first fragment is dropped as ${reasonName(135)}`);
  t.ok((after[reasonName(175)] ?? 0) > (before[reasonName(175)] ?? 0), `its rest as ${reasonName(175)}`);
  t.notOk(
    await fragmentedSyn(a, d, 22, [24], 'dropped'),
    'a SYN with the whole header in its first fragment: still port 22, denied',
  );
  t.notOk(await fragmentedSyn(a, d, 22, [24, 40], 'dropped'), 'in three fragments: denied');
  t.ok(
    await fragmentedSyn(a, d, 80, [24], 'answered'),
    'the same fragments to port 80 get their SYN-ACK: allowed fragments pass',
  );
  t.ok(await fragmentedSyn(a, d, 80, [24, 40], 'answered'), 'in three fragments too');
  const sp = ++sport;
  t.notOk(
    await synAcked(a, sp, 22, [frame4(a, { dst: d.ip4, proto: PROTO.TCP }, tcp(sp, 22, TCP_FLAGS.SYN, 5))], 'dropped'),
    'an unfragmented SYN to 22: denied',
  );
});

t.test('IPv6: a header chain longer than the parser walks is dropped; a short one is not', async (t) => {
  const { a, d } = cast.pods;
  const chain = (n: number) => {
    const parts: Buffer[] = [];
    for (let i = 0; i < n; i++) parts.push(ext6(i === n - 1 ? PROTO.TCP : EXT.DSTOPTS));
    return { first: EXT.DSTOPTS, bytes: Buffer.concat(parts) };
  };
  const syn6 = async (dport: number, n: number, expect: 'answered' | 'dropped') => {
    const sp = ++sport;
    return synAcked(
      a,
      sp,
      dport,
      [frame6(a, { dst: d.ip6, next: PROTO.TCP, chain: n ? chain(n) : undefined }, tcp(sp, dport, TCP_FLAGS.SYN, 9))],
      expect,
    );
  };
  t.ok(await syn6(80, 2, 'answered'), 'two destination options headers, then a SYN to 80: answered');
  t.notOk(await syn6(22, 2, 'dropped'), 'the same to 22: the port is seen, denied');
  const before = await cast.drops();
  t.notOk(await syn6(80, 9, 'dropped'), 'nine headers: dropped before D sees it');
  const after = await cast.dropsReaching(before, { [reasonName(156)]: 1 });
  t.ok((after[reasonName(156)] ?? 0) > (before[reasonName(156)] ?? 0), `counted as ${reasonName(156)}`);
});

t.test('fragmented UDP that the policy admits arrives (IPv4, IPv6), on another port it does not', async (t) => {
  const { a, d } = cast.pods;
  t.teardown(() => cast.pc.import(POLICY));
  await cast.pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d-no-ssh}
spec:
  endpointSelector: {matchLabels: {app: d}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}], toPorts: [{ports: [{port: "9000", protocol: UDP}]}]}]
`);
  // D echoes what it receives on 9000 and 9001 (both families); A sends 4000 bytes and waits for them back.
  const echo = d.ns.spawn('python3', [
    '-c',
    `import socket,select
ss=[]
for fam,host in ((socket.AF_INET,"0.0.0.0"),(socket.AF_INET6,"::")):
  for p in (9000,9001):
    s=socket.socket(fam,socket.SOCK_DGRAM)
    if fam==socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)
    s.bind((host,p)); ss.append(s)
print("ready",flush=True)
while True:
  for s in select.select(ss,[],[])[0]:
    d,a=s.recvfrom(65535); s.sendto(d,a)`,
  ]);
  servers.push(echo);
  await new Promise<void>((resolve) =>
    echo.stdout!.on('data', (b: Buffer) => {
      if (b.toString().includes('ready')) resolve();
    }),
  );
  const roundTrip = (ip: string, port: number) =>
    a.ns
      .exec(
        'python3',
        [
          '-c',
          `import socket,sys
fam=socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s=socket.socket(fam,socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(b"x"*4000,(sys.argv[1],int(sys.argv[2])))
try: print(len(s.recvfrom(65535)[0]))
except socket.timeout: print("timeout")`,
          ip,
          String(port),
        ],
        { timeoutMs: 60_000 }, // only a hung run meets it: a python3 start alone took 5-10 s at load 20+
      )
      .then((o) => o.trim());
  const cap = await sniff(d.ns, 120); // until stop()
  t.equal(await roundTrip(d.ip4, 9000), '4000', 'IPv4: 4000 bytes in three fragments reach D:9000, and come back');
  t.equal(await roundTrip(d.ip6, 9000), '4000', 'IPv6 too');
  t.equal(await roundTrip(d.ip4, 9001), 'timeout', 'to 9001 nothing comes back');
  t.equal(await roundTrip(d.ip6, 9001), 'timeout', 'IPv6 neither');
  const frames = await cap.stop();
  const fragsIn = frames.filter(({ dir, frame }) => dir === 'in' && frameInfo(frame)?.fragment);
  t.ok(fragsIn.length >= 4, `the datagrams did travel as fragments (${fragsIn.length} fragments seen at D)`);
});
