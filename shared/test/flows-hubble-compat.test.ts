// Wire compatibility with Hubble: an independent client built from Hubble's published field numbers
// (lib/hubble-wire.ts, nothing shared with Membrane's protos or server) talks to Membrane's observer
// and checks GetFlows, ServerStatus, GetNodes and the health service field by field: the numbers,
// the enum values, and the filters a Hubble client sends.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FlowCollector } from '../src/flows/collector.ts';
import { encodeTraceEvent, EventType, type TraceEvent } from '../src/flows/event.ts';
import type { FlowContext } from '../src/flows/flow.ts';
import { FlowRing } from '../src/flows/ring.ts';
import { ObserverServer } from '../src/flows/server.ts';
import { InjectedEventSource } from '../src/flows/source.ts';
import { HubbleWireClient } from './lib/hubble-wire.ts';
import { VERSION } from '../src/version.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-hubble-compat-'));
const socket = path.join(dir, 'observer.sock');
const ring = new FlowRing(100, 'node-h');
const source = new InjectedEventSource();
const views = {
  3: {
    id: 3,
    identity: 1001,
    labels: { 'k8s:app': 'client' },
    containerId: 'c3',
    namespace: 'shop',
    podName: 'client-1',
    hostIfName: 'mbr3',
  },
  4: {
    id: 4,
    identity: 1002,
    labels: { 'k8s:app': 'db' },
    containerId: 'c4',
    namespace: 'shop',
    podName: 'db-0',
    hostIfName: 'mbr4',
  },
};
const ctx: FlowContext = {
  nodeName: 'node-h',
  wallOffset: { seconds: 0, nanos: 0 },
  endpointById: (id) => views[id as 3 | 4],
  endpointByAddress: (buf, off) => (buf[off + 3] === 3 ? views[3] : buf[off + 3] === 4 ? views[4] : undefined),
  labelsOfIdentity: (id) => (id === 2 ? { 'reserved:world': '' } : undefined),
  describeRule: (id) =>
    (
      ({
        0x10: {
          policy: 'shop/allow-client',
          index: 0,
          direction: 'ingress' as const,
          action: 'allow' as const,
          kind: 'CiliumNetworkPolicy',
          namespace: 'shop',
          revision: 7,
          matchType: 2,
        },
        0x11: {
          policy: 'deny-world',
          index: 0,
          direction: 'ingress' as const,
          action: 'deny' as const,
          kind: 'CiliumClusterwideNetworkPolicy',
          revision: 3,
        },
      }) as Record<number, ReturnType<FlowContext['describeRule']>>
    )[id],
};
const collector = new FlowCollector({ ring, source, context: ctx });
collector.start();
let tsNs = Date.now() * 1e6;
const push = (e: Partial<TraceEvent>) => {
  tsNs += 1e6;
  source.push(encodeTraceEvent({ tsNs, ...e }));
};
let server: ObserverServer;
let hubble: HubbleWireClient;
const started = Date.now();

