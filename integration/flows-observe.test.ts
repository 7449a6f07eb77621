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
    eps[name] = await agent.client.createEndpoint({ containerId: `flows-${name}-${run}`, netns: n.path, ifName: 'eth0', labels: { app: name, run } });
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
  const st = await agent.client.status() as unknown as { metrics: { address: string } };
  const text = await new Promise<string>((resolve, reject) => {
    http.get(`http://${st.metrics.address}/metrics`, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve(b));
    }).on('error', reject);
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
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), ...args], { cwd: REPO, env });
  let out = '', err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, out, err })));
}

const fromClientToA: GetFlowsRequest = { whitelist: [{ sourceIp: [] as string[], destinationPort: [] as string[] }] };

t.test('a connection becomes a new-flow and an end-of-flow record with the right fields', async (t) => {
  const st = await agent.client.status() as unknown as { observer: { socket: string }; metrics: { address: string }; nodeName: string };
  t.equal(st.observer.socket, agent.observerSocket, 'status publishes the observer');
  t.match(st.metrics.address, /^127\.0\.0\.1:[1-9]\d*$/, 'and the metrics address (port 0 resolved)');
  t.equal(await tcpRequest(ns.client, ip4(eps.server), PORT_A), 'ping');
  fromClientToA.whitelist![0] = { sourceIp: [ip4(eps.client)], destinationPort: [String(PORT_A)] };
  const flows = await flowsUntil(fromClientToA, (fs) => fs.some((f) => f.eventType === 'FLOW_NEW') && fs.some((f) => f.eventType === 'FLOW_END'));
  const fresh = flows.find((f) => f.eventType === 'FLOW_NEW')!;
  t.equal(fresh.verdict, 'FORWARDED');
  t.same(fresh.isReply, { value: false });
  t.equal(fresh.ip.source, ip4(eps.client));
  t.equal(fresh.ip.destination, ip4(eps.server));
  t.equal(fresh.ip.ipVersion, 'IPv4');
  t.equal(fresh.l4.tcp?.destinationPort, PORT_A);
  t.ok(fresh.l4.tcp?.sourcePort, 'source port');
  t.ok(fresh.l4.tcp?.flags?.SYN, 'SYN of the first packet');
  t.equal(fresh.source.id, eps.client.id);
  t.equal(fresh.source.identity, eps.client.identity);
  t.ok(fresh.source.labels?.some((l) => /(^|:)app=client$/.test(l)), `client labels ${fresh.source.labels}`);
  t.equal(fresh.destination.id, eps.server.id);
  t.equal(fresh.destination.identity, eps.server.identity);
  t.ok(fresh.destination.labels?.some((l) => /(^|:)app=server$/.test(l)));
  t.ok(['INGRESS', 'EGRESS'].includes(fresh.trafficDirection));
  t.equal(fresh.nodeName, st.nodeName);
  const ms = fresh.time.seconds * 1000 + (fresh.time.nanos ?? 0) / 1e6;
  t.ok(ms >= started - 1000 && ms <= Date.now() + 1000, 'wall-clock time of the event');
  const end = flows.find((f) => f.eventType === 'FLOW_END')!;
  t.ok((end.counters?.packets ?? 0) >= 4, `end-of-flow totals: ${JSON.stringify(end.counters)}`);
  t.ok((end.counters?.bytes ?? 0) > 0);
  t.equal(end.l4.tcp?.destinationPort, PORT_A, 'reported in the flow direction even when a reply closed it');
});

