// Anti-spoofing in from_container (BPF_PROG_TEST_RUN, root + bpffs): a frame leaves the container only
// with the endpoint's own source MAC and its own IPv4/IPv6 source (IPv6 link-local only towards its
// own link), ARP only for its own address; on the redirect short-cut and towards the host alike. Drops
// are counted by reason and reported as DROP events.
import t from 'tap';
import path from 'node:path';
import { RingBufferReader } from '../src/flows/ringbuf.ts';
import { progTestRun } from '../src/bpf/libbpf.ts';
import { decodeTraceEvent, TRACE_EVENT_SIZE, type TraceEvent } from '../src/flows/event.ts';
import { arp, echo, eth, ETH_P, icmp, ipv4, ipv6, PROTO, TCP_FLAGS, tcp, udp } from '../src/bpf/packets.ts';
import { bpfHarness, OK, REDIRECT, requireBpf, runCounted, SHOT } from './lib/bpf-harness.ts';

requireBpf();

const SRC = {
  hostIfindex: 1,
  endpointId: 41,
  identity: 4001,
  flags: 0,
  hostMac: '02:00:00:00:29:01',
  containerMac: '02:00:00:00:29:02',
  ips: ['10.254.0.1', 'fd00:fe::1'],
  gateway6: 'fd00:fe::fe',
};
const DST = {
  hostIfindex: 900041,
  endpointId: 42,
  identity: 4002,
  flags: 0,
  hostMac: '02:00:00:00:2a:01',
  containerMac: '02:00:00:00:2a:02',
  ips: ['10.254.0.2', 'fd00:fe::2'],
};
const WORLD4 = '198.18.7.7',
  WORLD6 = '2001:db8::7';
const INVALID_SOURCE_MAC = 130,
  SOURCE_SPOOFED = 132,
  INVALID_PACKET = 134,
  UNSUPPORTED_L3 = 139;

const h = bpfHarness({ endpoints: [SRC, DST] });
let ring: RingBufferReader;
t.before(() => {
  h.dp.setGlobalConfig({ events: true, audit: false });
  ring = RingBufferReader.open(path.join(h.pinDir, 'events'));
});
t.teardown(() => ring?.close());
const drained = (): TraceEvent[] => {
  const out: TraceEvent[] = [];
  ring.drain(10000, (data, off, len) => {
    // A pod-to-pod packet's two observation points come as one record (events.h emit_event_pair).
    for (let o = off; o < off + len; o += TRACE_EVENT_SIZE) out.push(decodeTraceEvent(data, o));
  });
  return out;
};

const frame4 = (src: string, dst: string, l4: Buffer, proto: number = PROTO.UDP, srcMac = SRC.containerMac) =>
  eth(SRC.hostMac, srcMac, ETH_P.IPV4, ipv4({ src, dst, proto }, l4));
const frame6 = (src: string, dst: string, l4: Buffer, next: number = PROTO.UDP, hopLimit = 64, srcMac = SRC.containerMac) =>
  eth(SRC.hostMac, srcMac, ETH_P.IPV6, ipv6({ src, dst, next, hopLimit }, l4));

const run = (pkt: Buffer) => runCounted(h, 'from', pkt);

t.test('its own addresses pass, on the short-cut and towards the host', async (t) => {
  t.same(run(frame4(SRC.ips[0], DST.ips[0], udp(5000, 53))), { verdict: REDIRECT });
  t.same(run(frame4(SRC.ips[0], WORLD4, udp(5000, 53))), { verdict: OK });
  t.same(run(frame6(SRC.ips[1], DST.ips[1], udp(5000, 53))), { verdict: REDIRECT });
  t.same(run(frame6(SRC.ips[1], WORLD6, udp(5000, 53))), { verdict: OK });
});

