// Fragments and IPv6 header chains (BPF_PROG_TEST_RUN, root + bpffs): later fragments get their first
// fragment's verdict, a first fragment without its whole L4 header is dropped, and no port rule can be
// bypassed by fragmenting (the split-SYN attack against an ingressDeny on port 22 next to an any-port
// allow); fragmented allowed UDP still passes at a port-restricted endpoint; a header chain longer
// than the parser walks is dropped.
import t from 'tap';
import { eth, ETH_P, EXT, ah6, ext6, frag6, ipv4, ipv6, PROTO, TCP_FLAGS, tcp, udp } from '../src/bpf/packets.ts';
import { bpfHarness, drops, OK, REDIRECT, requireBpf, runCounted, SHOT } from './lib/bpf-harness.ts';
import { policyHarness, type TestEndpoint } from './lib/policy-harness.ts';

requireBpf();

const A: TestEndpoint = {
  id: 51,
  ifindex: 1,
  ip: '10.249.0.1',
  ip6: 'fd00:f9::1',
  labels: { app: 'client' },
  mac: '02:00:00:00:33:02',
  hostMac: '02:00:00:00:33:01',
};
const B: TestEndpoint = {
  id: 52,
  ifindex: 900052,
  ip: '10.249.0.2',
  ip6: 'fd00:f9::2',
  labels: { app: 'server' },
  mac: '02:00:00:00:34:02',
  hostMac: '02:00:00:00:34:01',
};
const WORLD4 = '198.18.9.9';
const POLICY_DENIED = 133,
  INVALID_PACKET = 134,
  TRUNCATED = 135,
  BAD_EXTHDR = 156,
  FRAG_NOT_FOUND = 175;

const h = bpfHarness();
const p = policyHarness(h, [A, B]);

const out4 = (dst: string, o: Partial<Parameters<typeof ipv4>[0]>, l4: Buffer, proto: number) =>
  eth(A.hostMac, A.mac, ETH_P.IPV4, ipv4({ src: A.ip, dst, proto, ...o }, l4));
const out6 = (dst: string, next: number, payload: Buffer) =>
  eth(A.hostMac, A.mac, ETH_P.IPV6, ipv6({ src: A.ip6, dst, next }, payload));

const run = (pkt: Buffer, hook: 'from' | 'to' = 'from') => runCounted(h, hook, pkt);

/** An L4 datagram cut into IPv4 fragments at the given byte offsets (multiples of 8). */
function fragments4(dst: string, proto: number, l4: Buffer, cuts: number[], id: number): Buffer[] {
  const bounds = [0, ...cuts, l4.length];
  return bounds
    .slice(0, -1)
    .map((start, i) => out4(dst, { id, offset: start / 8, mf: i < bounds.length - 2 }, l4.subarray(start, bounds[i + 1]), proto));
}

