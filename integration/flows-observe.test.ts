// Flow visibility on real traffic: pods in netns of our own behind a real agent (from source, with
// the policy and flows extensions; lib/flow-pods.ts). Connections show up as flows with the right
// fields through gRPC and `membrane observe`; --follow streams. Drops, filters, Hubble's wire format
// and the metrics page: flows-observe-drops.test.ts (its own agent, in parallel).
// Traffic stays between our netns and the node; every name is unique; everything is removed.
import t from 'tap';
import { type FlowPods, startFlowPods } from './lib/flow-pods.ts';
import { tcpRequest } from './lib/tcp.ts';
import type { ObserverClient } from '../shared/src/flows/client.ts';
import type { GetFlowsRequest } from '../shared/src/flows/types.ts';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ip4, REPO, type TestAgent } from './lib/agent.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

let f: FlowPods;
let agent: TestAgent;
let observer: ObserverClient;
let eps: FlowPods['eps'];
let ns: FlowPods['ns'];
let PORT_A: number;
const started = Date.now();
t.before(async () => {
  f = await startFlowPods();
  ({ agent, observer, eps, ns, portA: PORT_A } = f);
});
t.teardown(() => f?.cleanup());
const flowsUntil: FlowPods['flowsUntil'] = (...a) => f.flowsUntil(...a);
const waitForFollower: FlowPods['waitForFollower'] = (...a) => f.waitForFollower(...a);
const cli: FlowPods['cli'] = (args) => f.cli(args);

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
