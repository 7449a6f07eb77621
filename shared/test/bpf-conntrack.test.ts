// Conntrack bound to its endpoint (BPF_PROG_TEST_RUN, root + bpffs): a reply only at the pair that
// created the entry, ICMP errors related only when they quote a packet of the receiving endpoint,
// NDP/MLD only on the endpoint's own link, and the forged C:53 -> D:4444 "reply" channel closed.
// Two veth pairs of our own give endpoints B and C real interfaces to send from.
import t from 'tap';
import { echo, eth, ETH_P, icmp, ipv4, ipv6, PROTO, TCP_FLAGS, tcp, udp } from '../src/bpf/packets.ts';
import { bpfHarness, OK, REDIRECT, requireBpf, runCounted, SHOT, vethIfindexes } from './lib/bpf-harness.ts';
import { policyHarness, type TestEndpoint, testEndpoint } from './lib/policy-harness.ts';
import { endpointRecord } from './lib/endpoint-record.ts';

requireBpf();

const [ifB, ifC] = vethIfindexes('mbc', ['b', 'c']);

const ep = (id: number, ifindex: number, n: number, app: string) => testEndpoint(id, ifindex, n, app, '10.248.0', 'fd00:f8');
const A = ep(61, 1, 1, 'a'),
  B = ep(62, ifB, 2, 'b'),
  C = ep(63, ifC, 3, 'c');
const GW6 = 'fd00:f8::fe';
const W = '198.18.11.11',
  R = '198.18.11.1';
const POLICY_DENIED = 133,
  FORBIDDEN_ICMPV6 = 176;

const h = bpfHarness();
const p = policyHarness(h, [A, B, C], GW6);

const from4 = (e: TestEndpoint, dst: string, l4: Buffer, proto: number, src = e.ip) =>
  eth(e.hostMac, e.mac, ETH_P.IPV4, ipv4({ src, dst, proto }, l4));
const to4 = (e: TestEndpoint, src: string, l4: Buffer, proto: number, dst = e.ip) =>
  eth(e.mac, e.hostMac, ETH_P.IPV4, ipv4({ src, dst, proto }, l4));
const from6 = (e: TestEndpoint, src: string, dst: string, l4: Buffer, hopLimit = 255) =>
  eth(e.hostMac, e.mac, ETH_P.IPV6, ipv6({ src, dst, next: PROTO.ICMPV6, hopLimit }, l4));
const to6 = (e: TestEndpoint, src: string, dst: string, l4: Buffer, hopLimit = 255) =>
  eth(e.mac, e.hostMac, ETH_P.IPV6, ipv6({ src, dst, next: PROTO.ICMPV6, hopLimit }, l4));
/** The first 28 bytes of an IPv4 packet, as an ICMP error quotes it. */
const quote = (src: string, dst: string, l4: Buffer, proto: number) => ipv4({ src, dst, proto }, l4).subarray(0, 28);
const unreachable = (quoted: Buffer) => icmp(3, 3, 0, quoted);

const run = (pkt: Buffer, hook: 'from' | 'to', e: TestEndpoint) => runCounted(h, hook, pkt, e.ifindex);

// Every endpoint closed for ingress but to what a rule admits; egress open.
const CLOSED = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: closed}
spec:
  endpointSelector: {}
  ingress: [{}]
`;

// B open to A (on top of CLOSED).
const B_FROM_A = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
`;

let port = 41000;
const next = () => ++port;

