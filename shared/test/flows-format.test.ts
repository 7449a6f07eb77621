// `membrane observe` output in the hubble CLI's shapes: compact lines, dict blocks, the table and
// protobuf JSON with proto field names.
import t from 'tap';
import {
  compactLine,
  dictBlock,
  flowPrinter,
  flowType,
  hostname,
  identityText,
  jsonLine,
  tableHeaders,
  tableLine,
  tableRow,
  verdictText,
} from '../src/flows/format.ts';
import { summaryOf, verdictReason } from '../src/flows/summary.ts';
import { timestampJson } from '../src/flows/protojson.ts';
import type { Flow, GetFlowsResponse } from '../src/flows/types.ts';

const time = { seconds: 1_700_000_000, nanos: 123_456_789 };
const flow: Flow = {
  time,
  verdict: 'FORWARDED',
  IP: { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' },
  l4: { TCP: { sourcePort: 40000, destinationPort: 80, flags: { SYN: true } } },
  source: { ID: 1, identity: 257, labels: ['k8s:app=client'], namespace: 'shop', podName: 'client-7d' },
  destination: { ID: 2, identity: 258, labels: ['k8s:app=web'] },
  nodeName: 'n1',
  eventType: { type: 5 },
  policyMatchType: 2,
  trafficDirection: 'INGRESS',
  isReply: { value: false },
  ingressAllowedBy: [{ name: 'allow-web', namespace: 'shop', kind: 'CiliumNetworkPolicy', membraneRuleIndex: 0 }],
};
flow.Summary = summaryOf(flow);
const res = (f: Flow): GetFlowsResponse => ({ flow: f, nodeName: 'n1', time: f.time });
const denied: Flow = {
  ...flow,
  verdict: 'DROPPED',
  eventType: { type: 1, subType: 181 },
  dropReason: 181,
  dropReasonDesc: 'POLICY_DENY',
  ingressAllowedBy: undefined,
  ingressDeniedBy: [{ name: 'deny-legacy', kind: 'CiliumNetworkPolicy', membraneRuleIndex: 2 }],
};
denied.Summary = summaryOf(denied);

t.test("compact: hubble's line shape, policy named in the summary", async (t) => {
  t.equal(
    compactLine(res(flow), { utc: true }),
    'Nov 14 22:13:20.123: shop/client-7d:40000 (ID:257) -> 10.1.0.3:80 (ID:258) policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN; allowed by policy shop/allow-web (ingress allow rule 0))',
  );
  t.match(compactLine(res(flow), { utc: true, policyNames: true }), / ALLOWED BY allow-web \(CiliumNetworkPolicy\) \(/);
  t.match(compactLine(res(flow), { utc: true, numeric: true }), /: 10\.1\.0\.2:40000 \(ID:257\)/);
  t.match(compactLine(res(flow), { utc: true, nodeName: true }), /^Nov 14 22:13:20\.123 \[n1\]: /);
});

t.test('a drop line names the reason and the policy; default deny says so', async (t) => {
  t.match(
    compactLine(res(denied), { utc: true }),
    / Policy denied by denylist DROPPED \(TCP Flags: SYN; denied by policy deny-legacy \(ingress deny rule 2\)\)$/,
  );
  const dflt: Flow = {
    ...denied,
    eventType: { type: 1, subType: 133 },
    dropReason: 133,
    dropReasonDesc: 'POLICY_DENIED',
    ingressDeniedBy: undefined,
  };
  t.equal(flowType(dflt), 'Policy denied');
  t.equal(
    verdictReason(dflt),
    "denied by default deny (the endpoint's ingress is selected by a policy and no rule allows this peer)",
  );
  t.equal(
    verdictReason({ ...dflt, dropReason: 132, dropReasonDesc: 'INVALID_SOURCE_IP' }),
    '',
    'not a policy drop: the type column says it',
  );
  t.equal(flowType({ ...dflt, eventType: { type: 1, subType: 132 } }), 'Invalid source ip');
  t.match(verdictReason({ ...dflt, verdict: 'AUDIT' }), /^audit mode, would be denied by default deny/);
  // An audited connection arrives as a policy verdict event, without a drop reason: the reason is still named.
  t.match(
    verdictReason({ ...dflt, verdict: 'AUDIT', eventType: { type: 5 }, dropReason: undefined, dropReasonDesc: undefined }),
    /^audit mode, would be denied by default deny \(the endpoint's ingress/,
  );
  t.equal(
    verdictReason({ ...dflt, destination: { ...dflt.destination, identity: 5 } }),
    "denied by the init policy (the endpoint's labels are not known yet: identity init is closed while any policy exists)",
    'init: says so, as endpoint get does',
  );
  t.equal(verdictReason({ ...dflt, ingressDeniedBy: [{ name: '', membraneRuleId: 77 }] }), 'denied by rule id 77');
  t.equal(verdictText({ ...dflt, verdict: 'AUDIT', eventType: { type: 5 } }), 'AUDITED');
  t.equal(
    verdictText({ ...dflt, eventType: { type: 5 } }, { policyNames: true }),
    'DENIED',
    'no named policy: nothing after DENIED',
  );
});

t.test('trace points, replies, peers, IPv6, ICMP and flow ends', async (t) => {
  t.equal(flowType({ ...flow, eventType: { type: 4, subType: 5 } }), 'from-endpoint');
  t.equal(flowType({ ...flow, eventType: { type: 4, subType: 0 } }), 'to-endpoint');
  t.equal(flowType({ ...flow, l7: { type: 'REQUEST', http: { method: 'GET' } } }), 'http-request');
  t.equal(identityText(2), '(world)');
  t.equal(identityText(1), '(host)');
  t.equal(identityText(16777217), '(ID:16777217)');
  t.equal(hostname('fd00::2', '53', undefined, undefined, undefined), '[fd00::2]:53');
  t.equal(hostname('10.0.0.1', '0', 'ns', 'pod', undefined), 'ns/pod');
  t.equal(hostname('10.0.0.1', '', undefined, undefined, ['api.example.com']), 'api.example.com');
  const reply: Flow = { ...flow, isReply: { value: true } };
  t.match(
    compactLine(res(reply), { utc: true }),
    /: 10\.1\.0\.3:80 \(ID:258\) <- shop\/client-7d:40000 \(ID:257\) /,
    'a reply reads backwards',
  );
  t.match(compactLine(res({ ...flow, isReply: undefined }), { utc: true }), / <> /, 'unknown direction');
  const v6: Flow = {
    ...flow,
    IP: { source: 'fd00::2', destination: 'fd00::3', ipVersion: 'IPv6' },
    l4: { ICMPv6: { membraneEchoId: 77 } },
    eventType: { type: 4, subType: 0 },
    membrane: { event: 'FLOW_END', counters: { packets: 4, bytes: 2048 } },
    ingressAllowedBy: undefined,
    source: {},
  };
  v6.Summary = summaryOf(v6);
  t.match(
    compactLine(res(v6), { utc: true }),
    /fd00::2 \(ID:0\) -> fd00::3 \(ID:258\) to-endpoint FORWARDED \(ICMPv6 id 77; 4 pkts 2\.0 KiB\)$/,
  );
});

t.test('lost events, json, dict and table', async (t) => {
  const lost: GetFlowsResponse = { lostEvents: { source: 'PERF_EVENT_RING_BUFFER', numEventsLost: 42 }, nodeName: 'n1', time };
  t.equal(compactLine(lost, { utc: true }), 'Nov 14 22:13:20.123: EVENTS LOST: PERF_EVENT_RING_BUFFER 42');
  const j = JSON.parse(jsonLine('observer.GetFlowsResponse', res(denied)));
  t.equal(j.time, '2023-11-14T22:13:20.123456789Z');
  t.equal(j.node_name, 'n1');
  t.equal(j.flow.time, '2023-11-14T22:13:20.123456789Z');
  t.equal(j.flow.ingress_denied_by[0].name, 'deny-legacy');
  t.equal(j.flow.ingress_denied_by[0].membrane_rule_index, 2);
  t.equal(j.flow.drop_reason_desc, 'POLICY_DENY');
  t.same(j.flow.IP, { source: '10.1.0.2', destination: '10.1.0.3', ipVersion: 'IPv4' }, "Hubble's own capitalised names");
  t.same(j.flow.l4, { TCP: { source_port: 40000, destination_port: 80, flags: { SYN: true } } });
  t.same(j.flow.event_type, { type: 1, sub_type: 181 });
  t.equal(j.flow.is_reply, false, 'wrappers print bare');
  t.equal(j.flow.source.ID, 1);
  t.equal(timestampJson({ seconds: 0, nanos: 5 }), '1970-01-01T00:00:00.000000005Z');
  t.equal(timestampJson({ seconds: 1, nanos: 500_000_000 }), '1970-01-01T00:00:01.500Z');
  t.equal(timestampJson({}), '1970-01-01T00:00:00Z', 'zero timestamps arrive empty over gRPC');
  t.equal(
    dictBlock(res(denied), { utc: true }),
    [
      '  TIMESTAMP: Nov 14 22:13:20.123',
      '     SOURCE: shop/client-7d:40000',
      'DESTINATION: 10.1.0.3:80',
      '       TYPE: Policy denied by denylist',
      '    VERDICT: DROPPED',
      `    SUMMARY: ${denied.Summary}`,
    ].join('\n'),
  );
  t.match(dictBlock(res(denied), {}, false), /^------------\n {2}TIMESTAMP/);
  const row = tableRow(res(denied), { utc: true });
  t.same(row.slice(3, 5), ['Policy denied by denylist', 'DROPPED']);
  t.match(tableLine(tableHeaders()), /^TIMESTAMP {12}SOURCE {26}DESTINATION/);
  // The longest TYPE (a policy verdict) and a short one put VERDICT in the same column.
  const pv = tableLine(
    tableRow(res({ ...flow, eventType: { type: 5 }, policyMatchType: 6, trafficDirection: 'INGRESS' }), { utc: true }),
  );
  const tr = tableLine(
    tableRow(res({ ...flow, eventType: { type: 4, subType: 0 }, trafficDirection: 'INGRESS' }), { utc: true }),
  );
  t.match(pv, /policy-verdict:Proto-Only INGRESS {2}ALLOWED/);
  t.equal(pv.indexOf('ALLOWED'), tr.indexOf('FORWARDED'), 'columns stay aligned whatever the type');
  const table = flowPrinter('table', { utc: true });
  t.match(table(res(flow)), /^TIMESTAMP .*\n.*ALLOWED/, 'header with the first row');
  t.notMatch(table(res(flow)), /TIMESTAMP/, 'not again');
  t.notMatch(flowPrinter('table', { utc: true, headers: false })(res(flow)), /TIMESTAMP/, '--no-headers');
});
