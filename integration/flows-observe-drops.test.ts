// Flow visibility of denied traffic (see flows-observe.test.ts; lib/flow-pods.ts): it shows DROPPED
// with the policy and the reason; filters select; a client built from Hubble's published field
// numbers reads the real agent; the metrics page parses as Prometheus text and agrees with the
// observer. Traffic stays between our netns and the node; every name is unique; everything is removed.
import t from 'tap';
import { ip4, type TestAgent } from './lib/agent.ts';
import { type FlowPods, startFlowPods } from './lib/flow-pods.ts';
import { tcpRequest } from './lib/tcp.ts';
import type { ObserverClient } from '../shared/src/flows/client.ts';
import { sampleValue } from '../shared/src/metrics/parse.ts';
import type { PolicyClient } from '../shared/src/policy/client.ts';
import { probe } from './lib/probe.ts';
import { HubbleWireClient } from '../shared/test/lib/hubble-wire.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

let f: FlowPods;
let agent: TestAgent;
let observer: ObserverClient;
let pc: PolicyClient;
let eps: FlowPods['eps'];
let ns: FlowPods['ns'];
let PORT_A: number;
let PORT_B: number;
let run: string;
t.before(async () => {
  f = await startFlowPods();
  ({ agent, observer, policies: pc, eps, ns, portA: PORT_A, portB: PORT_B, run } = f);
});
t.teardown(() => f?.cleanup());
const flowsUntil: FlowPods['flowsUntil'] = (...a) => f.flowsUntil(...a);
const scrape: FlowPods['scrape'] = () => f.scrape();
const cli: FlowPods['cli'] = (args) => f.cli(args);

t.test('denied traffic shows DROPPED with the policy name and the reason', async (t) => {
  t.teardown(() => pc.delete('all'));
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: flows-server-${run}}
spec:
  endpointSelector: {matchLabels: {app: server, run: "${run}"}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {matchLabels: {app: other}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "${PORT_B}", protocol: TCP}]}]
