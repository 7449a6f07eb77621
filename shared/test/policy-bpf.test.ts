// The datapath's conntrack, policy and event logic against crafted packets (BPF_PROG_TEST_RUN), with
// entries written by the real policy engine: verdicts, the destination's ingress on the redirect path,
// replies, SYN reuse, related ICMP, audit modes, drop counters, flow events and their rate limit.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadDatapath, removePins, type Datapath } from '../src/bpf/datapath.ts';
import { objGet, progTestRun } from '../src/bpf/libbpf.ts';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { datapathOps } from '../src/policy/datapath-ops.ts';
import { RingBufferReader } from '../src/flows/ringbuf.ts';
import { decodeTraceEvent, TRACE_EVENT_SIZE, type TraceEvent } from '../src/flows/event.ts';
import * as conntrack from '../src/maps/conntrack.ts';
import { ACK, DST, endpoint, FIN, ipv4, ipv6, RST, SRC, SYN, tcp } from './lib/policy-bpf-packets.ts';

const OK = 0,
  SHOT = 2,
  REDIRECT = 7;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const mounted =
  fs.existsSync('/proc/self/mounts') &&
  fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === '/sys/fs/bpf');
if (process.getuid?.() !== 0 || !mounted) {
  t.plan(0, 'needs root and bpffs');
  process.exit(0);
}

execFileSync('bash', [path.join(root, 'scripts/build-bpf.sh')], { stdio: 'inherit' });
const pinDir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
let dp: Datapath;
let engine: PolicyEngine;
let fromFd = -1,
  toFd = -1;
let ring: RingBufferReader;
const ids: Record<string, number> = {};

const from = (pkt: Buffer) => progTestRun(fromFd, pkt).retval;
const to = (pkt: Buffer) => progTestRun(toFd, pkt).retval;
const drained = (): TraceEvent[] => {
  const out: TraceEvent[] = [];
  ring.drain(10000, (data, off, len) => {
    // A pod-to-pod packet's two observation points come as one record (events.h emit_event_pair).
    for (let o = off; o < off + len; o += TRACE_EVENT_SIZE) out.push(decodeTraceEvent(data, o));
  });
  return out;
};
const policyDrops = () => dp.dropCounters()[133]?.packets ?? 0n; // POLICY_DENIED
/** B closed for ingress: an ingress section that admits nothing. */
const B_CLOSED = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-closed}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{}]
`;
let port = 30000;
const nextPort = () => ++port;

t.before(async () => {
  dp = loadDatapath({ objectPath: path.join(root, 'dist/bpf/endpoint.o'), pinDir });
  engine = await PolicyEngine.open({ store: new MemoryStore(), ops: datapathOps(dp), hostAddresses: () => ['10.252.0.254'] });
  await engine.start();
  for (const e of [SRC, DST]) {
    ids[e.id] = await engine.identityFor(e.labels);
    const ep = endpoint(e, ids[e.id]);
    dp.upsertEndpoint({
      hostIfindex: e.ifindex,
      endpointId: e.id,
      identity: ids[e.id],
      flags: 0,
      hostMac: ep.hostMac,
      containerMac: ep.mac,
      ips: [e.ip, e.ip6],
    });
    await engine.endpointAttached(ep);
  }
  dp.setGlobalConfig({ events: true, audit: false });
  fromFd = objGet(path.join(pinDir, 'prog_from_container'));
  toFd = objGet(path.join(pinDir, 'prog_to_container'));
  ring = RingBufferReader.open(path.join(pinDir, 'events'));
});
t.teardown(() => {
  ring?.close();
  for (const fd of [fromFd, toFd]) if (fd >= 0) fs.closeSync(fd);
  dp?.close();
  removePins(pinDir);
});

t.test('egress policy on the redirect path, drop counter and events', async (t) => {
  t.teardown(() => engine.delete('all'));
  await engine.importText(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-out}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress: [{toEndpoints: [{matchLabels: {app: b}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
`);
  drained();
  const sp = nextPort();
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN))), REDIRECT, 'allowed SYN is redirected');
  const [ev] = drained();
  t.match(
    ev,
    {
      type: 1,
      verdict: 2,
      direction: 1,
      endpointId: SRC.id,
      srcIdentity: ids[SRC.id],
      dstIdentity: ids[DST.id],
      sport: sp,
      dport: 80,
      proto: 6,
      family: 4,
      saddr: SRC.ip,
      daddr: DST.ip,
    },
    'FLOW_NEW names both identities',
  );
  t.match(engine.describeRule(ev.ruleId), { policy: 'a-out', path: 'spec.egress[0]' }, 'and the rule');
  const d0 = policyDrops();
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 81, SYN))), SHOT, 'port 81 is dropped');
  t.equal(policyDrops(), d0 + 1n, 'counted as POLICY_DENIED');
  t.match(drained(), [{ type: 2, reason: 133, verdict: 1, ruleId: 0, dport: 81 }], 'DROP event, rule 0 = default deny');
  t.equal(from(ipv4(SRC.ip, '198.51.100.7', 6, tcp(nextPort(), 80, SYN))), SHOT, 'to the world: denied');
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, ACK))), REDIRECT, 'the established flow continues');
});

