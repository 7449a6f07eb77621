// The embedded copy of shared/proto/observer.proto must match the file, and every field our TS
// types use must exist in the proto (protobuf drops unknown fields silently, so round-trip them).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OBSERVER_PROTO } from '../src/flows/observer-proto.ts';
import { observerPackageDefinition, PACKAGE } from '../src/flows/proto.ts';
import type { Flow, GetFlowsRequest, GetFlowsResponse, ServerStatus } from '../src/flows/types.ts';
import type { MessageTypeDefinition } from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
const protoFile = path.join(here, '../proto/observer.proto');

t.test('the embedded proto is the .proto file', async (t) => {
  t.equal(OBSERVER_PROTO, fs.readFileSync(protoFile, 'utf8'), 'shared/src/flows/observer-proto.ts is stale: run npm run gen:proto');
});

const def = observerPackageDefinition();
const roundTrip = <T>(type: string, value: T): T => {
  const m = def[`${PACKAGE}.${type}`] as unknown as MessageTypeDefinition<T, T>;
  return m.deserialize(m.serialize(value));
};

t.test('service and messages load offline (well-known types included)', async (t) => {
  const svc = def[`${PACKAGE}.Observer`] as Record<string, { path: string; responseStream: boolean }>;
  t.equal(svc.GetFlows.path, '/membrane.observer.v1.Observer/GetFlows');
  t.equal(svc.GetFlows.responseStream, true);
  t.equal(svc.ServerStatus.path, '/membrane.observer.v1.Observer/ServerStatus');
});

t.test('every Flow field survives the wire', async (t) => {
  const flow: Flow = {
    time: { seconds: 1_700_000_000, nanos: 5 }, verdict: 'DROPPED', dropReason: 1,
    ip: { source: '10.0.0.1', destination: 'fd00::1', ipVersion: 'IPv6' },
    l4: { tcp: { sourcePort: 1, destinationPort: 2, flags: { FIN: true, SYN: true, RST: true, PSH: true, ACK: true, URG: true, ECE: true, CWR: true } } },
    source: { id: 1, identity: 256, namespace: 'ns', labels: ['a=b'], podName: 'p', containerId: 'c' },
    destination: { identity: 2, labels: ['reserved:world'] }, nodeName: 'n', eventType: 'DROP',
    egressAllowedBy: [{ name: 'e', ruleIndex: 1, ruleId: 2, kind: 'k', namespace: 'ns', labels: ['x'], revision: 3 }],
    ingressAllowedBy: [{ name: 'i' }], egressDeniedBy: [{ name: 'ed' }], ingressDeniedBy: [{ name: 'id', ruleId: 9 }],
    isReply: { value: true }, trafficDirection: 'EGRESS', dropReasonDesc: 'POLICY_DENIED', interface: { index: 3, name: 'mbr0' },
    observedByEndpoint: 1, length: 60, counters: { packets: 2 ** 40, bytes: 2 ** 50 }, audit: true,
  };
  t.same(roundTrip('Flow', flow), flow);
  for (const l4 of [{ udp: { sourcePort: 1, destinationPort: 2 } }, { sctp: { sourcePort: 1, destinationPort: 2 } },
    { icmpv4: { type: 8, code: 1, id: 5 } }, { icmpv6: { id: 9 } }, { other: { protocol: 47 } }]) {
    t.same(roundTrip('Flow', { ...flow, l4 }).l4, l4);
  }
});

t.test('requests, responses and status survive the wire', async (t) => {
  const req: GetFlowsRequest = {
    number: 5, follow: true, first: true, since: { seconds: 1, nanos: 2 }, until: { seconds: 3, nanos: 4 },
    blacklist: [{ verdict: ['AUDIT'] }],
    whitelist: [{
      sourceIp: ['a'], destinationIp: ['b'], verdict: ['DROPPED'], eventType: ['DROP', 'FLOW_END'], protocol: ['tcp'], sourceLabel: ['x'],
      destinationLabel: ['y'], sourcePort: ['1'], destinationPort: ['2'], reply: [true, false], sourceIdentity: [1], destinationIdentity: [2],
      nodeName: ['n'], ipVersion: ['IPv4'], trafficDirection: ['INGRESS'], dropReasonDesc: ['CT_MAP_FULL'], sourceEndpoint: [3],
      destinationEndpoint: [4], sourcePod: ['ns/'], destinationPod: ['p'], policyName: ['pol'],
    }],
  };
  t.same(roundTrip('GetFlowsRequest', req), req);
  const lost: GetFlowsResponse = { lostEvents: { source: 'OBSERVER_EVENTS_QUEUE', numEventsLost: 7, cpu: { value: 1 } }, nodeName: 'n', time: { seconds: 1, nanos: 1 } };
  t.same(roundTrip('GetFlowsResponse', lost), lost);
  const st: ServerStatus = { numFlows: 1, maxFlows: 2, seenFlows: 3, uptimeNs: 4, version: 'v', flowsRate: 1.5, nodeName: 'n', lostEvents: 5, lostEventsAgent: 6, flowEventsEnabled: true };
  t.same(roundTrip('ServerStatusResponse', st), st);
});