`);
  t.equal(await probe(ns.other, ip4(eps.server), PORT_B), 'timeout', 'other -> server:B is denied');
  const drop = (
    await flowsUntil({ whitelist: [{ sourceIp: [ip4(eps.other)], verdict: ['DROPPED'] }] }, (fs) => fs.length > 0)
  )[0];
  t.equal(drop.membrane?.event, 'FLOW_DROP');
  // A deny rule's drop is Hubble's POLICY_DENY (181, "denied by denylist"), reported as a drop event.
  t.equal(drop.dropReasonDesc, 'POLICY_DENY');
  t.equal(drop.dropReason, 181);
  t.same(drop.eventType, { type: 1, subType: 181 });
  const denier = drop.ingressDeniedBy?.[0];
  t.equal(denier?.name, `flows-server-${run}`, 'the policy that denied it');
  t.equal(denier?.kind, 'CiliumNetworkPolicy');
  t.equal(denier?.membraneRuleIndex, 0, 'ingressDeny[0]');
  t.equal(denier?.membraneRulePath, 'spec.ingressDeny[0]');
  t.ok(denier?.revision, 'the policy revision');
  t.ok(denier?.labels?.includes(`k8s:io.cilium.k8s.policy.name=flows-server-${run}`), `policy labels ${denier?.labels}`);
  t.equal(drop.destination?.ID, eps.server.id);
  const line = await cli(['observe', '--verdict', 'DROPPED', '--from-label', 'app=other', '--last', '1']);
  t.match(
    line.out,
    new RegExp(
      `Policy denied by denylist DROPPED \\(TCP Flags: SYN; denied by policy flows-server-${run} \\(ingress deny rule 0\\)\\)`,
    ),
  );
  const byReason = await cli(['observe', '--drop-reason-desc', 'POLICY_DENY', '--last', '0', '-o', 'json']);
  t.ok(
    byReason.out.trim().split('\n').length >= 1 && !/POLICY_DENIED"/.test(byReason.out),
    '--drop-reason-desc selects by Hubble reason',
  );

  // Allowed by a rule: a policy verdict event naming the allowing policy.
  t.equal(await tcpRequest(ns.client, ip4(eps.server), PORT_A), 'ping');
  const allowed = await flowsUntil(
    { whitelist: [{ sourceIp: [ip4(eps.client)], membrane: { event: ['FLOW_NEW'] }, destinationPort: [String(PORT_A)] }] },
    (fs) => fs.some((f) => f.ingressAllowedBy?.length),
  );
  const verdict = allowed.find((f) => f.ingressAllowedBy?.length)!;
  t.equal(verdict.ingressAllowedBy![0].name, `flows-server-${run}`);
  t.same(verdict.eventType, { type: 5 }, 'policy verdict');
  t.equal(verdict.policyMatchType, 1, 'L3-Only: the rule names peers, no ports');
  const pv = await cli(['observe', '-t', 'policy-verdict', '--from-ip', ip4(eps.client), '--print-policy-names', '--last', '1']);
  t.match(
    pv.out,
    new RegExp(
      `policy-verdict:L3-Only (INGRESS|EGRESS) ALLOWED BY flows-server-${run} \\(CiliumNetworkPolicy\\) \\(TCP Flags: SYN; allowed by policy flows-server-${run} \\(ingress allow rule 0\\)\\)`,
    ),
  );

  // Default deny: the endpoint is selected and no rule allows the peer.
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: flows-server-${run}}
spec:
  endpointSelector: {matchLabels: {app: server, run: "${run}"}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
`);
  t.equal(await probe(ns.client, ip4(eps.server), PORT_A), 'timeout');
  const dflt = (
    await flowsUntil({ whitelist: [{ sourceIp: [ip4(eps.client)], verdict: ['DROPPED'] }] }, (fs) => fs.length > 0)
  )[0];
  t.equal(dflt.ingressDeniedBy, undefined, 'no rule denied it');
  t.equal(dflt.dropReasonDesc, 'POLICY_DENIED');
  const dline = await cli(['observe', '--verdict', 'DROPPED', '--from-ip', ip4(eps.client), '--last', '1']);
  t.match(
    dline.out,
    /Policy denied DROPPED \(TCP Flags: SYN; denied by default deny \(the endpoint's ingress is selected by a policy and no rule allows this peer\)\)/,
  );
});

t.test('filters select', async (t) => {
  const all = (await observer.collect({})).map((r) => r.flow!);
  const drops = (await observer.collect({ whitelist: [{ eventType: [{ type: 1 }] }] })).map((r) => r.flow!);
  t.ok(drops.length > 0 && drops.every((f) => f.verdict === 'DROPPED'));
  const other = ip4(eps.other);
  const viaIp = (await observer.collect({ whitelist: [{ sourceIp: [other] }, { destinationIp: [other] }] })).map((r) => r.flow!);
  t.same(
    viaIp.map((f) => f.uuid),
    all.filter((f) => f.IP?.source === other || f.IP?.destination === other).map((f) => f.uuid),
    '--ip = either end',
  );
  const notTcp = await observer.collect({ whitelist: [{ protocol: ['udp'] }], blacklist: [{ protocol: ['tcp'] }] });
  t.ok(notTcp.every((r) => !r.flow!.l4?.TCP));
  const cliDrops = await cli(['observe', '--type', 'drop', '--all', '-o', 'json']);
  t.equal(cliDrops.out.trim().split('\n').length, drops.length, 'CLI --type drop = gRPC event_type drop');
  const notOther = await cli(['observe', '--all', '--not', '--ip', other, '-o', 'json']);
  t.equal(notOther.code, 0, notOther.err);
  t.notMatch(notOther.out, new RegExp(`"${other.replace(/\./g, '\\.')}"`), '--not --ip leaves the address out');
  const raw = await cli([
    'observe',
    '--all',
    '--allowlist',
    JSON.stringify({ source_ip: [other], event_type: [{ type: 1 }] }),
    '-o',
    'json',
  ]);
  t.equal(
    raw.out.trim().split('\n').filter(Boolean).length,
    drops.filter((f) => f.IP?.source === other).length,
    '--allowlist takes a JSON FlowFilter',
  );
  const bad = await cli(['observe', '--to-ip', '10.0.0.0/99']);
  t.equal(bad.code, 1);
  t.match(bad.err, /destination_ip.*prefix length/);
  const refused = await cli(['observe', '--to-service', 'default/web']);
  t.equal(refused.code, 1, 'a filter Membrane cannot apply is an error');
  t.match(refused.err, /destination_service: cannot be applied/);
});

