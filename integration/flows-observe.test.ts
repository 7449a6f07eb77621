// Flow visibility on real traffic: pods in netns of our own behind a real agent (from source, with
// the policy and flows extensions). Connections show up as flows with the right fields through
// gRPC and `membrane observe`; denied traffic shows DROPPED with the policy and the reason; --follow
// streams; filters select; the metrics page parses and agrees with the observer.
// Traffic stays between our netns and the node; every name is unique; everything is removed.
import t from 'tap';
import { spawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { randomId, REPO, startAgent, type TestAgent } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { killAll, startEchoServer, tcpRequest } from './lib/tcp.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import type { Flow, GetFlowsRequest } from '../shared/src/flows/types.ts';
import { parsePrometheusText, sampleValue } from '../shared/src/metrics/parse.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { probe } from './lib/probe.ts';
import type { Endpoint } from '../shared/src/types.ts';
import { HubbleWireClient } from '../shared/test/lib/hubble-wire.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const PORT_A = 7000 + Math.floor(Math.random() * 500);
const PORT_B = PORT_A + 1;
const run = randomId(3);
let agent: TestAgent;
let observer: ObserverClient;
let pc: PolicyClient;
const nss: TestNetns[] = [];
const servers: ReturnType<typeof spawn>[] = [];
const eps: Record<'client' | 'server' | 'other', Endpoint> = {} as never;
const ns: Record<string, TestNetns> = {};
const ip4 = (e: Endpoint) => e.ips.find((x) => x.family === 4)!.address.split('/')[0];
const started = Date.now();

t.before(async () => {
  agent = await startAgent();
  observer = new ObserverClient(agent.observerSocket);
  pc = new PolicyClient(agent.client);
  for (const name of ['client', 'server', 'other'] as const) {
    const n = createNetns('mbf');
    nss.push(n);
    ns[name] = n;
    eps[name] = await agent.client.createEndpoint({
      containerId: `flows-${name}-${run}`,
      netns: n.path,
      ifName: 'eth0',
      labels: { app: name, run },
    });
  }
  servers.push(await startEchoServer(ns.server, PORT_A, '0.0.0.0'), await startEchoServer(ns.server, PORT_B, '0.0.0.0'));
});

t.teardown(async () => {
  killAll(servers);
  observer?.close();
  await agent?.cleanup();
  for (const n of nss) n.remove();
});

/** Polls GetFlows until `pick` finds what it wants (flows arrive within a drain period). */
async function flowsUntil(req: GetFlowsRequest, pick: (flows: Flow[]) => boolean, ms = 10_000): Promise<Flow[]> {
  const end = Date.now() + ms;
  for (;;) {
    const flows = (await observer.collect(req)).flatMap((r) => (r.flow ? [r.flow] : []));
    if (pick(flows)) return flows;
    if (Date.now() > end) throw new Error(`flows never matched; got ${JSON.stringify(flows.slice(-5), null, 1)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The metrics page, parsed. */
async function scrape(): Promise<ReturnType<typeof parsePrometheusText>> {
  const st = (await agent.client.status()) as unknown as { metrics: { address: string } };
  const text = await new Promise<string>((resolve, reject) => {
    http
      .get(`http://${st.metrics.address}/metrics`, (res) => {
        let b = '';
        res.on('data', (d) => {
          b += d;
        });
        res.on('end', () => resolve(b));
      })
      .on('error', reject);
  });
  return parsePrometheusText(text);
}

/** Until a `membrane observe -f` has connected (the CLI starts slowly on a busy machine). */
async function waitForFollower(ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while ((sampleValue(await scrape(), 'membrane_observer_followers') ?? 0) < 1) {
    if (Date.now() > end) throw new Error('membrane observe -f never connected');
    await new Promise((r) => setTimeout(r, 100));
  }
}

function cli(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, MEMBRANE_OBSERVER_SOCKET: agent.observerSocket };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), ...args], {
    cwd: REPO,
    env,
  });
  let out = '',
    err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
  });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, out, err })));
}

