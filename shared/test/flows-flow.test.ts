import t from 'tap';
import { decodeTraceEvent, encodeTraceEvent, EventType, type TraceEvent } from '../src/flows/event.ts';
import { buildFlow, layer4, splitOffset, verdictOf, wallTime, type FlowContext, type EndpointView } from '../src/flows/flow.ts';
import { EndpointTable } from '../src/flows/endpoints.ts';
import { VERSION } from '../src/version.ts';
import type { Endpoint } from '../src/types.ts';
import { endpointRecord } from './lib/endpoint-record.ts';

const ep = (id: number, ip: string, labels: Record<string, string>, extra: Partial<Endpoint> = {}): Endpoint =>
  endpointRecord(id, {
    network: 'default',
    netns: '/x',
    hostIfName: `mbr${id}`,
    hostMac: '',
    mac: '',
    ips: [{ address: `${ip}/32`, gateway: '', family: 4, subnet: '' }],
    labels,
    identity: 256 + id,
    ...extra,
  });

const table = EndpointTable.from([
  ep(
    1,
    '10.1.0.2',
    { 'k8s:app': 'client' },
    { metadata: { 'k8s:io.kubernetes.pod.namespace': 'shop', 'k8s:io.kubernetes.pod.name': 'client-1' } },
  ),
  ep(2, '10.1.0.3', { 'k8s:app': 'db' }),
]);
const rules: Record<number, ReturnType<FlowContext['describeRule']>> = {
  0x1000: {
    policy: 'shop/allow-client',
    index: 0,
    direction: 'ingress',
    action: 'allow',
    kind: 'CiliumNetworkPolicy',
    namespace: 'shop',
    revision: 4,
    path: 'spec.ingress[0]',
    matchType: 2,
  },
  0x1c01: {
    policy: 'no-db-egress',
    index: 1,
    direction: 'egress',
    action: 'deny',
    kind: 'CiliumClusterwideNetworkPolicy',
    path: 'specs[0].egressDeny[1]',
  },
};
const ctx: FlowContext = {
  nodeName: 'node-a',
  wallOffset: { seconds: 1_700_000_000, nanos: 0 },
  peerCache: new Map(),
  ruleCache: new Map(),
  endpointById: (id) => table.byEndpointId(id),
  endpointByAddress: (b, o, f) => table.byRaw(b, o, f),
  labelsOfIdentity: (id) => (id === 2 ? { 'reserved:world': '' } : undefined),
  describeRule: (id) => rules[id],
};
const ev = (e: Partial<TraceEvent>) => decodeTraceEvent(encodeTraceEvent({ tsNs: 5_000_000_123, ...e }));