t.test("a client built from Hubble's published field numbers reads the real agent", async (t) => {
  const hubble = new HubbleWireClient(`unix:${agent.observerSocket}`);
  t.teardown(() => hubble.close());
  const st = (await agent.client.status()) as unknown as { nodeName: string; version: string };
  const drops = (await hubble.getFlows({ whitelist: [{ event_type: [{ type: 1 }], source_ip: [ip4(eps.other)] }] })).map(
    (r) => r.flow,
  );
  t.ok(drops.length > 0, "drop events by Hubble's monitor type");
  t.ok(drops.every((f) => f.verdict === 2 && [133, 181].includes(f.drop_reason_desc) && f.destination.ID === eps.server.id));
  t.ok(
    drops.some((f) => f.ingress_denied_by?.[0]?.name === `flows-server-${run}`),
    'the denying policy on 21005',
  );
  const byProto = await hubble.getFlows({ whitelist: [{ protocol: ['tcp'], destination_port: [String(PORT_A)] }] });
  t.ok(
    byProto.length > 0 && byProto.every((r) => r.flow.l4.TCP?.destination_port === PORT_A),
    'protocol and port filters as Hubble numbers them',
  );
  const status = await hubble.serverStatus();
  t.equal(status.version, st.version);
  t.equal(status.max_flows, 4096);
  t.ok(status.seen_flows >= status.num_flows && status.num_flows > 0);
  const { nodes } = await hubble.getNodes();
  t.same(
    nodes.map((n: { name: string; state: number }) => [n.name, n.state]),
    [[st.nodeName, 1]],
  );
  t.same(await hubble.healthCheck('observer.Observer'), { status: 1 });
});

t.test('the metrics page parses as Prometheus text and agrees with the observer', async (t) => {
  // Traffic is over, but its last events (and late ones such as a closing connection's) reach the
  // counters through the ring reader a moment later, and an event between the scrape and the status
  // read makes them differ for that pair of reads: read both until one pair agrees (15 s at most).
  let page = await scrape();
  let status = await observer.status();
  const processedOf = (p: typeof page) => p.get('membrane_flows_processed_total')!.samples.reduce((n, s) => n + s.value, 0);
  for (const end = Date.now() + 15_000; processedOf(page) !== status.seenFlows && Date.now() < end; ) {
    await new Promise((r) => setTimeout(r, 200));
    page = await scrape();
    status = await observer.status();
  }
  const processed = processedOf(page);
  t.equal(processed, status.seenFlows, 'flows counted = flows seen by the observer');
  t.equal(sampleValue(page, 'membrane_flow_events_lost_total', { source: 'datapath' }), status.membrane?.lostEventsDatapath);
  t.ok((sampleValue(page, 'membrane_drop_count_total', { reason: 'POLICY_DENIED' }) ?? 0) >= 2);
  t.ok((sampleValue(page, 'membrane_policy_verdict_total', { direction: 'ingress', action: 'denied', match: 'rule' }) ?? 0) >= 1);
  t.equal(sampleValue(page, 'membrane_endpoints'), 3);
  t.equal(sampleValue(page, 'membrane_endpoint_create_duration_seconds_count'), 3);
  for (const map of ['conntrack', 'policy', 'ipcache']) {
    t.ok((sampleValue(page, 'membrane_bpf_map_capacity', { map }) ?? 0) > 0, `${map} capacity`);
    t.ok(sampleValue(page, 'membrane_bpf_map_entries', { map }) !== undefined, `${map} entries`);
  }
  t.ok((sampleValue(page, 'membrane_bpf_map_entries', { map: 'ipcache' }) ?? 0) >= 3, 'endpoint addresses are in the ipcache');
});