const fromClientToA: GetFlowsRequest = { whitelist: [{ sourceIp: [] as string[], destinationPort: [] as string[] }] };

t.test('a connection becomes a new-flow and an end-of-flow record with the right fields', async (t) => {
  const st = (await agent.client.status()) as unknown as {
    observer: { socket: string };
    metrics: { address: string };
    nodeName: string;
    version: string;
  };
  t.equal(st.observer.socket, agent.observerSocket, 'status publishes the observer');
  t.match(st.metrics.address, /^127\.0\.0\.1:[1-9]\d*$/, 'and the metrics address (port 0 resolved)');
  t.equal(await tcpRequest(ns.client, ip4(eps.server), PORT_A), 'ping');
  fromClientToA.whitelist![0] = { sourceIp: [ip4(eps.client)], destinationPort: [String(PORT_A)] };
  const flows = await flowsUntil(
    fromClientToA,
    (fs) => fs.some((f) => f.membrane?.event === 'FLOW_NEW') && fs.some((f) => f.membrane?.event === 'FLOW_END'),
  );
  const fresh = flows.find((f) => f.membrane?.event === 'FLOW_NEW')!;
  t.equal(fresh.verdict, 'FORWARDED');
  t.same(fresh.isReply, {}, 'not a reply: a BoolValue holding false');
  t.equal(fresh.IP?.source, ip4(eps.client));
  t.equal(fresh.IP?.destination, ip4(eps.server));
  t.equal(fresh.IP?.ipVersion, 'IPv4');
  t.equal(fresh.l4?.TCP?.destinationPort, PORT_A);
  t.ok(fresh.l4?.TCP?.sourcePort, 'source port');
  t.ok(fresh.l4?.TCP?.flags?.SYN, 'SYN of the first packet');
  t.equal(fresh.source?.ID, eps.client.id);
  t.equal(fresh.source?.identity, eps.client.identity);
  t.ok(
    fresh.source?.labels?.some((l) => /(^|:)app=client$/.test(l)),
    `client labels ${fresh.source?.labels}`,
  );
  t.equal(fresh.destination?.ID, eps.server.id);
  t.equal(fresh.destination?.identity, eps.server.identity);
  t.ok(fresh.destination?.labels?.some((l) => /(^|:)app=server$/.test(l)));
  t.ok(['INGRESS', 'EGRESS'].includes(fresh.trafficDirection!));
  // No policy decided it: a trace event at the endpoint's hook, as Hubble reports it.
  t.equal(fresh.eventType?.type, 4, 'monitor type trace');
  t.equal(fresh.eventType?.subType ?? 0, fresh.trafficDirection === 'EGRESS' ? 5 : 0, 'from-endpoint or to-endpoint');
  t.equal(fresh.traceObservationPoint, fresh.trafficDirection === 'EGRESS' ? 'FROM_ENDPOINT' : 'TO_ENDPOINT');
  t.equal(fresh.traceReason, 'NEW');
  t.equal(fresh.Type, 'L3_L4');
  t.match(fresh.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  t.same(fresh.emitter, { name: 'Membrane', version: st.version });
  t.equal(fresh.Summary, 'TCP Flags: SYN');
  t.equal(fresh.nodeName, st.nodeName);
  const ms = fresh.time.seconds * 1000 + (fresh.time.nanos ?? 0) / 1e6;
  t.ok(ms >= started - 1000 && ms <= Date.now() + 1000, 'wall-clock time of the event');
  const end = flows.find((f) => f.membrane?.event === 'FLOW_END')!;
  t.ok((end.membrane?.counters?.packets ?? 0) >= 4, `end-of-flow totals: ${JSON.stringify(end.membrane?.counters)}`);
  t.ok((end.membrane?.counters?.bytes ?? 0) > 0);
  t.equal(end.l4?.TCP?.destinationPort, PORT_A, 'reported in the flow direction even when a reply closed it');
});

t.test('membrane observe shows the same flows (json, compact, table)', async (t) => {
  const json = await cli([
    'observe',
    '--from-label',
    'app=client',
    '--to-port',
    String(PORT_A),
    '--type',
    'trace',
    '--last',
    '10',
    '-o',
    'json',
  ]);
  t.equal(json.code, 0, json.err);
  // Protobuf JSON with proto field names, as `hubble observe -o json` prints it.
  type JsonFlow = {
    time: string;
    membrane: { event: string };
    l4: { TCP: { source_port: number } };
    event_type: { type: number };
    node_name: string;
  };
  const lines = json.out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { flow: JsonFlow; node_name: string; time: string });
  const flows = lines.map((l) => l.flow);
  const grpc = (await observer.collect(fromClientToA)).map((r) => r.flow!);
  t.same(
    flows.map((f) => [f.membrane.event, f.l4.TCP.source_port]),
    grpc.map((f) => [f.membrane?.event, f.l4?.TCP?.sourcePort]),
    'CLI and gRPC agree',
  );
  t.ok(
    flows.every((f) => f.event_type.type === 4),
    '--type trace selects trace events',
  );
  t.match(flows[0].time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$/);
  t.equal(lines[0].node_name, flows[0].node_name);
  const compact = await cli(['observe', '--ip', ip4(eps.server), '--port', String(PORT_A), '--last', '10']);
  t.equal(compact.code, 0, compact.err);
  const esc = (s: string) => s.replace(/\./g, '\\.');
  t.match(
    compact.out,
    new RegExp(
      `${esc(ip4(eps.client))}:\\d+ \\(ID:${eps.client.identity}\\) -> ${esc(ip4(eps.server))}:${PORT_A} \\(ID:${eps.server.identity}\\) (to|from)-endpoint FORWARDED \\(TCP Flags: SYN\\)`,
    ),
  );
  const table = await cli(['observe', '--to-ip', ip4(eps.server), '-o', 'table', '--last', '1']);
  t.match(table.out, /^TIMESTAMP +SOURCE +DESTINATION +TYPE +VERDICT +SUMMARY\n.+FORWARDED/);
  const dict = await cli(['observe', '--to-ip', ip4(eps.server), '-o', 'dict', '--last', '1']);
  t.match(dict.out, /^ {2}TIMESTAMP: .+\n {5}SOURCE: .+\nDESTINATION: .+\n {7}TYPE: .+\n {4}VERDICT: FORWARDED\n {4}SUMMARY: /);
});

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