t.test('membrane observe shows the same flows (json, compact, table)', async (t) => {
  const json = await cli(['observe', '--from-label', 'app=client', '--to-port', String(PORT_A), '--type', 'trace', '--last', '10', '-o', 'json']);
  t.equal(json.code, 0, json.err);
  const flows = json.out.trim().split('\n').map((l) => JSON.parse(l).flow as Flow & { time: string });
  const grpc = (await observer.collect(fromClientToA)).map((r) => r.flow!);
  t.same(flows.map((f) => [f.eventType, f.l4.tcp?.sourcePort]), grpc.map((f) => [f.eventType, f.l4.tcp?.sourcePort]), 'CLI and gRPC agree');
  t.match(flows[0].time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
  const compact = await cli(['observe', '--ip', ip4(eps.server), '--port', String(PORT_A), '--last', '2']);
  t.equal(compact.code, 0, compact.err);
  t.match(compact.out, new RegExp(`${ip4(eps.client).replace(/\./g, '\\.')}:\\d+ \\(.*app=client.*\\) -> ${ip4(eps.server).replace(/\./g, '\\.')}:${PORT_A} .* FORWARDED`));
  const table = await cli(['observe', '--to-ip', ip4(eps.server), '-o', 'table', '--last', '1']);
  t.match(table.out, /^TIMESTAMP +SOURCE +DESTINATION +TYPE +VERDICT +SUMMARY\n.+FORWARDED/);
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
  const drop = (await flowsUntil({ whitelist: [{ sourceIp: [ip4(eps.other)], verdict: ['DROPPED'] }] }, (fs) => fs.length > 0))[0];
  t.equal(drop.eventType, 'DROP');
  t.equal(drop.dropReasonDesc, 'POLICY_DENIED');
  t.equal(drop.ingressDeniedBy?.[0]?.name, `flows-server-${run}`, 'the policy that denied it');
  t.equal(drop.ingressDeniedBy?.[0]?.ruleIndex, 0, 'ingressDeny[0]');
  t.equal(drop.destination.id, eps.server.id);
  const line = await cli(['observe', '--verdict', 'DROPPED', '--from-label', 'app=other', '--last', '1']);
  t.match(line.out, new RegExp(`DROPPED \\(TCP SYN\\) policy denied, denied by policy flows-server-${run} \\(ingress deny rule 0\\)`));

  // Allowed by a rule: the flow names the allowing policy.
  t.equal(await tcpRequest(ns.client, ip4(eps.server), PORT_A), 'ping');
  const allowed = await flowsUntil({ whitelist: [{ sourceIp: [ip4(eps.client)], eventType: ['FLOW_NEW'], destinationPort: [String(PORT_A)] }] },
    (fs) => fs.some((f) => f.ingressAllowedBy?.length));
  t.equal(allowed.find((f) => f.ingressAllowedBy?.length)!.ingressAllowedBy![0].name, `flows-server-${run}`);

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
  const dflt = (await flowsUntil({ whitelist: [{ sourceIp: [ip4(eps.client)], verdict: ['DROPPED'] }] }, (fs) => fs.length > 0))[0];
  t.equal(dflt.ingressDeniedBy, undefined, 'no rule denied it');
  const dline = await cli(['observe', '--verdict', 'DROPPED', '--from-ip', ip4(eps.client), '--last', '1']);
  t.match(dline.out, /DROPPED \(TCP SYN\) policy denied: default deny \(ingress of the endpoint is selected by a policy and no rule allows this peer\)/);
});

t.test('--follow streams new flows as they happen, and stops on ^C', async (t) => {
  const env: NodeJS.ProcessEnv = { ...process.env, MEMBRANE_OBSERVER_SOCKET: agent.observerSocket };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), 'observe', '-f',
    '--from-label', 'app=other', '--to-port', String(PORT_A), '--type', 'trace'], { cwd: REPO, env });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await waitForFollower();
  t.equal(out, '', 'no history with -f alone');
  for (let i = 0; i < 3; i++) t.equal(await tcpRequest(ns.other, ip4(eps.server), PORT_A), 'ping');
  const end = Date.now() + 10_000;
  while ((out.match(/ new /g) ?? []).length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  t.ok((out.match(/ new /g) ?? []).length >= 3, `streamed:\n${out}`);
  t.notMatch(out, /app=client/, 'only what the filters select');
  child.kill('SIGINT');
  t.equal(await exited, 0);
});

t.test('filters select', async (t) => {
  const all = (await observer.collect({})).map((r) => r.flow!);
  const drops = (await observer.collect({ whitelist: [{ eventType: ['DROP'] }] })).map((r) => r.flow!);
  t.ok(drops.length > 0 && drops.every((f) => f.verdict === 'DROPPED'));
  const other = ip4(eps.other);
  const viaIp = (await observer.collect({ whitelist: [{ sourceIp: [other] }, { destinationIp: [other] }] })).map((r) => r.flow!);
  t.same(viaIp, all.filter((f) => f.ip.source === other || f.ip.destination === other), '--ip = either end');
  const notTcp = await observer.collect({ whitelist: [{ protocol: ['udp'] }], blacklist: [{ protocol: ['tcp'] }] });
  t.ok(notTcp.every((r) => !r.flow!.l4.tcp));
  const cliDrops = await cli(['observe', '--type', 'drop', '--last', '0', '-o', 'json']);
  t.equal(cliDrops.out.trim().split('\n').length, drops.length, 'CLI --type drop = gRPC event_type DROP');
  const bad = await cli(['observe', '--to-ip', '10.0.0.0/99']);
  t.equal(bad.code, 1);
  t.match(bad.err, /destination_ip.*prefix length/);
});

t.test('the metrics page parses as Prometheus text and agrees with the observer', async (t) => {
  await new Promise((r) => setTimeout(r, 300)); // traffic is over: let the last events drain
  const page = await scrape();
  const status = await observer.status();
  const processed = page.get('membrane_flows_processed_total')!.samples.reduce((n, s) => n + s.value, 0);
  t.equal(processed, status.seenFlows, 'flows counted = flows seen by the observer');
  t.equal(sampleValue(page, 'membrane_flow_events_lost_total', { source: 'datapath' }), status.lostEvents);
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