t.test('another source address is dropped as SOURCE_SPOOFED and reported', async (t) => {
  drained();
  for (const [what, pkt] of [
    ['IPv4 as another pod, to a pod', frame4(DST.ips[0], '10.254.0.3', udp(53, 4444))],
    ['IPv4 as another pod, to the world', frame4(DST.ips[0], WORLD4, tcp(53, 4444, TCP_FLAGS.SYN), PROTO.TCP)],
    ['IPv4 from an address nobody has', frame4('10.254.0.99', DST.ips[0], udp(1, 2))],
    ['IPv4 from 0.0.0.0', frame4('0.0.0.0', DST.ips[0], udp(68, 67))],
    ['IPv6 as another pod', frame6(DST.ips[1], WORLD6, udp(53, 4444))],
    ['IPv6 from an address nobody has', frame6('fd00:fe::99', DST.ips[1], echo(128, 7), PROTO.ICMPV6)],
  ] as const)
    t.same(run(pkt), { verdict: SHOT, reason: SOURCE_SPOOFED }, what);
  const events = drained();
  t.equal(events.length, 6, 'one DROP event per spoofed packet');
  t.match(events[0], {
    type: 2,
    reason: SOURCE_SPOOFED,
    verdict: 1,
    direction: 1,
    endpointId: SRC.endpointId,
    srcIdentity: SRC.identity,
    saddr: DST.ips[0],
    daddr: '10.254.0.3',
  });
});

t.test("a frame with another source MAC is dropped as INVALID_SOURCE_MAC, even with the endpoint's own address", async (t) => {
  t.same(run(frame4(SRC.ips[0], DST.ips[0], udp(1, 2), PROTO.UDP, DST.containerMac)), {
    verdict: SHOT,
    reason: INVALID_SOURCE_MAC,
  });
  t.same(run(frame6(SRC.ips[1], WORLD6, udp(1, 2), PROTO.UDP, 64, '02:00:00:00:00:99')), {
    verdict: SHOT,
    reason: INVALID_SOURCE_MAC,
  });
});

t.test('IPv6 link-local and unspecified sources only towards its own link', async (t) => {
  const ns = icmp(135, 0, 0, Buffer.alloc(16));
  t.same(run(frame6('fe80::1', 'ff02::1:ff00:fe', ns, PROTO.ICMPV6, 255)), { verdict: OK }, 'NDP to the solicited-node group');
  t.same(run(frame6('fe80::1', 'fe80::2', ns, PROTO.ICMPV6, 255)), { verdict: OK }, 'NDP to a link-local address');
  t.same(run(frame6('fe80::1', SRC.gateway6, ns, PROTO.ICMPV6, 255)), { verdict: OK }, 'NDP to its gateway');
  t.same(run(frame6('::', 'ff02::16', icmp(143, 0, 0), PROTO.ICMPV6, 1)), { verdict: OK }, 'MLD report from ::');
  t.same(run(frame6('fe80::1', DST.ips[1], udp(1, 2))), { verdict: SHOT, reason: SOURCE_SPOOFED }, 'link-local to another pod');
  t.same(
    run(frame6('fe80::1', WORLD6, tcp(1, 80, TCP_FLAGS.SYN), PROTO.TCP)),
    { verdict: SHOT, reason: SOURCE_SPOOFED },
    'link-local to the world',
  );
  t.same(run(frame6('::', DST.ips[1], udp(1, 2))), { verdict: SHOT, reason: SOURCE_SPOOFED }, 'unspecified to another pod');
});

