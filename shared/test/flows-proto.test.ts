// The embedded copies of shared/proto must match the files; every field our TS types use must exist
// in the proto (protobuf drops unknown fields silently, so round-trip them); Membrane's additions
// never sit on Hubble's field numbers.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import type * as grpc from '@grpc/grpc-js';
import type { MessageTypeDefinition } from '@grpc/proto-loader';
import { PROTO_FILES } from '../src/flows/protos.generated.ts';
import { healthService, observerPackageDefinition, observerService } from '../src/flows/proto.ts';
import { camelCaseRoot } from '../src/flows/schema.ts';
import type { Flow, GetAgentEventsResponse, GetFlowsRequest, GetFlowsResponse, ServerStatus } from '../src/flows/types.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const protoDir = path.join(here, '../proto');

t.test('the embedded protos are the .proto files', async (t) => {
  const files: Record<string, string> = {};
  for (const name of Object.keys(PROTO_FILES)) files[name] = fs.readFileSync(path.join(protoDir, name), 'utf8');
  const onDisk = fs
    .readdirSync(protoDir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.proto'))
    .sort();
  t.same(onDisk, Object.keys(PROTO_FILES).sort(), 'every .proto file is embedded: run npm run gen:proto');
  const stale = Object.keys(files).filter((k) => files[k] !== PROTO_FILES[k]);
  t.same(stale, [], 'shared/src/flows/protos.generated.ts is stale: run npm run gen:proto');
});

const def = observerPackageDefinition();
const roundTrip = <T>(type: string, value: T): T => {
  const m = def[type] as unknown as MessageTypeDefinition<T, T>;
  return m.deserialize(m.serialize(value));
};

t.test("Hubble's package and service names: the paths the hubble CLI calls", async (t) => {
  const svc = def['observer.Observer'] as Record<string, { path: string; responseStream: boolean }>;
  t.same(Object.fromEntries(Object.entries(svc).map(([k, v]) => [k, [v.path, v.responseStream]])), {
    GetFlows: ['/observer.Observer/GetFlows', true],
    GetAgentEvents: ['/observer.Observer/GetAgentEvents', true],
    GetDebugEvents: ['/observer.Observer/GetDebugEvents', true],
    GetNodes: ['/observer.Observer/GetNodes', false],
    GetNamespaces: ['/observer.Observer/GetNamespaces', false],
    ServerStatus: ['/observer.Observer/ServerStatus', false],
  });
  const health = def['grpc.health.v1.Health'] as Record<string, { path: string }>;
  t.equal(health.Check.path, '/grpc.health.v1.Health/Check');
});

t.test('the services grpc-js serves and clients call are the full definitions, their reflection built lazily', async (t) => {
  for (const [name, lazy] of [
    ['observer.Observer', observerService().service],
    ['grpc.health.v1.Health', healthService().service],
  ] as const) {
    const full = def[name] as unknown as grpc.ServiceDefinition;
    const shape = (s: grpc.ServiceDefinition) =>
      Object.fromEntries(Object.entries(s).map(([k, v]) => [k, [v.path, v.requestStream, v.responseStream, v.originalName]]));
    t.same(shape(lazy), shape(full), `${name}: the same methods, paths, stream flags and names`);
  }
  const req = { number: 3, follow: true, whitelist: [{ sourcePod: ['default/web'] }] };
  const lazyFlows = observerService().service.GetFlows;
  const fullFlows = (def['observer.Observer'] as unknown as grpc.ServiceDefinition).GetFlows;
  t.same(lazyFlows.requestSerialize(req), fullFlows.requestSerialize(req), 'the same bytes on the wire');
  t.same(lazyFlows.requestDeserialize(fullFlows.requestSerialize(req)), req, 'and back');
});

t.test("Membrane's fields are numbered 30001 and up, never on a number Hubble uses", async (t) => {
  const root = camelCaseRoot();
  let count = 0;
  const walk = (ns: protobuf.NamespaceBase) => {
    for (const o of ns.nestedArray) {
      if (o instanceof protobuf.Type) {
        for (const f of o.fieldsArray) {
          const ours = /^membrane/i.test(f.name);
          if (ours) {
            count++;
            t.ok((f.id >= 30001 && f.id < 40000) || /^Membrane/.test(o.name), `${o.fullName}.${f.name} = ${f.id}`);
          } else t.ok(f.id < 30000 || f.id >= 100000, `${o.fullName}.${f.name} = ${f.id} is in Hubble's ranges`);
        }
      }
      if (o instanceof protobuf.Namespace && o.fullName !== '.google') walk(o);
    }
  };
  walk(root.lookup('flow') as protobuf.Namespace);
  walk(root.lookup('observer') as protobuf.Namespace);
  t.ok(count >= 6, `${count} Membrane fields`);
});

t.test('every Flow field survives the wire', async (t) => {
  const flow: Flow = {
    time: { seconds: 1_700_000_000, nanos: 5 },
    uuid: 'u',
    emitter: { name: 'Membrane', version: '1' },
    verdict: 'DROPPED',
    dropReason: 181,
    IP: { source: '10.0.0.1', destination: 'fd00::1', ipVersion: 'IPv6', encrypted: true },
    l4: {
      TCP: {
        sourcePort: 1,
        destinationPort: 2,
        flags: { FIN: true, SYN: true, RST: true, PSH: true, ACK: true, URG: true, ECE: true, CWR: true, NS: true },
      },
    },
    source: {
      ID: 1,
      identity: 256,
      namespace: 'ns',
      labels: ['a=b'],
      podName: 'p',
      clusterName: 'c',
      workloads: [{ name: 'w', kind: 'Deployment' }],
    },
    destination: { identity: 2, labels: ['reserved:world'] },
    Type: 'L3_L4',
    nodeName: 'n',
    sourceNames: ['a.example'],
    eventType: { type: 1, subType: 181 },
    trafficDirection: 'EGRESS',
    policyMatchType: 2,
    traceObservationPoint: 'TO_ENDPOINT',
    traceReason: 'NEW',
    egressAllowedBy: [
      {
        name: 'e',
        namespace: 'ns',
        labels: ['x'],
        revision: 3,
        kind: 'k',
        membraneRuleIndex: 1,
        membraneRuleId: 2,
        membraneRulePath: 'spec.egress[1]',
      },
    ],
    ingressAllowedBy: [{ name: 'i' }],
    egressDeniedBy: [{ name: 'ed' }],
    ingressDeniedBy: [{ name: 'id', membraneRuleId: 9 }],
    isReply: { value: true },
    dropReasonDesc: 'POLICY_DENY',
    interface: { index: 3, name: 'mbr0' },
    Summary: 's',
    l7: {
      type: 'REQUEST',
      latencyNs: 5,
      http: { code: 200, method: 'GET', url: '/', protocol: 'HTTP/1.1', headers: [{ key: 'a', value: 'b' }] },
    },
    membrane: {
      event: 'FLOW_DROP',
      observedByEndpoint: 1,
      length: 60,
      counters: { packets: 2 ** 40, bytes: 2 ** 50 },
      datapathDropReason: 1,
      sourceContainerId: 'c1',
      destinationContainerId: 'c2',
    },
  };
  t.same(roundTrip('flow.Flow', flow), flow);
  for (const l4 of [
    { UDP: { sourcePort: 1, destinationPort: 2 } },
    { SCTP: { sourcePort: 1, destinationPort: 2 } },
    { ICMPv4: { type: 8, code: 1, membraneEchoId: 5 } },
    { ICMPv6: { membraneEchoId: 9 } },
  ]) {
    t.same(roundTrip('flow.Flow', { ...flow, l4 }).l4, l4);
  }
  t.same(roundTrip('flow.Flow', { ...flow, l7: { dns: { query: 'a.', ips: ['1.2.3.4'], rcode: 3 } } }).l7, {
    dns: { query: 'a.', ips: ['1.2.3.4'], rcode: 3 },
  });
});

t.test('requests, responses, status and events survive the wire', async (t) => {
  const req: GetFlowsRequest = {
    number: 5,
    follow: true,
    first: true,
    since: { seconds: 1, nanos: 2 },
    until: { seconds: 3, nanos: 4 },
    fieldMask: { paths: ['time', 'IP'] },
    blacklist: [{ verdict: ['AUDIT'] }],
    whitelist: [
      {
        uuid: ['u'],
        sourceIp: ['a'],
        destinationIp: ['b'],
        verdict: ['DROPPED'],
        eventType: [{ type: 1, matchSubType: true, subType: 133 }],
        protocol: ['tcp'],
        sourceLabel: ['x'],
        destinationLabel: ['y'],
        sourcePort: ['1'],
        destinationPort: ['2'],
        reply: [true, false],
        sourceIdentity: [1],
        destinationIdentity: [2],
        nodeName: ['n'],
        ipVersion: ['IPv4'],
        trafficDirection: ['INGRESS'],
        dropReasonDesc: ['CT_MAP_INSERTION_FAILED'],
        sourcePod: ['ns/'],
        destinationPod: ['p'],
        tcpFlags: [{ SYN: true }],
        interface: [{ name: 'mbr1' }],
        encrypted: [false],
        httpStatusCode: ['4+'],
        httpHeader: [{ key: 'k', value: 'v' }],
        sourceFqdn: ['*.a'],
        dnsQuery: ['q'],
        sourceService: ['s'],
        sourceWorkload: [{ name: 'w', kind: 'k' }],
        experimental: { celExpression: ['true'] },
        membrane: { sourceEndpoint: [3], destinationEndpoint: [4], policyName: ['pol'], event: ['FLOW_END'] },
      },
    ],
  };
  t.same(roundTrip('observer.GetFlowsRequest', req), req);
  const lost: GetFlowsResponse = {
    lostEvents: { source: 'OBSERVER_EVENTS_QUEUE', numEventsLost: 7, cpu: { value: 1 } },
    nodeName: 'n',
    time: { seconds: 1, nanos: 1 },
  };
  t.same(roundTrip('observer.GetFlowsResponse', lost), lost);
  const st: ServerStatus = {
    numFlows: 1,
    maxFlows: 2,
    seenFlows: 3,
    uptimeNs: 4,
    version: 'v',
    flowsRate: 1.5,
    numConnectedNodes: { value: 1 },
    membrane: { nodeName: 'n', lostEventsDatapath: 5, lostEventsAgent: 6, flowEventsEnabled: true },
  };
  t.same(roundTrip('observer.ServerStatusResponse', st), st);
  const ev: GetAgentEventsResponse = {
    agentEvent: { type: 'ENDPOINT_CREATED', endpointUpdate: { id: 3, labels: ['a=b'], podName: 'p', namespace: 'ns' } },
    nodeName: 'n',
    time: { seconds: 1, nanos: 0 },
  };
  t.same(roundTrip('observer.GetAgentEventsResponse', ev), ev);
});