t.test('a new connection that a rule allowed: a policy verdict naming the policy', async (t) => {
  const f = buildFlow(
    ev({
      type: EventType.FLOW_NEW,
      endpointId: 2,
      ifindex: 102,
      direction: 0,
      saddr: '10.1.0.2',
      daddr: '10.1.0.3',
      sport: 40000,
      dport: 5432,
      proto: 6,
      tcpFlags: 0x02,
      srcIdentity: 257,
      dstIdentity: 258,
      ruleId: 0x1000,
      len: 60,
    }),
    ctx,
  );
  t.same(f.time, { seconds: 1_700_000_005, nanos: 123 });
  t.equal(f.verdict, 'FORWARDED');
  t.same(f.eventType, { type: 5 }, 'monitor type 5: policy verdict');
  t.equal(f.policyMatchType, 2, 'L3-L4');
  t.same(f.isReply, {}, 'not a reply (BoolValue false)');
  t.equal(f.trafficDirection, 'INGRESS');
  t.equal(f.Type, 'L3_L4');
  t.same(f.emitter, { name: 'Membrane', version: VERSION });
  t.same(f.source, { ID: 1, identity: 257, labels: ['k8s:app=client'], namespace: 'shop', podName: 'client-1' });
  t.same(f.destination, { ID: 2, identity: 258, labels: ['k8s:app=db'] });
  t.same(f.IP, { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' });
  t.same(f.l4, { TCP: { sourcePort: 40000, destinationPort: 5432, flags: { SYN: true } } });
  t.same(f.ingressAllowedBy, [
    {
      name: 'allow-client',
      namespace: 'shop',
      kind: 'CiliumNetworkPolicy',
      revision: 4,
      membraneRuleIndex: 0,
      membraneRuleId: 0x1000,
      membraneRulePath: 'spec.ingress[0]',
      labels: [
        'k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy',
        'k8s:io.cilium.k8s.policy.name=allow-client',
        'k8s:io.cilium.k8s.policy.namespace=shop',
      ],
    },
  ]);
  t.same(f.interface, { index: 102, name: 'mbr2' });
  t.same(f.membrane, {
    event: 'FLOW_NEW',
    observedByEndpoint: 2,
    length: 60,
    sourceContainerId: 'c1',
    destinationContainerId: 'c2',
  });
  t.equal(f.nodeName, 'node-a');
  t.equal(f.dropReasonDesc, undefined);
  t.equal(f.Summary, 'TCP Flags: SYN; allowed by policy shop/allow-client (ingress allow rule 0)');
});

t.test('a new connection no policy decided: a trace event at the endpoint', async (t) => {
  const f = buildFlow(
    ev({
      type: EventType.FLOW_NEW,
      endpointId: 1,
      direction: 1,
      saddr: '10.1.0.2',
      daddr: '10.1.0.3',
      proto: 17,
      sport: 1,
      dport: 53,
    }),
    ctx,
  );
  t.same(f.eventType, { type: 4, subType: 5 }, 'trace from-endpoint');
  t.equal(f.traceObservationPoint, 'FROM_ENDPOINT');
  t.equal(f.traceReason, 'NEW');
  const g = buildFlow(ev({ type: EventType.FLOW_NEW, endpointId: 2, direction: 0, saddr: '10.1.0.2', daddr: '10.1.0.3' }), ctx);
  t.same(g.eventType, { type: 4 }, 'trace to-endpoint (subtype 0)');
  t.equal(g.traceObservationPoint, 'TO_ENDPOINT');
});

t.test("a drop by a deny rule is Hubble's POLICY_DENY; a peer off the node gets its identity labels", async (t) => {
  const f = buildFlow(
    ev({
      type: EventType.DROP,
      verdict: 1,
      reason: 1,
      endpointId: 2,
      direction: 1,
      saddr: '10.1.0.3',
      daddr: '198.18.0.9',
      proto: 17,
      sport: 5353,
      dport: 53,
      srcIdentity: 258,
      dstIdentity: 2,
      ruleId: 0x1c01,
    }),
    ctx,
  );
  t.equal(f.verdict, 'DROPPED');
  t.equal(f.dropReason, 181);
  t.equal(f.dropReasonDesc, 'POLICY_DENY');
  t.same(f.eventType, { type: 1, subType: 181 }, 'monitor type 1: drop, subtype = reason');
  t.equal(f.membrane?.datapathDropReason, 1);
  t.equal(f.trafficDirection, 'EGRESS');
  t.same(
    f.egressDeniedBy?.map((p) => [p.name, p.namespace, p.kind]),
    [['no-db-egress', undefined, 'CiliumClusterwideNetworkPolicy']],
  );
  t.same(f.destination, { identity: 2, labels: ['reserved:world'] });
  t.same(f.source?.ID, 2, 'the observing endpoint sent it');
  t.same(f.isReply, {}, "a policy drop is a connection's first packet");
});

t.test('rule names are kept once known (the policy may be deleted later)', async (t) => {
  const c: FlowContext = { ...ctx, ruleCache: new Map(), describeRule: (id) => rules[id] };
  const e = ev({ type: EventType.FLOW_NEW, endpointId: 2, saddr: '10.1.0.2', daddr: '10.1.0.3', ruleId: 0x1000 });
  t.equal(buildFlow(e, c).ingressAllowedBy?.[0].name, 'allow-client');
  c.describeRule = () => undefined;
  t.equal(buildFlow(e, c).ingressAllowedBy?.[0].name, 'allow-client');
});

t.test("default deny has no rule; an unknown rule still shows its id; other reasons map to Hubble's codes", async (t) => {
  const d = buildFlow(
    ev({ type: EventType.DROP, verdict: 1, reason: 1, endpointId: 2, saddr: '10.1.0.2', daddr: '10.1.0.3' }),
    ctx,
  );
  t.equal(d.ingressDeniedBy, undefined);
  t.equal(d.dropReasonDesc, 'POLICY_DENIED');
  t.equal(d.dropReason, 133);
  t.match(d.Summary, /denied by default deny/);
  const u = buildFlow(
    ev({ type: EventType.DROP, verdict: 1, reason: 1, endpointId: 2, ruleId: 0x9999, saddr: '10.1.0.2', daddr: '10.1.0.3' }),
    ctx,
  );
  t.same(u.ingressDeniedBy, [{ name: '', membraneRuleId: 0x9999 }]);
  const spoof = buildFlow(
    ev({ type: EventType.DROP, verdict: 1, reason: 132, endpointId: 1, direction: 1, saddr: '10.9.9.9', daddr: '10.1.0.3' }),
    ctx,
  );
  t.same([spoof.dropReason, spoof.dropReasonDesc, spoof.isReply], [132, 'INVALID_SOURCE_IP', undefined]);
  const frag = buildFlow(ev({ type: EventType.DROP, verdict: 1, reason: 157, saddr: '10.1.0.2', daddr: '10.1.0.3' }), ctx);
  t.same([frag.dropReason, frag.dropReasonDesc], [157, 'IP_FRAGMENTATION_NOT_SUPPORTED']);
});

t.test('verdicts: audit flag, redirect, drop type', async (t) => {
  t.equal(verdictOf(ev({ verdict: 0, flags: 1, type: EventType.DROP })), 'AUDIT');
  t.equal(verdictOf(ev({ verdict: 3 })), 'AUDIT');
  t.equal(verdictOf(ev({ verdict: 2 })), 'FORWARDED');
  t.equal(verdictOf(ev({ verdict: 0, type: EventType.DROP })), 'DROPPED');
  t.equal(verdictOf(ev({ verdict: 9 })), 'VERDICT_UNKNOWN');
  const a = buildFlow(
    ev({ type: EventType.FLOW_NEW, verdict: 3, flags: 1, reason: 1, saddr: '10.1.0.2', daddr: '10.1.0.3' }),
    ctx,
  );
  t.equal(a.verdict, 'AUDIT');
  t.same(a.eventType, { type: 5 }, 'an audited connection is a policy verdict (hubble prints AUDITED)');
  t.equal(a.dropReasonDesc, 'POLICY_DENIED');
});

t.test('flow end carries totals; L4 for every protocol Hubble knows', async (t) => {
  const f = buildFlow(
    ev({ type: EventType.FLOW_END, packets: 12, bytes: 3456, saddr: '10.1.0.2', daddr: '10.1.0.3', tcpFlags: 0x11 }),
    ctx,
  );
  t.same(f.membrane?.counters, { packets: 12, bytes: 3456 });
  t.equal(f.membrane?.event, 'FLOW_END');
  t.same(f.eventType?.type, 4);
  t.same(f.l4?.TCP?.flags, { FIN: true, ACK: true });
  t.same(layer4(ev({ proto: 1, sport: 4321, dport: 4321 })), { ICMPv4: { membraneEchoId: 4321 } }, 'echo identifier');
  t.same(layer4(ev({ proto: 58 })), { ICMPv6: {} });
  t.same(layer4(ev({ proto: 132, sport: 1, dport: 2 })), { SCTP: { sourcePort: 1, destinationPort: 2 } });
  t.equal(layer4(ev({ proto: 47 })), undefined, "no place for GRE in Hubble's Layer4: the IP part stays");
});

t.test('IPv6 endpoints are found whatever the address spelling', async (t) => {
  const tb = EndpointTable.from([
    { ...ep(7, '10.7.0.2', {}), ips: [{ address: 'FD00:0:0::7/128', gateway: '', family: 6, subnet: '' }] },
  ]);
  t.equal((tb.byAddress('fd00::7') as EndpointView).id, 7);
  t.equal(tb.byRaw(encodeTraceEvent({ family: 6, saddr: 'fd00::7' }), 40, 6)?.id, 7);
  t.equal(tb.byRaw(encodeTraceEvent({ family: 4, saddr: '10.1.0.3' }), 40, 4), undefined);
  t.equal(table.byRaw(encodeTraceEvent({ family: 4, saddr: '10.1.0.3' }), 40, 4)?.id, 2);
});

t.test('wall time from monotonic + offset', async (t) => {
  t.same(wallTime(1_999_999_999, splitOffset(1n)), { seconds: 2, nanos: 0 });
  t.same(splitOffset(-1n), { seconds: -1, nanos: 999_999_999 });
  t.same(wallTime(1_000_000_000, splitOffset(-1n)), { seconds: 0, nanos: 999_999_999 });
  t.same(wallTime(5, splitOffset(1_700_000_000_999_999_999n)), { seconds: 1_700_000_001, nanos: 4 });
});

t.test('endpoint records are shared between flows; peers are cached by identity', async (t) => {
  const a = buildFlow(ev({ endpointId: 2, saddr: '10.1.0.2', daddr: '10.1.0.3', srcIdentity: 257 }), ctx);
  const b = buildFlow(ev({ endpointId: 2, saddr: '10.1.0.2', daddr: '10.1.0.3', srcIdentity: 0 }), ctx);
  t.equal(a.destination, b.destination, 'same object');
  const w1 = buildFlow(ev({ saddr: '198.18.0.1', daddr: '10.1.0.3', srcIdentity: 2 }), ctx);
  const w2 = buildFlow(ev({ saddr: '198.18.0.2', daddr: '10.1.0.3', srcIdentity: 2 }), ctx);
  t.equal(w1.source, w2.source);
});

t.test('a Docker container is named in flows as docker ps names it, without a namespace', async (t) => {
  const tb = EndpointTable.from([
    ep(
      3,
      '10.3.0.2',
      { 'container:app': 'web' },
      { containerId: 'f00d', docker: { networkId: 'n1', endpointId: 'e1', containerName: 'web' } },
    ),
    ep(4, '10.3.0.3', { 'container:app': 'client' }, { containerId: '', docker: { networkId: 'n1', endpointId: 'e2' } }),
  ]);
  const c: FlowContext = { ...ctx, endpointById: (id) => tb.byEndpointId(id), endpointByAddress: (b, o, f) => tb.byRaw(b, o, f) };
  const f = buildFlow(
    ev({
      type: EventType.FLOW_NEW,
      endpointId: 3,
      direction: 0,
      saddr: '10.3.0.3',
      daddr: '10.3.0.2',
      proto: 6,
      sport: 1,
      dport: 80,
      srcIdentity: 260,
      dstIdentity: 259,
    }),
    c,
  );
  t.same(f.destination, { ID: 3, identity: 259, labels: ['container:app=web'], podName: 'web' });
  t.same(
    f.source,
    { ID: 4, identity: 260, labels: ['container:app=client'] },
    'a container whose name is not known yet: no name',
  );
});