t.test('ARP speaks only for its own address and MAC', async (t) => {
  const frame = (body: Buffer, srcMac = SRC.containerMac) => eth('ff:ff:ff:ff:ff:ff', srcMac, ETH_P.ARP, body);
  t.same(
    run(frame(arp(1, SRC.containerMac, SRC.ips[0], '00:00:00:00:00:00', '10.254.0.254'))),
    { verdict: OK },
    'request for the gateway',
  );
  t.same(run(frame(arp(2, SRC.containerMac, SRC.ips[0], SRC.hostMac, '10.254.0.254'))), { verdict: OK }, 'reply');
  t.same(run(frame(arp(1, SRC.containerMac, '0.0.0.0', '00:00:00:00:00:00', SRC.ips[0]))), { verdict: OK }, 'probe from 0.0.0.0');
  t.same(
    run(frame(arp(2, SRC.containerMac, DST.ips[0], SRC.hostMac, '10.254.0.254'))),
    { verdict: SHOT, reason: SOURCE_SPOOFED },
    "a reply claiming another pod's address",
  );
  t.same(
    run(frame(arp(2, DST.containerMac, SRC.ips[0], SRC.hostMac, '10.254.0.254'))),
    { verdict: SHOT, reason: INVALID_SOURCE_MAC },
    'another sender MAC',
  );
  t.same(
    run(frame(arp(1, SRC.containerMac, SRC.ips[0], '00:00:00:00:00:00', '10.254.0.254'), DST.containerMac)),
    { verdict: SHOT, reason: INVALID_SOURCE_MAC },
    'another frame source MAC',
  );
  const ipv6Arp = arp(1, SRC.containerMac, SRC.ips[0], '00:00:00:00:00:00', '10.254.0.254');
  ipv6Arp.writeUInt16BE(ETH_P.IPV6, 2);
  t.same(run(frame(ipv6Arp)), { verdict: SHOT, reason: INVALID_PACKET }, 'not Ethernet/IPv4 ARP');
});

t.test('nothing but IPv4, IPv6 and ARP leaves a container', async (t) => {
  t.same(run(eth(SRC.hostMac, SRC.containerMac, 0x88cc, Buffer.alloc(46))), { verdict: SHOT, reason: UNSUPPORTED_L3 }, 'LLDP');
  const tagged = Buffer.concat([
    Buffer.from([0, 5, 0x08, 0x00]),
    ipv4({ src: DST.ips[0], dst: WORLD4, proto: PROTO.UDP }, udp(1, 2)),
  ]);
  t.same(
    run(eth(SRC.hostMac, SRC.containerMac, 0x8100, tagged)),
    { verdict: SHOT, reason: UNSUPPORTED_L3 },
    'a VLAN tag around a spoofed packet',
  );
  t.same(
    run(eth(SRC.hostMac, SRC.containerMac, 0x0030, Buffer.alloc(46))),
    { verdict: SHOT, reason: UNSUPPORTED_L3 },
    '802.3 length field',
  );
});

t.test('an endpoint with several addresses of a family may use each, and only those', async (t) => {
  t.teardown(() => h.dp.upsertEndpoint(SRC));
  h.dp.upsertEndpoint({ ...SRC, ips: [...SRC.ips, '10.254.0.11', 'fd00:fe::11'] });
  t.same(run(frame4('10.254.0.11', WORLD4, udp(1, 2))), { verdict: OK }, 'its second IPv4 address');
  t.same(run(frame6('fd00:fe::11', WORLD6, udp(1, 2))), { verdict: OK }, 'its second IPv6 address');
  t.same(run(frame4(SRC.ips[0], WORLD4, udp(1, 3))), { verdict: OK }, 'its first still');
  t.same(
    run(frame4(DST.ips[0], WORLD4, udp(1, 2))),
    { verdict: SHOT, reason: SOURCE_SPOOFED },
    "another endpoint's address is still spoofed",
  );
  t.same(run(frame4('10.254.0.12', WORLD4, udp(1, 2))), { verdict: SHOT, reason: SOURCE_SPOOFED });
});

t.test('the check costs one compare: in-kernel time of an established packet', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false });
  const pkt = frame4(SRC.ips[0], DST.ips[0], tcp(7777, 80, TCP_FLAGS.ACK), PROTO.TCP);
  h.from(frame4(SRC.ips[0], DST.ips[0], tcp(7777, 80, TCP_FLAGS.SYN), PROTO.TCP));
  const ns = progTestRun(h.fromFd, pkt, { repeat: 100000 }).durationNs;
  t.comment(`established pod-to-pod packet with anti-spoofing: ${ns} ns`);
  t.equal(h.from(pkt), REDIRECT);
});