t.test('a reply is a reply only at the pair that made the entry', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(CLOSED);
  const sp = next();
  t.same(run(from4(A, W, udp(sp, 53), PROTO.UDP), 'from', A), { verdict: OK }, 'A -> world');
  t.same(run(to4(A, W, udp(53, sp), PROTO.UDP), 'to', A), { verdict: OK }, 'the reply at A passes');
  t.same(
    run(to4(B, W, udp(53, sp), PROTO.UDP, A.ip), 'to', B),
    { verdict: SHOT, reason: POLICY_DENIED },
    "the same packet at B's hook is not a reply",
  );
  const lp = next();
  t.same(
    run(from4(A, B.ip, tcp(lp, 80, TCP_FLAGS.SYN, 5), PROTO.TCP), 'from', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    'B is closed to A',
  );
  await p.apply(`${CLOSED}---\n${B_FROM_A}`);
  t.same(run(from4(A, B.ip, tcp(lp, 80, TCP_FLAGS.SYN, 6), PROTO.TCP), 'from', A), { verdict: REDIRECT }, 'now A -> B:80');
  t.same(
    run(from4(B, A.ip, tcp(80, lp, TCP_FLAGS.SYN | TCP_FLAGS.ACK), PROTO.TCP), 'from', B),
    { verdict: REDIRECT },
    "B's reply reaches A although A is closed",
  );
  // B goes away without its flows being flushed and C takes its address: C is not B's pair.
  h.dp.removeEndpoint(B.ifindex, [B.ip, B.ip6]);
  const C2 = { ...C, ip: B.ip };
  h.dp.upsertEndpoint({
    hostIfindex: C.ifindex,
    endpointId: C.id,
    identity: p.identity(C),
    flags: 0,
    hostMac: C.hostMac,
    containerMac: C.mac,
    ips: [B.ip, C.ip6],
    gateway6: GW6,
  });
  await p.engine.endpointAttached(
    endpointRecord(C.id, {
      hostIfIndex: C.ifindex,
      hostMac: C.hostMac,
      mac: C.mac,
      labels: C.labels,
      identity: p.identity(C),
      ips: [{ address: `${B.ip}/32`, gateway: '10.0.0.254', family: 4, subnet: '10.0.0.0/8' }],
    }),
  );
  t.same(
    run(from4(C2, A.ip, tcp(80, lp, TCP_FLAGS.ACK), PROTO.TCP), 'from', C2),
    { verdict: SHOT, reason: POLICY_DENIED },
    "C with B's old address cannot ride B's entry into A",
  );
  t.teardown(() => {
    h.dp.removeEndpoint(C.ifindex, [B.ip, C.ip6]);
    for (const e of [B, C])
      h.dp.upsertEndpoint({
        hostIfindex: e.ifindex,
        endpointId: e.id,
        identity: p.identity(e),
        flags: 0,
        hostMac: e.hostMac,
        containerMac: e.mac,
        ips: [e.ip, e.ip6],
        gateway6: GW6,
      });
  });
});

t.test('the forged C:53 -> D:4444 datagram creates nothing D could reply through', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(CLOSED);
  // A sends as C to B: dropped before conntrack sees it.
  t.same(run(from4(A, B.ip, udp(53, 4444), PROTO.UDP, C.ip), 'from', A), { verdict: SHOT, reason: 132 }, 'spoofed as C');
  t.same(
    run(from4(B, C.ip, udp(4444, 53), PROTO.UDP), 'from', B),
    { verdict: SHOT, reason: POLICY_DENIED },
    'B\'s "reply" meets C\'s closed ingress',
  );
});

