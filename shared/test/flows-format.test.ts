import t from 'tap';
import { compactLine, endpointText, formatResponse, jsonLine, rfc3339, TABLE_HEADERS, tableLine, tableRow, verdictReason } from '../src/flows/format.ts';
import type { Flow, GetFlowsResponse } from '../src/flows/types.ts';

const time = { seconds: 1_700_000_000, nanos: 123_456_789 };
const flow: Flow = {
  time, verdict: 'FORWARDED', ip: { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' },
  l4: { tcp: { sourcePort: 40000, destinationPort: 80, flags: { SYN: true } } },
  source: { id: 1, identity: 257, labels: ['k8s:app=client', 'k8s:io.kubernetes.pod.namespace=shop'], namespace: 'shop', podName: 'client-7d' },
  destination: { id: 2, identity: 258, labels: ['k8s:app=web'] },
  nodeName: 'n1', eventType: 'FLOW_NEW', trafficDirection: 'INGRESS', ingressAllowedBy: [{ name: 'allow-web', ruleIndex: 0 }],
};
const res = (f: Flow): GetFlowsResponse => ({ flow: f, nodeName: 'n1', time: f.time });
const denied: Flow = { ...flow, verdict: 'DROPPED', eventType: 'DROP', dropReason: 1, dropReasonDesc: 'POLICY_DENIED', ingressAllowedBy: undefined,
  ingressDeniedBy: [{ name: 'deny-legacy', ruleIndex: 2 }] };

t.test('compact: one line, allowed flows name the allowing policy', async (t) => {
  t.equal(compactLine(res(flow), true),
    'Nov 14 22:13:20.123: 10.1.0.2:40000 (shop/client-7d app=client ep:1 ID:257) -> 10.1.0.3:80 (app=web ep:2 ID:258) new to-endpoint FORWARDED (TCP SYN) allowed by policy allow-web (ingress allow rule 0)');
});

t.test('a drop line names the reason and the policy; default deny says so', async (t) => {
  t.match(compactLine(res(denied), true), /DROPPED \(TCP SYN\) policy denied, denied by policy deny-legacy \(ingress deny rule 2\)$/);
  const dflt: Flow = { ...denied, ingressDeniedBy: undefined };
  t.match(verdictReason(dflt), /^policy denied: default deny \(ingress of the endpoint is selected by a policy and no rule allows this peer\)$/);
  t.equal(verdictReason({ ...dflt, dropReasonDesc: 'SOURCE_SPOOFED' }), 'source address spoofed');
  t.equal(verdictReason({ ...dflt, verdict: 'AUDIT', audit: true }).startsWith('would drop (audit mode): policy denied: default deny'), true);
  t.equal(verdictReason({ ...dflt, ingressDeniedBy: [{ name: '', ruleId: 77 }] }), 'policy denied, denied by rule id 77');
});

t.test('peers, IPv6, ICMP and flow ends', async (t) => {
  t.equal(endpointText({ identity: 2, labels: ['reserved:world'] }), 'world ID:2');
  t.equal(endpointText({ identity: 1 }), 'host ID:1');
  const v6: Flow = { ...flow, ip: { source: 'fd00::2', destination: 'fd00::3', ipVersion: 'IPv6' }, l4: { icmpv6: { id: 77 } },
    eventType: 'FLOW_END', counters: { packets: 4, bytes: 2048 }, ingressAllowedBy: undefined };
  t.match(compactLine(res(v6), true), /fd00::2 \(.*\) -> fd00::3 \(.*\) end to-endpoint FORWARDED \(ICMPv6 id 77, 4 pkts 2.0 KiB\)$/);
  const udp: Flow = { ...flow, ip: { source: 'fd00::2', destination: 'fd00::3', ipVersion: 'IPv6' }, l4: { udp: { sourcePort: 5, destinationPort: 53 } } };
  t.match(compactLine(res(udp), true), /\[fd00::2\]:5 .* -> \[fd00::3\]:53 /);
});

t.test('lost events, json and table', async (t) => {
  const lost: GetFlowsResponse = { lostEvents: { source: 'DATAPATH_RING_BUFFER', numEventsLost: 42 }, nodeName: 'n1', time };
  t.equal(compactLine(lost, true), 'Nov 14 22:13:20.123: EVENTS LOST: DATAPATH_RING_BUFFER 42');
  const j = JSON.parse(jsonLine(res(denied)));
  t.equal(j.time, '2023-11-14T22:13:20.123456789Z');
  t.equal(j.flow.time, '2023-11-14T22:13:20.123456789Z');
  t.equal(j.flow.ingressDeniedBy[0].name, 'deny-legacy');
  t.equal(rfc3339({ seconds: 0, nanos: 5 }), '1970-01-01T00:00:00.000000005Z');
  t.equal(rfc3339(undefined), '1970-01-01T00:00:00.000000000Z', 'zero timestamps arrive empty over gRPC');
  const row = tableRow(res(denied), true);
  t.same(row.slice(3, 5), ['drop ingress', 'DROPPED']);
  t.match(row[5], /TCP SYN; policy denied, denied by policy deny-legacy/);
  t.match(tableLine(TABLE_HEADERS), /^TIMESTAMP {12}SOURCE {36}DESTINATION/);
  t.equal(formatResponse(res(flow), 'table', true), tableLine(tableRow(res(flow), true)));
});