const SERVER_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  ingressDeny:
  - toPorts: [{ports: [{port: "22", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toPorts: [{ports: [{port: "5353", protocol: UDP}, {port: "80", protocol: TCP}, {port: "22", protocol: TCP}]}]
`;

t.test('the split-SYN attack: no fragment gets past the port 22 deny', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(SERVER_POLICY);
  t.same(
    run(out4(B.ip, {}, tcp(40000, 22, TCP_FLAGS.SYN), PROTO.TCP)),
    { verdict: SHOT, reason: POLICY_DENIED },
    'a plain SYN to 22 is denied',
  );
  t.same(run(out4(B.ip, {}, tcp(40001, 80, TCP_FLAGS.SYN), PROTO.TCP)), { verdict: REDIRECT }, 'to 80 it is allowed');
  // The SYN split after 8 bytes of TCP: ports and sequence number, no flags.
  const syn = tcp(40002, 22, TCP_FLAGS.SYN, 77);
  const [head, tail] = fragments4(B.ip, PROTO.TCP, syn, [8], 0x4242);
  t.same(run(head), { verdict: SHOT, reason: TRUNCATED }, 'a first fragment without the whole TCP header is dropped');
  t.same(run(tail), { verdict: SHOT, reason: FRAG_NOT_FOUND }, 'its rest has no first fragment to go by');
  // Whole header in the first fragment: the policy sees port 22 in every fragment.
  const [h2, t2] = fragments4(
    B.ip,
    PROTO.TCP,
    Buffer.concat([tcp(40003, 22, TCP_FLAGS.SYN, 78), Buffer.alloc(40)]),
    [24],
    0x4243,
  );
  t.same(run(h2), { verdict: SHOT, reason: POLICY_DENIED }, 'a whole-header first fragment to 22: denied');
  t.same(run(t2), { verdict: SHOT, reason: POLICY_DENIED }, 'and its later fragment too, as port 22');
  // An allowed SYN to 80, then a fragment of the same datagram overlapping its TCP header.
  const [h3] = fragments4(B.ip, PROTO.TCP, Buffer.concat([tcp(40004, 80, TCP_FLAGS.SYN, 79), Buffer.alloc(40)]), [24], 0x4244);
  t.same(run(h3), { verdict: REDIRECT }, 'the first fragment to 80 passes');
  const overlap = out4(
    B.ip,
    { id: 0x4244, offset: 1, mf: true },
    Buffer.concat([Buffer.from([0, 22]), Buffer.alloc(22)]),
    PROTO.TCP,
  );
  t.same(run(overlap), { verdict: SHOT, reason: INVALID_PACKET }, 'a fragment rewriting the TCP header (offset 8) is dropped');
  t.same(
    run(out4(B.ip, { id: 0x4244, offset: 2, mf: true }, Buffer.alloc(16), PROTO.TCP)),
    { verdict: SHOT, reason: INVALID_PACKET },
    'offset 16 overlaps too',
  );
  t.same(
    run(out4(B.ip, { id: 0x4244, offset: 3 }, Buffer.alloc(16), PROTO.TCP)),
    { verdict: REDIRECT },
    'offset 24 is past the header: it rides the first',
  );
});

t.test('fragmented allowed UDP passes a port-restricted endpoint; later fragments need their first', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(
    SERVER_POLICY.replace(
      'ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]',
      'ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]',
    ),
  );
  const dgram = udp(40010, 5353, Buffer.alloc(3000, 7));
  const frags = fragments4(B.ip, PROTO.UDP, dgram, [1480, 2960], 0x5151);
  t.equal(frags.length, 3);
  for (const [i, f] of frags.entries()) t.same(run(f), { verdict: REDIRECT }, `fragment ${i} of an allowed datagram`);
  const denied = fragments4(B.ip, PROTO.UDP, udp(40011, 5354, Buffer.alloc(3000)), [1480], 0x5152);
  t.same(run(denied[0]), { verdict: SHOT, reason: POLICY_DENIED }, 'a datagram to a port not allowed: first fragment denied');
  t.same(run(denied[1]), { verdict: SHOT, reason: POLICY_DENIED }, 'and its later fragment');
  t.same(
    run(out4(B.ip, { id: 0x5153, offset: 185 }, Buffer.alloc(100), PROTO.UDP)),
    { verdict: SHOT, reason: FRAG_NOT_FOUND },
    'a later fragment with no first',
  );
  t.same(
    run(out4(B.ip, { id: 0x5151, offset: 185 }, Buffer.alloc(100), PROTO.ICMP)),
    { verdict: SHOT, reason: FRAG_NOT_FOUND },
    'another protocol is another datagram',
  );
  const short = out4(B.ip, { id: 0x5154, mf: true }, Buffer.alloc(4), PROTO.UDP);
  t.same(run(short), { verdict: SHOT, reason: TRUNCATED }, 'a first fragment with half a UDP header');
  const world = fragments4(WORLD4, PROTO.UDP, udp(40012, 5353, Buffer.alloc(2000)), [1480], 0x5155);
  for (const f of world) t.same(run(f), { verdict: OK }, 'towards the world through the stack');
  // Inbound from the world (to_container): the server's ingress decides each fragment as the first.
  const inbound = (o: { id: number; offset?: number; mf?: boolean }, l4: Buffer) =>
    eth(B.mac, B.hostMac, ETH_P.IPV4, ipv4({ src: WORLD4, dst: A.ip, proto: PROTO.UDP, ...o }, l4));
  const reply = udp(5353, 40012, Buffer.alloc(2000));
  t.same(
    run(inbound({ id: 9, mf: true }, reply.subarray(0, 1480)), 'to'),
    { verdict: OK },
    'the reply first fragment is a reply',
  );
  t.same(run(inbound({ id: 9, offset: 185 }, reply.subarray(1480)), 'to'), { verdict: OK }, 'and so is its later fragment');
});

t.test('IPv6: fragments, header chains, chains too long to walk', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(
    SERVER_POLICY.replace(
      'ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]',
      'ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]',
    ),
  );
  const dgram = udp(40020, 5353, Buffer.alloc(3000, 1));
  const first = Buffer.concat([frag6(PROTO.UDP, 0, true, 0xabcdef01), dgram.subarray(0, 1448)]);
  const rest = Buffer.concat([frag6(PROTO.UDP, 181, false, 0xabcdef01), dgram.subarray(1448)]);
  t.same(run(out6(B.ip6, EXT.FRAGMENT, first)), { verdict: REDIRECT }, 'first fragment of allowed UDP');
  t.same(run(out6(B.ip6, EXT.FRAGMENT, rest)), { verdict: REDIRECT }, 'its later fragment');
  t.same(
    run(out6(B.ip6, EXT.FRAGMENT, Buffer.concat([frag6(PROTO.UDP, 181, false, 0x1234), Buffer.alloc(64)]))),
    { verdict: SHOT, reason: FRAG_NOT_FOUND },
    'a later fragment with no first',
  );
  t.same(
    run(out6(B.ip6, EXT.FRAGMENT, Buffer.concat([frag6(PROTO.UDP, 0, true, 0x1235), Buffer.alloc(4)]))),
    { verdict: SHOT, reason: TRUNCATED },
    'a first fragment with half a UDP header',
  );
  const synHead = Buffer.concat([frag6(PROTO.TCP, 0, true, 0x1236), tcp(40021, 22, TCP_FLAGS.SYN).subarray(0, 8)]);
  t.same(run(out6(B.ip6, EXT.FRAGMENT, synHead)), { verdict: SHOT, reason: TRUNCATED }, 'the split SYN over IPv6');
  // Destination options after the fragment header: the later fragment's key is the fragment header's next header.
  const chained = Buffer.concat([ext6(PROTO.UDP), udp(40022, 5353, Buffer.alloc(2000))]);
  t.same(run(out6(B.ip6, EXT.FRAGMENT, Buffer.concat([frag6(EXT.DSTOPTS, 0, true, 0x1237), chained.subarray(0, 1448)]))), {
    verdict: REDIRECT,
  });
  t.same(
    run(out6(B.ip6, EXT.FRAGMENT, Buffer.concat([frag6(EXT.DSTOPTS, 181, false, 0x1237), chained.subarray(1448)]))),
    { verdict: REDIRECT },
    'later fragment after an options header',
  );
  t.same(
    run(out6(B.ip6, EXT.FRAGMENT, Buffer.concat([frag6(PROTO.UDP, 0, false, 0x1238), udp(40023, 5353)]))),
    { verdict: REDIRECT },
    'an atomic fragment is a whole packet',
  );
  t.same(
    run(out6(B.ip6, EXT.FRAGMENT, Buffer.concat([frag6(PROTO.UDP, 0, false, 0x1239), udp(40024, 5354)]))),
    { verdict: SHOT, reason: POLICY_DENIED },
    'with its port checked',
  );
});

t.test('IPv6 extension chains: walked up to 8 headers (AH included), dropped beyond', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(SERVER_POLICY);
  const chain = (n: number, last: number, l4: Buffer): Buffer => {
    let payload = l4;
    let next = last;
    for (let i = 0; i < n; i++) {
      payload = Buffer.concat([ext6(next), payload]);
      next = EXT.DSTOPTS;
    }
    return out6(B.ip6, n ? EXT.DSTOPTS : last, payload);
  };
  t.same(run(chain(8, PROTO.TCP, tcp(40030, 80, TCP_FLAGS.SYN))), { verdict: REDIRECT }, '8 options headers, then TCP to 80');
  t.same(
    run(chain(8, PROTO.TCP, tcp(40031, 22, TCP_FLAGS.SYN))),
    { verdict: SHOT, reason: POLICY_DENIED },
    '8 headers, then TCP to 22: the port is seen',
  );
  t.same(
    run(chain(9, PROTO.TCP, tcp(40032, 80, TCP_FLAGS.SYN))),
    { verdict: SHOT, reason: BAD_EXTHDR },
    '9 headers: dropped, not classified as an extension header protocol',
  );
  const withAh = out6(B.ip6, EXT.HOP, Buffer.concat([ext6(EXT.AH), ah6(PROTO.TCP, 4), tcp(40033, 22, TCP_FLAGS.SYN)]));
  t.same(run(withAh), { verdict: SHOT, reason: POLICY_DENIED }, 'AH is walked (its own length unit): port 22 is seen');
  const withAh80 = out6(B.ip6, EXT.HOP, Buffer.concat([ext6(EXT.AH), ah6(PROTO.TCP, 4), tcp(40034, 80, TCP_FLAGS.SYN)]));
  t.same(run(withAh80), { verdict: REDIRECT });
  const cut = out6(B.ip6, EXT.DSTOPTS, ext6(EXT.ROUTING).subarray(0, 8)); // says routing header follows; packet ends
  t.same(run(cut), { verdict: SHOT, reason: INVALID_PACKET }, 'a chain that runs past the packet');
  t.ok(drops(h.dp, BAD_EXTHDR) >= 1n, 'counted');
});