t.test('ICMP errors are related only to flows of the endpoint receiving them', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(CLOSED);
  const sp = next();
  t.same(run(from4(A, W, tcp(sp, 443, TCP_FLAGS.SYN), PROTO.TCP), 'from', A), { verdict: OK });
  const aFlow = quote(A.ip, W, tcp(sp, 443, TCP_FLAGS.SYN), PROTO.TCP);
  t.same(run(to4(A, R, unreachable(aFlow), PROTO.ICMP), 'to', A), { verdict: OK }, 'from a router on the way: related');
  t.same(run(to4(A, W, unreachable(aFlow), PROTO.ICMP), 'to', A), { verdict: OK }, 'from the peer: related');
  const bp = next();
  t.same(run(from4(B, W, tcp(bp, 443, TCP_FLAGS.SYN), PROTO.TCP), 'from', B), { verdict: OK }, "B's own flow to the world");
  const bFlow = quote(B.ip, W, tcp(bp, 443, TCP_FLAGS.SYN), PROTO.TCP);
  t.same(
    run(to4(A, R, unreachable(bFlow), PROTO.ICMP), 'to', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    "an error quoting B's packet, sent to A",
  );
  t.same(
    run(to4(B, R, unreachable(aFlow), PROTO.ICMP), 'to', B),
    { verdict: SHOT, reason: POLICY_DENIED },
    "an error quoting A's packet, sent to B",
  );
  t.same(
    run(to4(A, R, unreachable(quote(A.ip, W, tcp(sp + 1000, 443, TCP_FLAGS.SYN), PROTO.TCP)), PROTO.ICMP), 'to', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    'quoting a flow nobody has',
  );
  // Pod to pod: B may report on A's packets to B, C may not report on them.
  await p.apply(`${CLOSED}---\n${B_FROM_A}`);
  const up = next();
  t.same(run(from4(A, B.ip, udp(up, 9999), PROTO.UDP), 'from', A), { verdict: REDIRECT }, 'A -> B:9999');
  const toB = quote(A.ip, B.ip, udp(up, 9999), PROTO.UDP);
  t.same(run(from4(B, A.ip, unreachable(toB), PROTO.ICMP), 'from', B), { verdict: REDIRECT }, 'B: port unreachable back to A');
  t.same(
    run(from4(C, A.ip, unreachable(toB), PROTO.ICMP), 'from', C),
    { verdict: SHOT, reason: POLICY_DENIED },
    'C quoting A -> B: not related',
  );
  t.same(
    run(from4(B, C.ip, unreachable(toB), PROTO.ICMP), 'from', B),
    { verdict: SHOT, reason: POLICY_DENIED },
    'B sending it to C: not related',
  );
});

t.test("NDP and MLD stay on the endpoint's own link", async (t) => {
  t.teardown(() => p.clear());
  await p.apply(CLOSED);
  const ns = icmp(135, 0, 0, Buffer.alloc(16)),
    na = icmp(136, 0, 0x60000000, Buffer.alloc(16));
  const cases: [string, Buffer, 'from' | 'to', number][] = [
    ['NS to the solicited-node group', from6(A, A.ip6, 'ff02::1:ff00:fe', ns), 'from', OK],
    ['NS to its gateway (NUD)', from6(A, A.ip6, GW6, ns), 'from', OK],
    ['RS to all routers', from6(A, 'fe80::1', 'ff02::2', icmp(133, 0, 0)), 'from', OK],
    ['MLD report from link-local', from6(A, 'fe80::1', 'ff02::16', icmp(143, 0, 0), 1), 'from', OK],
    ['NA from the host', to6(A, 'fe80::ff', A.ip6, na), 'to', OK],
    ['NA from the host, global source', to6(A, GW6, A.ip6, na), 'to', OK],
    ['MLD query from the host', to6(A, 'fe80::ff', 'ff02::1', icmp(130, 0, 0), 1), 'to', OK],
    ['NS to another pod', from6(A, A.ip6, B.ip6, ns), 'from', SHOT],
    ['NS to the world', from6(A, A.ip6, '2001:db8::5', ns), 'from', SHOT],
    ['NS with hop limit 64', from6(A, A.ip6, 'ff02::1:ff00:fe', ns, 64), 'from', SHOT],
    ['a router advertisement from a pod', from6(A, 'fe80::1', 'ff02::1', icmp(134, 0, 0)), 'from', SHOT],
    ['a redirect from a pod', from6(A, A.ip6, 'fe80::2', icmp(137, 0, 0, Buffer.alloc(32))), 'from', SHOT],
    ['MLD from a global source', from6(A, A.ip6, 'ff02::16', icmp(143, 0, 0), 1), 'from', SHOT],
    ['routed NA (hop limit 254)', to6(A, B.ip6, A.ip6, na, 254), 'to', SHOT],
    ['routed MLD query from a global source', to6(A, '2001:db8::5', 'ff02::1', icmp(130, 0, 0), 1), 'to', SHOT],
  ];
  for (const [what, pkt, hook, verdict] of cases) {
    t.same(run(pkt, hook, A), verdict === OK ? { verdict } : { verdict, reason: FORBIDDEN_ICMPV6 }, what);
  }
  t.same(
    run(from6(A, A.ip6, B.ip6, echo(128, 9)), 'from', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    'echo to B is policy as usual (B is closed)',
  );
});

t.test('a policy change revokes the established flows it denies; allowing them again lets them resume', async (t) => {
  t.teardown(() => p.clear());
  const denyAB = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: c}}]}]