t.test("the destination's ingress policy applies on the redirect path; replies pass", async (t) => {
  t.teardown(() => engine.delete('all'));
  await engine.importText(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-in}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: c}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-in}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{}]
`);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 80, SYN))), SHOT, 'b does not admit a');
  // a -> world is not restricted; the reply arrives at a's to_container although a's ingress denies all.
  const sp = nextPort();
  t.equal(from(ipv4(SRC.ip, '198.51.100.9', 6, tcp(sp, 443, SYN))), OK, 'a -> world goes up the stack');
  t.equal(to(ipv4('198.51.100.9', SRC.ip, 6, tcp(443, sp, SYN | ACK))), OK, 'the reply passes');
  t.equal(to(ipv4('198.51.100.9', SRC.ip, 6, tcp(443, nextPort(), SYN))), SHOT, 'a new inbound connection does not');
  // Related ICMP: "port unreachable" about the a -> world flow passes; about an unknown flow it does not.
  const inner = ipv4(SRC.ip, '198.51.100.9', 6, tcp(sp, 443, ACK)).subarray(14, 14 + 28);
  const icmp = (payload: Buffer) => Buffer.concat([Buffer.from([3, 3, 0, 0, 0, 0, 0, 0]), payload]);
  t.equal(to(ipv4('198.51.100.9', SRC.ip, 1, icmp(inner))), OK, 'related ICMP error passes');
  const unrelated = ipv4(SRC.ip, '198.51.100.9', 6, tcp(9, 9, ACK)).subarray(14, 14 + 28);
  t.equal(to(ipv4('198.51.100.9', SRC.ip, 1, icmp(unrelated))), SHOT, 'unrelated ICMP error is dropped');
  // IPv6 neighbour discovery from the host (hop limit 255: nothing routed arrives with it) passes.
  const ns = Buffer.concat([Buffer.from([135, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(16)]);
  t.equal(to(ipv6('::9', '::1', 58, ns, 255)), OK, 'NDP from the host passes a default-deny ingress');
  t.equal(to(ipv6('::9', '::1', 58, ns, 254)), SHOT, 'routed NDP does not');
});

t.test('a SYN on a closed flow is a new flow; FLOW_END carries totals', async (t) => {
  t.teardown(() => engine.delete('all'));
  const sp = nextPort();
  drained();
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN, 111))), REDIRECT);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN, 111))), REDIRECT, 'retransmitted SYN: same flow');
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, ACK | FIN))), REDIRECT);
  const ends = drained().filter((e) => e.type === 3);
  t.equal(ends.length, 2, 'one FLOW_END per enforcement point (a egress, b ingress)');
  t.match(ends[0], { packets: 3, sport: sp, dport: 80 });
  await engine.importText(B_CLOSED);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN, 222))), SHOT, 'same tuple, new SYN: the new policy applies');
  const rst = nextPort();
  await engine.delete('all');
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(rst, 80, SYN, 5))), REDIRECT);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(rst, 80, RST))), REDIRECT);
  await engine.importText(B_CLOSED);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(rst, 80, SYN, 5))), SHOT, 'after RST even the same ISN starts over');
});

t.test('a finished connection leaves the table (no LRU pressure from churn)', async (t) => {
  const ctEntries = () => dp.mapPressure().conntrack.entries;
  const W = '198.51.100.77';
  const sp = nextPort();
  const before = ctEntries();
  t.equal(from(ipv4(SRC.ip, W, 6, tcp(sp, 80, SYN))), OK);
  t.equal(to(ipv4(W, SRC.ip, 6, tcp(80, sp, SYN | ACK))), OK);
  t.equal(ctEntries(), before + 1, 'one entry: a egress');
  t.equal(from(ipv4(SRC.ip, W, 6, tcp(sp, 80, FIN | ACK, 1000, 2000))), OK);
  t.equal(to(ipv4(W, SRC.ip, 6, tcp(80, sp, FIN | ACK, 2000, 1001))), OK, "W's FIN acknowledges a's");
  t.equal(ctEntries(), before + 1, 'still there until the last ACK');
  t.equal(from(ipv4(SRC.ip, W, 6, tcp(sp, 80, ACK, 1001, 2001))), OK);
  t.equal(ctEntries(), before, 'gone after the last ACK');
  // Both ends close at once: the FINs cross, then each side ACKs the other's. The entry stays for the
  // second ACK, which is the connection's last packet, not a new flow (no FLOW_NEW for it).
  const x = nextPort();
  from(ipv4(SRC.ip, W, 6, tcp(x, 80, SYN, 999)));
  to(ipv4(W, SRC.ip, 6, tcp(80, x, SYN | ACK, 1999, 1000)));
  t.equal(from(ipv4(SRC.ip, W, 6, tcp(x, 80, FIN | ACK, 1000, 2000))), OK);
  t.equal(to(ipv4(W, SRC.ip, 6, tcp(80, x, FIN | ACK, 2000, 1000))), OK, "W's FIN crosses a's");
  t.equal(from(ipv4(SRC.ip, W, 6, tcp(x, 80, ACK, 1001, 2001))), OK, "a ACKs W's FIN");
  t.equal(ctEntries(), before + 1, "kept for W's ACK of a's FIN");
  drained();
  t.equal(to(ipv4(W, SRC.ip, 6, tcp(80, x, ACK, 2001, 1001))), OK, "W ACKs a's FIN");
  t.equal(ctEntries(), before, 'gone after it');
  t.same(
    drained().filter((e) => e.type === 1),
    [],
    'and it was no new flow',
  );
  const rs = nextPort();
  from(ipv4(SRC.ip, W, 6, tcp(rs, 80, SYN)));
  to(ipv4(W, SRC.ip, 6, tcp(80, rs, RST | ACK)));
  t.equal(ctEntries(), before, 'and at once after a RST');
});

t.test('audit mode: per endpoint and agent-wide', async (t) => {
  t.teardown(async () => {
    dp.setGlobalConfig({ events: true, audit: false });
    await engine.setAudit('c22', 'eth0', null);
    await engine.delete('all');
  });
  await engine.importText(B_CLOSED);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 80, SYN))), SHOT);
  await engine.setAudit('c22', 'eth0', true);
  drained();
  const d0 = policyDrops();
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 80, SYN))), REDIRECT, 'endpoint audit: passes');
  t.match(
    drained().find((e) => e.endpointId === DST.id),
    { type: 1, verdict: 3, flags: 1 },
    'reported as AUDIT',
  );
  t.equal(policyDrops(), d0, 'not counted as a drop');
  await engine.setAudit('c22', 'eth0', false);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 80, SYN))), SHOT, 'audit off again');
  dp.setGlobalConfig({ events: true, audit: true });
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 80, SYN))), REDIRECT, 'agent-wide audit: passes');
  t.same(dp.globalConfig(), { events: true, audit: true, eventsPerSecond: 0, eventsBurst: 0, ctPerEndpoint: 0 });
});

t.test('IPv6 and ICMP policy', async (t) => {
  t.teardown(() => engine.delete('all'));
  await engine.importText(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-v6}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - icmps: [{fields: [{type: 8}]}]
`);
  t.equal(from(ipv6('::1', '::2', 6, tcp(nextPort(), 443, SYN))), REDIRECT, 'v6 443 allowed');
  t.equal(from(ipv6('::1', '::2', 6, tcp(nextPort(), 444, SYN))), SHOT, 'v6 444 denied');
  const echo = (type: number, id: number) => Buffer.from([type, 0, 0, 0, id >> 8, id & 255, 0, 1]);
  t.equal(from(ipv4(SRC.ip, DST.ip, 1, echo(8, 77))), REDIRECT, 'ICMP echo request allowed by type');
  t.equal(from(ipv4(SRC.ip, DST.ip, 1, echo(13, 78))), SHOT, 'timestamp request is not');
  t.equal(from(ipv6('::1', '::2', 58, echo(128, 79))), SHOT, 'ICMPv6 echo is a different protocol');
});