t.before(async () => {
  server = await ObserverServer.start(
    {
      ring,
      nodeName: 'node-h',
      version: '9.9.9',
      startedAtNs: process.hrtime.bigint(),
      flowEventsEnabled: () => true,
      lostEvents: () => 0,
      lostEventsAgent: () => 0,
      onLost: (fn) => collector.onLost(fn),
      countAgentLost: () => undefined,
    },
    { socket, address: '127.0.0.1:0' },
  );
  hubble = new HubbleWireClient(`unix:${socket}`);
  // 1: allowed by a rule (policy verdict); 2: denied by a deny rule; 3: default deny; 4: no policy (trace); 5: UDP.
  push({
    type: EventType.FLOW_NEW,
    endpointId: 4,
    ifindex: 44,
    direction: 0,
    saddr: '10.9.0.3',
    daddr: '10.9.0.4',
    proto: 6,
    sport: 40001,
    dport: 5432,
    tcpFlags: 0x02,
    srcIdentity: 1001,
    dstIdentity: 1002,
    ruleId: 0x10,
    len: 60,
  });
  push({
    type: EventType.DROP,
    verdict: 1,
    reason: 1,
    endpointId: 4,
    ifindex: 44,
    direction: 0,
    saddr: '198.18.0.9',
    daddr: '10.9.0.4',
    proto: 6,
    sport: 40002,
    dport: 5432,
    tcpFlags: 0x02,
    srcIdentity: 2,
    dstIdentity: 1002,
    ruleId: 0x11,
  });
  push({
    type: EventType.DROP,
    verdict: 1,
    reason: 1,
    endpointId: 4,
    ifindex: 44,
    direction: 0,
    saddr: '10.9.0.3',
    daddr: '10.9.0.4',
    proto: 6,
    sport: 40003,
    dport: 22,
    tcpFlags: 0x02,
    srcIdentity: 1001,
    dstIdentity: 1002,
  });
  push({
    type: EventType.FLOW_NEW,
    endpointId: 3,
    ifindex: 33,
    direction: 1,
    saddr: '10.9.0.3',
    daddr: '10.9.0.4',
    proto: 6,
    sport: 40004,
    dport: 80,
    tcpFlags: 0x02,
    srcIdentity: 1001,
    dstIdentity: 1002,
  });
  push({
    type: EventType.FLOW_NEW,
    endpointId: 3,
    ifindex: 33,
    direction: 1,
    saddr: '10.9.0.3',
    daddr: '10.9.0.4',
    proto: 17,
    sport: 5353,
    dport: 53,
    srcIdentity: 1001,
    dstIdentity: 1002,
  });
});
t.teardown(async () => {
  hubble?.close();
  await server?.close();
  collector.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const flows = async (req: object = {}) => (await hubble.getFlows(req)).map((r) => r.flow);

t.test("GetFlows: each field on Hubble's number, enums with Hubble's values", async (t) => {
  const all = await hubble.getFlows({});
  t.equal(all.length, 5);
  t.equal(all[0].node_name, 'node-h', 'GetFlowsResponse.node_name = 1000');
  t.ok(Math.abs(all[0].time.seconds * 1000 - started) < 60_000, 'GetFlowsResponse.time = 1001');
  const [allowed, denied, dflt, traced, udp] = all.map((r) => r.flow);

  t.equal(allowed.verdict, 1, 'verdict = 2, FORWARDED = 1');
  t.same(
    allowed.IP,
    { source: '10.9.0.3', destination: '10.9.0.4', ipVersion: 1 },
    'IP = 5 (source 1, destination 2, ipVersion 3; IPv4 = 1)',
  );
  t.same(
    allowed.l4,
    { TCP: { source_port: 40001, destination_port: 5432, flags: { SYN: true } } },
    'l4 = 6, TCP = 1, flags = 3, SYN = 2',
  );
  t.same(
    allowed.source,
    { ID: 3, identity: 1001, namespace: 'shop', labels: ['k8s:app=client'], pod_name: 'client-1' },
    'Endpoint: ID 1, identity 2, namespace 3, labels 4, pod_name 5',
  );
  t.same(allowed.destination, { ID: 4, identity: 1002, namespace: 'shop', labels: ['k8s:app=db'], pod_name: 'db-0' });
  t.equal(allowed.Type, 1, 'Type = 10, L3_L4 = 1');
  t.equal(allowed.node_name, 'node-h', 'node_name = 11');
  t.same(allowed.event_type, { type: 5 }, 'event_type = 19: monitor type 5, policy verdict');
  t.equal(allowed.traffic_direction, 1, 'traffic_direction = 22, INGRESS = 1');
  t.equal(allowed.policy_match_type, 2, 'policy_match_type = 23: L3-L4');
  t.same(allowed.is_reply, {}, 'is_reply = 26: a BoolValue holding false');
  t.same(allowed.interface, { index: 44, name: 'mbr4' }, 'interface = 28');
  t.match(allowed.uuid, /^[0-9a-f-]{36}$/, 'uuid = 34');
  t.same(allowed.emitter, { name: 'Membrane', version: VERSION }, 'emitter = 41');
  t.equal(allowed.Summary, 'TCP Flags: SYN; allowed by policy shop/allow-client (ingress allow rule 0)', 'Summary = 100000');
  t.same(
    allowed.ingress_allowed_by,
    [
      {
        name: 'allow-client',
        namespace: 'shop',
        kind: 'CiliumNetworkPolicy',
        revision: 7,
        labels: [
          'k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy',
          'k8s:io.cilium.k8s.policy.name=allow-client',
          'k8s:io.cilium.k8s.policy.namespace=shop',
        ],
      },
    ],
    'ingress_allowed_by = 21002, Policy name 1, namespace 2, labels 3, revision 4, kind 5',
  );
  t.equal(allowed.drop_reason_desc, undefined);

  t.equal(denied.verdict, 2, 'DROPPED = 2');
  t.equal(denied.drop_reason_desc, 181, 'drop_reason_desc = 25: POLICY_DENY = 181 for a deny rule');
  t.equal(denied.drop_reason, 181, 'drop_reason = 3');
  t.same(denied.event_type, { type: 1, sub_type: 181 }, 'drop event, subtype = reason');
  t.same(denied.source, { identity: 2, labels: ['reserved:world'] });
  t.same(
    denied.ingress_denied_by?.map((p: { name: string; kind: string }) => [p.name, p.kind]),
    [['deny-world', 'CiliumClusterwideNetworkPolicy']],
    'ingress_denied_by = 21005',
  );
  t.equal(denied.ingress_allowed_by, undefined);
  t.equal(dflt.drop_reason_desc, 133, 'default deny: POLICY_DENIED = 133');
  t.equal(dflt.ingress_denied_by, undefined);
  t.same(traced.event_type, { type: 4, sub_type: 5 }, 'trace from-endpoint: type 4, subtype 5');
  t.equal(traced.trace_observation_point, 5, 'trace_observation_point = 24, FROM_ENDPOINT = 5');
  t.equal(traced.trace_reason, 1, 'trace_reason = 36, NEW = 1');
  t.equal(traced.traffic_direction, 2, 'EGRESS = 2');
  t.same(udp.l4, { UDP: { source_port: 5353, destination_port: 53 } }, 'UDP = 2');
});

t.test("Hubble filters on Hubble's numbers select what they say", async (t) => {
  const ports = async (f: object) => (await flows({ whitelist: [f] })).map((f) => f.l4.TCP?.source_port ?? f.l4.UDP?.source_port);
  t.same(await ports({ protocol: ['udp'] }), [5353], 'protocol = 12 is the protocol, not a port');
  t.same(await ports({ destination_port: ['5432'] }), [40001, 40002], 'destination_port = 14');
  t.same(await ports({ source_port: ['40004'] }), [40004], 'source_port = 13');
  t.same(await ports({ verdict: [2] }), [40002, 40003], 'verdict = 5');
  t.same(await ports({ event_type: [{ type: 1 }] }), [40002, 40003], 'event_type = 6');
  t.same(await ports({ event_type: [{ type: 4, match_sub_type: true, sub_type: 5 }] }), [40004, 5353], 'event type with subtype');
  t.same(await ports({ drop_reason_desc: [133] }), [40003], 'drop_reason_desc = 33');
  t.same(await ports({ source_ip: ['198.18.0.0/15'] }), [40002], 'source_ip = 1');
  t.same(await ports({ destination_pod: ['shop/db'] }), [40001, 40002, 40003, 40004, 5353], 'destination_pod = 4');
  t.same(
    await ports({ source_label: ['k8s:app=client'], traffic_direction: [2] }),
    [40004, 5353],
    'source_label = 10, traffic_direction = 30',
  );
  t.same(await ports({ source_identity: [2] }), [40002], 'source_identity = 19');
  t.same(
    await ports({ tcp_flags: [{ SYN: true }], destination_identity: [1002] }),
    [40001, 40002, 40003, 40004],
    'tcp_flags = 23',
  );
  t.same(await ports({ node_name: ['node-*'] }), [40001, 40002, 40003, 40004, 5353], 'node_name = 24');
  t.same(await ports({ ip_version: [2] }), [], 'ip_version = 25');
  t.same(
    (await flows({ number: 2 })).map((f) => f.l4.TCP?.source_port ?? 5353),
    [40004, 5353],
    'number = 1: the last N',
  );
  t.same(
    (await flows({ number: 1, first: true })).map((f) => f.l4.TCP.source_port),
    [40001],
    'first = 9',
  );
  t.same((await flows({ blacklist: [{ protocol: ['tcp'] }] })).length, 1, 'blacklist = 5');
  const masked = await flows({ number: 1, field_mask: { paths: ['time', 'IP', 'Summary'] } });
  t.same(Object.keys(masked[0]).sort(), ['IP', 'Summary', 'time'], 'field_mask = 10');
  // The mask the hubble CLI sends by default for its compact, dict and table output.
  const HUBBLE_DEFAULT_MASK = [
    'time',
    'verdict',
    'ethernet',
    'IP',
    'l4',
    'source.identity',
    'source.namespace',
    'source.pod_name',
    'destination.identity',
    'destination.namespace',
    'destination.pod_name',
    'Type',
    'node_name',
    'l7',
    'event_type',
    'source_service',
    'destination_service',
    'is_reply',
    'Summary',
    'ip_trace_id',
  ];
  const dflt = await flows({ first: true, number: 1, field_mask: { paths: HUBBLE_DEFAULT_MASK } });
  t.same(dflt[0].source, { identity: 1001, namespace: 'shop', pod_name: 'client-1' }, 'only the masked endpoint fields');
  t.same(
    Object.keys(dflt[0]).sort(),
    ['IP', 'Summary', 'Type', 'event_type', 'is_reply', 'l4', 'node_name', 'source', 'destination', 'time', 'verdict'].sort(),
  );
  await t.rejects(
    hubble.getFlows({ whitelist: [{ source_service: ['shop/web'] }] }),
    { code: 3, details: /whitelist\[0\]\.source_service: cannot be applied/ },
    'a filter Membrane cannot apply is INVALID_ARGUMENT naming it',
  );
});

t.test('ServerStatus field by field', async (t) => {
  const s = await hubble.serverStatus();
  t.equal(s.num_flows, 5, 'num_flows = 1');
  t.equal(s.max_flows, 100, 'max_flows = 2');
  t.equal(s.seen_flows, 5, 'seen_flows = 3');
  t.ok(s.uptime_ns > 0, 'uptime_ns = 4');
  t.equal(s.version, '9.9.9', 'version = 8');
  t.ok(s.flows_rate > 0, 'flows_rate = 9 (double)');
  t.equal(s.num_connected_nodes, undefined, 'a node is not a relay: 5 and 6 unset');
  t.same(await hubble.healthCheck('observer.Observer'), { status: 1 }, 'grpc.health.v1 Check: SERVING = 1');
});

t.test('GetNodes and GetNamespaces field by field', async (t) => {
  const { nodes } = await hubble.getNodes();
  t.equal(nodes.length, 1);
  const n = nodes[0];
  t.equal(n.name, 'node-h', 'name = 1');
  t.equal(n.version, '9.9.9', 'version = 2');
  t.equal(n.address, server.address, 'address = 3');
  t.equal(n.state, 1, 'state = 4, NODE_CONNECTED = 1');
  t.same(n.tls, {}, 'tls = 5, not enabled');
  t.ok(n.uptime_ns > 0, 'uptime_ns = 6');
  t.same([n.num_flows, n.max_flows, n.seen_flows], [5, 100, 5], 'num_flows 7, max_flows 8, seen_flows 9');
  t.same(
    await hubble.getNamespaces(),
    { namespaces: [{ namespace: 'shop' }] },
    'Namespace: namespace = 2, no cluster on a single node',
  );
});
