// Conntrack under pressure (BPF_PROG_TEST_RUN, root + bpffs): the table never evicts, an endpoint's
// new flows fail closed once it owns its share (others' go on), a full table refuses new flows but
// keeps every established one, the GC keeps the per-endpoint counts right, and a resized table keeps
// its flows.
import t from 'tap';
import path from 'node:path';
import { loadDatapath } from '../src/bpf/datapath.ts';
import { eth, ETH_P, ipv4, PROTO, TCP_FLAGS, tcp, udp } from '../src/bpf/packets.ts';
import { bpfHarness, drops, OK, requireBpf, ROOT, SHOT } from './lib/bpf-harness.ts';

requireBpf();

const A = {
  hostIfindex: 1,
  endpointId: 71,
  identity: 7001,
  flags: 0,
  hostMac: '02:00:00:00:47:01',
  containerMac: '02:00:00:00:47:02',
  ips: ['10.247.0.1'],
};
const B = {
  hostIfindex: 900072,
  endpointId: 72,
  identity: 7002,
  flags: 0,
  hostMac: '02:00:00:00:48:01',
  containerMac: '02:00:00:00:48:02',
  ips: ['10.247.0.2'],
};
const CT_MAX = 1024;
const INSERT_FAILED = 155;

const h = bpfHarness({ ctMax: CT_MAX, endpoints: [A, B] });
const out = (dst: string, l4: Buffer, proto: number = PROTO.UDP) =>
  eth(A.hostMac, A.containerMac, ETH_P.IPV4, ipv4({ src: A.ips[0], dst, proto }, l4));
const inbound = (src: string, l4: Buffer, proto: number = PROTO.UDP) =>
  eth(A.containerMac, A.hostMac, ETH_P.IPV4, ipv4({ src, dst: A.ips[0], proto }, l4));
const world = (i: number) => `198.19.${(i >> 8) & 255}.${i & 255}`;
const HOUR = 3600n * 1_000_000_000n;

t.afterEach(() => {
  h.dp.gcConntrack(process.hrtime.bigint() + 24n * HOUR); // everything expired: a clean table
  h.dp.setGlobalConfig({ events: false, audit: false });
});

t.test('an endpoint over its share fails closed; established flows and other endpoints go on', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false, ctPerEndpoint: 10 });
  for (let i = 0; i < 10; i++) t.equal(h.from(out(world(i), udp(2000, 53))), OK, `flow ${i}`);
  t.equal(h.dp.conntrackOwned(A.endpointId), 10, 'A owns 10 entries');
  const d0 = drops(h.dp, INSERT_FAILED);
  t.equal(h.from(out(world(10), udp(2000, 53))), SHOT, 'the 11th new flow is refused');
  t.equal(h.to(inbound(world(11), udp(53, 2000))), SHOT, 'so is a new inbound one (A owns its ingress entries too)');
  t.equal(drops(h.dp, INSERT_FAILED), d0 + 2n, 'counted as CT_MAP_INSERTION_FAILED');
  t.equal(h.from(out(world(3), udp(2000, 53))), OK, 'an established flow goes on');
  t.equal(h.to(inbound(world(3), udp(53, 2000))), OK, 'its replies too');
  t.equal(h.from(out(B.ips[0], udp(2001, 53))), SHOT, 'A -> B too: pod-to-pod entries belong to the sender');
  // The same interface as another endpoint: its share is untouched by A's.
  h.dp.upsertEndpoint({ ...A, endpointId: B.endpointId, identity: B.identity });
  t.teardown(() => h.dp.upsertEndpoint(A));
  t.equal(h.from(out(world(20), udp(2000, 53))), OK, 'another endpoint still opens new flows');
  t.equal(h.dp.conntrackOwned(B.endpointId), 1);
});

t.test('closing flows give the share back; the GC gives back what expired', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false, ctPerEndpoint: 3 });
  for (let i = 0; i < 3; i++) t.equal(h.from(out(world(100 + i), tcp(3000 + i, 80, TCP_FLAGS.SYN), PROTO.TCP)), OK);
  t.equal(h.from(out(world(103), tcp(3003, 80, TCP_FLAGS.SYN), PROTO.TCP)), SHOT, 'share used up');
  t.equal(h.to(inbound(world(100), tcp(80, 3000, TCP_FLAGS.RST | TCP_FLAGS.ACK), PROTO.TCP)), OK, 'one connection is reset');
  t.equal(h.dp.conntrackOwned(A.endpointId), 2, 'its entry left with it');
  t.equal(h.from(out(world(103), tcp(3003, 80, TCP_FLAGS.SYN), PROTO.TCP)), OK, 'room for a new one');
  t.equal(h.dp.gcConntrack(), 0, 'nothing expired yet');
  t.equal(h.dp.gcConntrack(process.hrtime.bigint() + HOUR), 3, 'an hour on, the half-open connections have expired');
  t.equal(h.dp.conntrackOwned(A.endpointId), 0, 'the GC gave the share back');
  t.same(h.dp.conntrackFill(), { entries: 0, max: CT_MAX });
});

t.test('a full table refuses new flows and evicts no established one', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false, ctPerEndpoint: 0 });
  const first = out(world(0), tcp(4000, 443, TCP_FLAGS.SYN), PROTO.TCP);
  t.equal(h.from(first), OK, 'an established connection');
  t.equal(h.to(inbound(world(0), tcp(443, 4000, TCP_FLAGS.SYN | TCP_FLAGS.ACK), PROTO.TCP)), OK);
  let admitted = 1;
  for (let i = 1; i < CT_MAX + 200; i++) if (h.from(out(world(i), udp(5000, 53))) === OK) admitted++;
  t.equal(admitted, CT_MAX, `exactly ${CT_MAX} flows fit`);
  t.same(h.dp.conntrackFill(), { entries: CT_MAX, max: CT_MAX }, 'the fill level says so');
  t.equal(h.to(inbound(world(0), tcp(443, 4000, TCP_FLAGS.ACK), PROTO.TCP)), OK, 'the first connection still passes as a reply');
  t.equal(h.from(out(world(5), udp(5000, 53))), OK, 'and a flow admitted before the table filled');
  t.equal(h.from(out(world(CT_MAX + 500), udp(5000, 53))), SHOT, 'a new one does not');
});

t.test('a resized table keeps its flows', async (t) => {
  h.dp.setGlobalConfig({ events: false, audit: false, ctPerEndpoint: 0 });
  for (let i = 0; i < 50; i++) h.from(out(world(i), udp(6000, 53)));
  const bigger = loadDatapath({ objectPath: path.join(ROOT, 'dist/bpf/endpoint.o'), pinDir: h.pinDir, ctMax: 4 * CT_MAX });
  t.teardown(() => bigger.close());
  t.equal(bigger.mapCapacity('conntrack'), 4 * CT_MAX, 'the pin now holds the bigger table');
  bigger.gcConntrack(); // sets the counts right for the new table
  t.same(bigger.conntrackFill(), { entries: 50, max: 4 * CT_MAX }, 'with the 50 flows');
});