t.test('event rate limit counts what it suppresses', async (t) => {
  t.teardown(() => dp.setGlobalConfig({ events: true, audit: false }));
  dp.setGlobalConfig({ events: true, audit: false, eventsPerSecond: 1, eventsBurst: 1 });
  drained();
  const lost0 = dp.eventsLost();
  for (let i = 0; i < 20; i++) from(ipv4(SRC.ip, '198.51.100.20', 17, Buffer.from([0, 53, 0, 53, 0, 8, 0, 0]).fill(i, 0, 1)));
  const got = drained().length;
  t.ok(got <= 2, `${got} events delivered`);
  t.ok(dp.eventsLost() - lost0 >= 18n, `${dp.eventsLost() - lost0} counted in events_lost`);
  dp.setGlobalConfig({ events: false, audit: false });
  from(ipv4(SRC.ip, '198.51.100.21', 17, Buffer.from([0, 54, 0, 53, 0, 8, 0, 0])));
  t.equal(drained().length, 0, 'events off: none');
});

t.test('conntrack: flush by address, GC of expired entries', async (t) => {
  t.teardown(() => engine.delete('all'));
  const sp = nextPort();
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN))), REDIRECT);
  t.equal(dp.gcConntrack(), 0, 'nothing has expired yet');
  t.ok(dp.flushConntrack([DST.ip]) >= 1, 'the flow is flushed');
  await engine.importText(B_CLOSED);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, ACK))), SHOT, 'after the flush, the flow meets the policy again');
  await engine.delete('all');
  from(ipv4(SRC.ip, DST.ip, 17, Buffer.from([0, 99, 0, 53, 0, 8, 0, 0])));
  const hour = 3600n * 1_000_000_000n;
  t.ok(dp.gcConntrack(process.hrtime.bigint() + hour) >= 2, 'an hour later the UDP flow has expired and is collected');
});