t.test('--follow streams new flows as they happen, and stops on ^C', async (t) => {
  const env: NodeJS.ProcessEnv = { ...process.env, MEMBRANE_OBSERVER_SOCKET: agent.observerSocket };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(REPO, 'shared/src/cli/main.ts'),
      'observe',
      '-f',
      '--from-label',
      'app=other',
      '--to-port',
      String(PORT_A),
      '--type',
      'flow-new',
    ],
    { cwd: REPO, env },
  );
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await waitForFollower();
  t.equal(out, '', 'no history with -f alone');
  for (let i = 0; i < 3; i++) t.equal(await tcpRequest(ns.other, ip4(eps.server), PORT_A), 'ping');
  const end = Date.now() + 10_000;
  const lines = () => out.split('\n').filter((l) => / FORWARDED \(TCP Flags: SYN\)$/.test(l)).length;
  while (lines() < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.ok(lines() >= 3, `streamed:\n${out}`);
  t.notMatch(out, new RegExp(ip4(eps.client).replace(/\./g, '\\.')), 'only what the filters select');
  child.kill('SIGINT');
  t.equal(await exited, 0);
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
  await new Promise((r) => setTimeout(r, 300)); // traffic is over: let the last events drain
  const page = await scrape();
  const status = await observer.status();
  const processed = page.get('membrane_flows_processed_total')!.samples.reduce((n, s) => n + s.value, 0);
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