`;
  await p.apply(`${CLOSED}---\n${B_FROM_A}`);
  const lp = next(),
    wp = next();
  const ack = (seq: number) => from4(A, B.ip, tcp(lp, 80, TCP_FLAGS.ACK, seq), PROTO.TCP);
  const back = () => from4(B, A.ip, tcp(80, lp, TCP_FLAGS.ACK), PROTO.TCP);
  t.equal(h.from(from4(A, B.ip, tcp(lp, 80, TCP_FLAGS.SYN, 1), PROTO.TCP), A.ifindex), REDIRECT);
  t.equal(h.from(from4(B, A.ip, tcp(80, lp, TCP_FLAGS.SYN | TCP_FLAGS.ACK), PROTO.TCP), B.ifindex), REDIRECT);
  t.equal(h.from(ack(2), A.ifindex), REDIRECT, 'A -> B established');
  t.equal(h.from(from4(B, W, udp(wp, 53), PROTO.UDP), B.ifindex), OK, 'B -> world (egress open)');

  await p.apply(`${CLOSED}---\n${denyAB}`);
  t.same(
    run(ack(3), 'from', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    "the initiator's next packet is checked again: denied",
  );
  t.same(
    run(back(), 'from', B),
    { verdict: SHOT, reason: POLICY_DENIED },
    "the other side's packets are dropped too (no pick-up as a new flow)",
  );
  t.same(run(back(), 'from', B), { verdict: SHOT, reason: POLICY_DENIED }, 'and stay dropped');
  t.equal(h.from(from4(B, W, udp(wp, 53), PROTO.UDP), B.ifindex), OK, 'a flow the change does not touch is not revoked');

  await p.apply(`${CLOSED}---\n${B_FROM_A}`);
  // Denied both ways (A's ingress is closed), the revoked entry was forgotten: the flow is picked up
  // again as a new one by the initiator's next segment that carries data (a bare ACK of no flow
  // passes untracked, bpf/lib/ct_create.h).
  const data = (seq: number) =>
    from4(A, B.ip, Buffer.concat([tcp(lp, 80, TCP_FLAGS.ACK | TCP_FLAGS.PSH, seq), Buffer.from('x')]), PROTO.TCP);
  t.equal(h.from(data(4), A.ifindex), REDIRECT, "allowed again: the initiator's next packet passes");
  t.equal(h.from(back(), B.ifindex), REDIRECT, 'and the replies with it');

  // An endpoint in audit mode keeps its flows: the policy would only have reported them.
  await p.engine.setAudit(`c${B.id}`, 'eth0', true);
  t.teardown(() => p.engine.setAudit(`c${B.id}`, 'eth0', null));
  await p.apply(`${CLOSED}---\n${denyAB}`);
  t.equal(h.from(back(), B.ifindex), REDIRECT, 'audit mode: not revoked');
});

// Replies are looked up reverse key first when they look like replies (a SYN-ACK, a source port below
// the destination port): the order must never change a verdict, whichever way the ports point.
t.test('a flow is found both ways whatever its ports suggest (reply-first lookup order)', async (t) => {
  t.teardown(() => p.clear());
  await p.apply(CLOSED);
  const lo = 1000 + (next() % 1000),
    hi = 50000 + (next() % 10000);
  // A's flows from a low port to a high one: its own packets look like replies, the answers do not.
  t.same(run(from4(A, W, udp(lo, hi), PROTO.UDP), 'from', A), { verdict: OK }, 'UDP A:lo -> world:hi');
  t.same(run(to4(A, W, udp(hi, lo), PROTO.UDP), 'to', A), { verdict: OK }, "its answer passes A's closed ingress");
  t.same(run(from4(A, W, udp(lo, hi), PROTO.UDP), 'from', A), { verdict: OK }, "A's next datagram");
  t.same(run(to4(A, W, udp(hi, lo), PROTO.UDP), 'to', A), { verdict: OK }, 'and the next answer');
  t.same(run(from4(A, W, tcp(lo, hi, TCP_FLAGS.SYN, 7), PROTO.TCP), 'from', A), { verdict: OK }, 'TCP SYN A:lo -> world:hi');
  t.same(run(to4(A, W, tcp(hi, lo, TCP_FLAGS.SYN | TCP_FLAGS.ACK), PROTO.TCP), 'to', A), { verdict: OK }, 'the SYN-ACK passes');
  t.same(run(from4(A, W, tcp(lo, hi, TCP_FLAGS.ACK, 8), PROTO.TCP), 'from', A), { verdict: OK }, "A's ACK");
  t.same(run(to4(A, W, tcp(hi, lo, TCP_FLAGS.ACK), PROTO.TCP), 'to', A), { verdict: OK }, 'data from the world');
  // The world's packets that look like replies but belong to no flow of A's are new flows: denied.
  t.same(
    run(to4(A, W, tcp(lo, hi, TCP_FLAGS.ACK), PROTO.TCP), 'to', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    "A's own tuple turned around is no reply",
  );
  t.same(
    run(to4(A, W, udp(lo - 1, hi), PROTO.UDP), 'to', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    'a low-port datagram of no flow',
  );
  t.same(
    run(to4(A, W, tcp(80, hi, TCP_FLAGS.SYN | TCP_FLAGS.ACK), PROTO.TCP), 'to', A),
    { verdict: SHOT, reason: POLICY_DENIED },
    'a SYN-ACK of no flow',
  );
});