t.test('conntrack: flush by endpoint id takes the flows bound to that id and no other', async (t) => {
  const sp = nextPort();
  const udp = Buffer.from([0, 0, 0, 53, 0, 8, 0, 0]);
  udp.writeUInt16BE(sp, 0);
  t.equal(from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN))), REDIRECT, 'pod to pod: bound to both ids');
  from(ipv4(SRC.ip, '198.51.100.30', 17, udp));
  const flows = () => conntrack.list(dp.mapFd('conntrack'), process.hrtime.bigint()).filter((e) => e.sport === sp);
  const toDst = () => flows().filter((e) => e.daddr === DST.ip).length;
  const toWorld = () => flows().filter((e) => e.daddr === '198.51.100.30').length;
  t.ok(toDst() >= 1 && toWorld() >= 1, 'both flows are tracked');
  t.ok(dp.flushConntrackOf([DST.id]) >= 1, "the receiver's id flushes the pod-to-pod flow");
  t.equal(toDst(), 0, 'pod-to-pod flow gone');
  t.equal(toWorld(), 1, "the sender's flow to the world stays");
  t.equal(dp.flushConntrackOf([999]), 0, 'an id nobody has flushes nothing');
  t.ok(dp.flushConntrackOf([SRC.id]) >= 1, "the sender's id flushes it");
  t.equal(toWorld(), 0);
});

t.test('in-kernel cost (BPF_PROG_TEST_RUN, warm)', async (t) => {
  dp.setGlobalConfig({ events: false, audit: false });
  const sp = nextPort();
  from(ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, SYN)));
  const est = progTestRun(fromFd, ipv4(SRC.ip, DST.ip, 6, tcp(sp, 80, ACK)), { repeat: 100000 }).durationNs;
  await engine.importText(B_CLOSED);
  const denied = progTestRun(fromFd, ipv4(SRC.ip, DST.ip, 6, tcp(nextPort(), 80, SYN)), { repeat: 100000 }).durationNs;
  await engine.delete('all');
  t.comment(`established pod-to-pod packet (both enforcement points): ${est} ns; denied new flow: ${denied} ns`);
  t.ok(est > 0 && denied > 0);
  dp.setGlobalConfig({ events: true, audit: false });
});
