// The observer end to end without a kernel: injected events -> collector -> ring -> gRPC (unix
// socket and TCP) -> client and the `membrane observe` CLI.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FlowCollector } from '../src/flows/collector.ts';
import { ObserverClient } from '../src/flows/client.ts';
import { encodeTraceEvent, EventType, type TraceEvent } from '../src/flows/event.ts';
import type { FlowContext } from '../src/flows/flow.ts';
import { FlowRing } from '../src/flows/ring.ts';
import { FOLLOW_QUEUE_LIMIT, ObserverServer } from '../src/flows/server.ts';
import { InjectedEventSource } from '../src/flows/source.ts';
import { AgentEventLog } from '../src/flows/agent-events.ts';
import type { GetFlowsResponse } from '../src/flows/types.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-flows-srv-'));
const socket = path.join(dir, 'observer.sock');
const ring = new FlowRing(1000, 'node-t');
const source = new InjectedEventSource();
const ctx: FlowContext = {
  nodeName: 'node-t',
  wallOffset: { seconds: 0, nanos: 0 },
  endpointByAddress: () => undefined,
  labelsOfIdentity: () => undefined,
  describeRule: (id) => (id === 0x1401 ? { policy: 'deny-legacy', index: 1, direction: 'ingress', action: 'deny' } : undefined),
  endpointById: (id) =>
    id === 9
      ? { id: 9, identity: 300, labels: { 'k8s:app': 'db' }, containerId: 'c9', namespace: 'shop', podName: 'db-0' }
      : undefined,
};
const collector = new FlowCollector({ ring, source, context: ctx });
const agentEvents = new AgentEventLog();
collector.start();
let server: ObserverServer;
let client: ObserverClient;
let tsNs = Date.now() * 1e6; // with a zero offset, monotonic = wall clock here
const push = (e: Partial<TraceEvent>) => {
  tsNs += 1e6;
  source.push(encodeTraceEvent({ tsNs, saddr: '10.2.0.2', daddr: '10.2.0.3', proto: 6, ...e }));
};
const newFlow = (sport: number) => push({ type: EventType.FLOW_NEW, sport, dport: 80, tcpFlags: 2 });
const dropFlow = (sport: number) => push({ type: EventType.DROP, verdict: 1, reason: 1, sport, dport: 5432, ruleId: 0x1401 });
const sports = (rs: GetFlowsResponse[]) => rs.map((r) => r.flow?.l4?.TCP?.sourcePort);

t.before(async () => {
  server = await ObserverServer.start(
    {
      ring,
      nodeName: 'node-t',
      version: 'test',
      startedAtNs: process.hrtime.bigint(),
      flowEventsEnabled: () => true,
      lostEvents: () => collector.datapathLost(),
      lostEventsAgent: () => collector.agentLost,
      onLost: (fn) => collector.onLost(fn),
      countAgentLost: (n) => collector.countAgentLost(n),
      agentEvents,
    },
    { socket, address: '127.0.0.1:0' },
  );
  client = new ObserverClient(socket);
  for (let i = 1; i <= 10; i++) (i % 3 ? newFlow : dropFlow)(1000 + i);
});
t.teardown(async () => {
  client.close();
  await server.close();
  collector.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

t.test('GetFlows: last, first, filters, time window', async (t) => {
  t.same(sports(await client.collect({ number: 3 })), [1008, 1009, 1010]);
  t.same(sports(await client.collect({ number: 2, first: true })), [1001, 1002]);
  t.same(
    sports(await client.collect({})),
    Array.from({ length: 10 }, (_, i) => 1001 + i),
    'number 0: all held',
  );
  const drops = await client.collect({ whitelist: [{ verdict: ['DROPPED'] }] });
  t.same(sports(drops), [1003, 1006, 1009]);
  t.equal(drops[0].flow?.ingressDeniedBy?.[0].name, 'deny-legacy');
  t.equal(drops[0].nodeName, 'node-t');
  t.same(
    sports(await client.collect({ blacklist: [{ eventType: [{ type: 1 }] }, { sourcePort: ['1001-1004'] }] })),
    [1005, 1007, 1008, 1010],
  );
  const all = await client.collect({});
  const since = all[4].flow!.time,
    until = all[6].flow!.time;
  t.same(sports(await client.collect({ since, until })), [1005, 1006, 1007]);
  t.same(sports(await client.collect({ since, number: 1, first: true })), [1005]);
});

t.test('bad requests are INVALID_ARGUMENT with the reason', async (t) => {
  await t.rejects(client.collect({ whitelist: [{ sourceIp: ['10.0.0.0/40'] }] }), {
    code: 3,
    message: /source_ip.*prefix length/,
  });
  await t.rejects(
    async () => {
      for await (const _ of client.flows({ first: true, follow: true }).responses) {
        /* none */
      }
    },
    { message: /first and follow/ },
  );
  await t.rejects(client.collect({ whitelist: [{ sourceService: ['web'] }] }), {
    code: 3,
    message: /whitelist\[0\]\.source_service: cannot be applied/,
  });
  await t.rejects(client.collect({ fieldMask: { paths: ['nope'] } }), { code: 3, message: /field_mask: "nope"/ });
});

t.test('field masks keep only the fields asked for', async (t) => {
  const [r] = await client.collect({ number: 1, fieldMask: { paths: ['time', 'IP.source', 'l4', 'Summary'] } });
  t.same(Object.keys(r.flow!).sort(), ['IP', 'Summary', 'l4', 'time']);
  t.same(r.flow!.IP, { source: '10.2.0.2' });
});

t.test('ServerStatus and TCP listener', async (t) => {
  const tcp = new ObserverClient(server.address!);
  t.teardown(() => tcp.close());
  const s = await tcp.status();
  t.match(s, {
    numFlows: 10,
    maxFlows: 1000,
    seenFlows: 10,
    version: 'test',
    membrane: { nodeName: 'node-t', lostEventsDatapath: 0, lostEventsAgent: 0, flowEventsEnabled: true },
  });
  t.equal(s.numConnectedNodes, undefined, 'an agent is not a relay: no node counts');
  t.equal(await tcp.healthCheck(), 'SERVING', 'the gRPC health service hubble status asks');
  t.ok(s.uptimeNs > 0);
  t.match(server.address, /^127\.0\.0\.1:\d+$/);
  t.equal(fs.statSync(socket).mode & 0o777, 0o660);
});

t.test('follow: history then live flows that match, datapath losses included', async (t) => {
  const stream = client.flows({ follow: true, number: 1, whitelist: [{ verdict: ['DROPPED'] }] });
  const got: GetFlowsResponse[] = [];
  const reading = (async () => {
    for await (const r of stream.responses) {
      got.push(r);
      if (got.length === 4) break;
    }
  })();
  await waitFor(() => ring.followers === 1);
  newFlow(2001);
  dropFlow(2002);
  newFlow(2003);
  dropFlow(2004);
  source.lostCount = 7;
  collector.tick();
  await reading;
  stream.cancel();
  t.same(sports(got.slice(0, 3)), [1009, 2002, 2004]);
  t.same(got[3].lostEvents, { source: 'PERF_EVENT_RING_BUFFER', numEventsLost: 7 });
  await waitFor(() => ring.followers === 0);
  t.equal((await client.status()).membrane?.lostEventsDatapath, 7);
});

t.test(
  'a follower that does not read loses flows, is told how many (datapath losses included), and never blocks the agent',
  async (t) => {
    const stream = client.flows({ follow: true });
    const it = stream.responses[Symbol.asyncIterator]();
    const first = await Promise.all([
      it.next(),
      (async () => {
        await waitFor(() => ring.followers === 1);
        newFlow(1);
      })(),
    ]);
    t.equal(first[0].value.flow.l4.TCP.sourcePort, 1);
    const before = collector.agentLost;
    const seenBefore = ring.seen;
    const N = FOLLOW_QUEUE_LIMIT * 4;
    // One synchronous loop: the client cannot read meanwhile, so whatever the follower's queue does not
    // take must be dropped (counted) rather than held: the agent's memory for a slow client is bounded.
    for (let i = 0; i < N; i++) newFlow(10_000 + (i % 50_000));
    // The datapath reports a loss while the queue is full: that report must wait, not be dropped.
    source.lostCount += 5;
    collector.tick();
    const lostHere = collector.agentLost - before;
    t.equal(ring.seen - seenBefore, N, 'the agent took every flow while the client read nothing');
    t.ok(lostHere > 0, `dropped ${lostHere} of ${N} for the slow follower`);
    t.ok(
      N - lostHere <= FOLLOW_QUEUE_LIMIT,
      `queued for it: ${N - lostHere}, at most the follow queue limit (${FOLLOW_QUEUE_LIMIT})`,
    );
    // Read exactly what was queued, then one more flow: it is preceded by the loss report.
    for (let read = 0; read < N - lostHere; read++) {
      const r = await it.next();
      if (!r.value.flow) {
        t.fail(`unexpected ${JSON.stringify(r.value)}`);
        break;
      }
    }
    newFlow(3);
    const report = (await it.next()).value;
    const datapathReport = (await it.next()).value;
    const next = (await it.next()).value;
    stream.cancel();
    t.same(report.lostEvents, { source: 'OBSERVER_EVENTS_QUEUE', numEventsLost: lostHere }, 'told exactly what was dropped');
    t.same(
      datapathReport.lostEvents,
      { source: 'PERF_EVENT_RING_BUFFER', numEventsLost: 5 },
      'and the datapath loss reported while its queue was full',
    );
    t.equal(next.flow?.l4?.TCP?.sourcePort, 3);
    t.equal((await client.status()).membrane?.lostEventsAgent, collector.agentLost);
  },
);

function cli(args: string[]) {
  return [path.join(REPO, 'shared/src/cli/main.ts'), ...args];
}
const env = () => {
  const e = { ...process.env };
  delete e.NODE_EXTRA_CA_CERTS;
  delete e.MEMBRANE_OBSERVER_SOCKET;
  return e;
};
// Async: the server under test lives in this process, a blocking spawn would starve it.
function run(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', ...cli(args)], { cwd: REPO, env: env(), timeout: 30_000 });
  let stdout = '',
    stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  return new Promise((resolve) => child.once('close', (status) => resolve({ status, stdout, stderr })));
}

t.test('membrane observe: compact drop lines, json, table, status, errors', async (t) => {
  dropFlow(3003);
  dropFlow(3004); // the flood above pushed the older drops out of the ring
  const drops = await run(['observe', '--observer-socket', socket, '--verdict', 'DROPPED', '--last', '2', '--utc']);
  t.equal(drops.status, 0, drops.stderr);
  const lines = drops.stdout.trim().split('\n');
  t.equal(lines.length, 2);
  t.match(
    lines[1],
    /^\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: 10\.2\.0\.2:3004 \(ID:0\) -> 10\.2\.0\.3:5432 \(ID:0\) Policy denied by denylist DROPPED \(TCP; denied by policy deny-legacy \(ingress deny rule 1\)\)$/,
  );
  const json = await run([
    'observe',
    '--observer-socket',
    socket,
    '--type',
    'trace',
    '--to-port',
    '80',
    '--last',
    '3',
    '-o',
    'json',
  ]);
  const objs = json.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.equal(objs.length, 3);
  t.ok(
    objs.every(
      (o) =>
        o.flow.event_type.type === 4 &&
        o.flow.membrane.event === 'FLOW_NEW' &&
        o.flow.l4.TCP.destination_port === 80 &&
        /Z$/.test(o.flow.time),
    ),
  );
  const table = await run(['observe', '--observer-socket', socket, '--last', '1', '-o', 'table']);
  t.match(table.stdout, /^TIMESTAMP +SOURCE +DESTINATION +TYPE +VERDICT +SUMMARY\n/);
  const st = await run(['observe', 'status', '--observer-socket', socket, '-o', 'json']);
  t.equal(JSON.parse(st.stdout).membrane.nodeName, 'node-t');
  const text = await run(['observe', 'status', '--observer-socket', socket]);
  t.match(text.stdout, /^Healthcheck \(via unix:.*\): Ok\nCurrent\/Max Flows: [\d,]+\/1,000 \([\d.]+%\)\nFlows\/s: [\d.]+\n/);
  const nodes = await run(['observe', 'nodes', '--observer-socket', socket]);
  t.match(nodes.stdout, /^NAME +STATUS +AGE +FLOWS\/S +CURRENT\/MAX-FLOWS\nnode-t +Connected +\S+ +N\/A +[\d,]+\/1,000\n$/);
  const raw = await run(['observe', '--print-raw-filters', '--ip', '10.0.0.1', '--not', '--type', 'drop']);
  t.same(JSON.parse(raw.stdout), {
    allowlist: [{ sourceIp: ['10.0.0.1'] }, { destinationIp: ['10.0.0.1'] }],
    denylist: [{ eventType: [{ type: 1 }] }],
  });
  const refused = await run(['observe', '--observer-socket', socket, '--service', 'web']);
  t.equal(refused.status, 1);
  t.match(refused.stderr, /source_service: cannot be applied: Membrane has no service load-balancing/);
  const bad = await run(['observe', '--observer-socket', socket, '--from-ip', 'nope']);
  t.equal(bad.status, 1);
  t.match(bad.stderr, /source_ip: "nope" is not an IP address/);
  const gone = await run(['observe', '--observer-socket', path.join(dir, 'missing.sock')]);
  t.equal(gone.status, 1);
  t.match(gone.stderr, /cannot reach the flow observer at unix:.*missing\.sock[\s\S]*hint:/);
});

t.test('GetNodes, GetNamespaces, GetAgentEvents, GetDebugEvents', async (t) => {
  const nodes = await client.nodes();
  t.equal(nodes.length, 1);
  t.match(nodes[0], { name: 'node-t', version: 'test', state: 'NODE_CONNECTED', tls: {}, maxFlows: 1000 });
  t.match(nodes[0].address, /^127\.0\.0\.1:\d+$/, 'the TCP address when there is one');
  t.same(await client.namespaces(), [], 'no flow of a namespaced endpoint yet');
  push({ type: EventType.FLOW_NEW, endpointId: 9, direction: 1, sport: 4444, dport: 80 });
  t.same(await client.namespaces(), [{ namespace: 'shop' }], "the namespace of a flow's endpoint");
  agentEvents.record({ type: 'AGENT_STARTED', agentStart: { time: { seconds: 5, nanos: 0 } } });
  agentEvents.record({ type: 'ENDPOINT_CREATED', endpointUpdate: { id: 9, namespace: 'shop', podName: 'db-0' } });
  const history: string[] = [];
  for await (const r of client.agentEvents({}).responses) history.push(r.agentEvent!.type);
  t.same(history, ['AGENT_STARTED', 'ENDPOINT_CREATED']);
  const last: string[] = [];
  for await (const r of client.agentEvents({ number: 1 }).responses) last.push(r.agentEvent!.type);
  t.same(last, ['ENDPOINT_CREATED']);
  const follow = client.agentEvents({ follow: true });
  const it = follow.responses[Symbol.asyncIterator]();
  const next = it.next();
  await new Promise((r) => setTimeout(r, 100));
  agentEvents.record({
    type: 'POLICY_UPDATED',
    policyUpdate: { labels: ['k8s:io.cilium.k8s.policy.name=p'], revision: 2, ruleCount: 1 },
  });
  t.same((await next).value.agentEvent, {
    type: 'POLICY_UPDATED',
    policyUpdate: { labels: ['k8s:io.cilium.k8s.policy.name=p'], revision: 2, ruleCount: 1 },
  });
  follow.cancel();
  const cliEvents = await run(['observe', 'agent-events', '--observer-socket', socket, '--utc']);
  t.match(
    cliEvents.stdout,
    /: ENDPOINT_CREATED \(id: 9, namespace: shop, pod name: db-0\)\n.*: POLICY_UPDATED \(labels: \[k8s:io\.cilium\.k8s\.policy\.name=p\], revision: 2, count: 1\)\n$/,
  );
  const ns = await run(['observe', 'namespaces', '--observer-socket', socket, '--no-headers']);
  t.equal(ns.stdout, '  shop\n');
  await t.rejects(
    async () => {
      const stream = (client as unknown as { raw: { getDebugEvents(r: object): AsyncIterable<unknown> } }).raw.getDebugEvents({});
      for await (const _ of stream) {
        /* none */
      }
    },
    { code: 12, details: /no debug events/ },
  );
});

t.test("membrane observe: hubble observe's filter and format flags, end to end", async (t) => {
  // Three distinct flows: IPv6 UDP egress from endpoint 9 (namespace shop), an IPv4 TCP SYN+ACK ingress
  // to it from identity 2 (world), and a drop.
  push({
    type: EventType.FLOW_NEW,
    family: 6,
    saddr: 'fd00::9',
    daddr: 'fd00::1',
    proto: 17,
    sport: 6001,
    dport: 53,
    endpointId: 9,
    direction: 1,
    srcIdentity: 300,
  });
  push({
    type: EventType.FLOW_NEW,
    saddr: '198.18.0.5',
    daddr: '10.2.0.9',
    sport: 6002,
    dport: 443,
    tcpFlags: 0x12,
    endpointId: 9,
    direction: 0,
    srcIdentity: 2,
    dstIdentity: 300,
  });
  dropFlow(6003);
  const sportsOf = async (...args: string[]) => {
    const r = await run(['observe', '--observer-socket', socket, '--last', '50', '-o', 'jsonpb', ...args]);
    if (r.status !== 0) return [r.stderr];
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const f = JSON.parse(l).flow;
        return (f.l4.TCP ?? f.l4.UDP).source_port as number;
      })
      .filter((p) => p >= 6001 && p <= 6003);
  };
  t.same(await sportsOf('-6'), [6001], '-6');
  t.same(await sportsOf('-4', '--from-identity', 'world'), [6002], '-4 --from-identity world');
  t.same(
    await sportsOf('--identity', '300', '--traffic-direction', 'egress'),
    [6001],
    '--identity (either end) --traffic-direction',
  );
  t.same(await sportsOf('--tcp-flags', 'syn,ack'), [6002], '--tcp-flags');
  t.same(await sportsOf('-n', 'shop'), [6001, 6002], '-n: either end in the namespace');
  t.same(await sportsOf('--from-namespace', 'shop'), [6001], '--from-namespace');
  t.same(await sportsOf('--to-namespace', 'shop'), [6002], '--to-namespace');
  t.same(await sportsOf('--node-name', 'node-*', '--not', '--protocol', 'tcp'), [6001], '--node-name, --not');
  t.same(await sportsOf('--drop-reason-desc', 'POLICY_DENY'), [6003], '--drop-reason-desc');
  t.same(await sportsOf('-t', 'drop'), [6003], '-t drop');
  t.same(await sportsOf('-t', 'trace:from-endpoint'), [6001], '-t trace:from-endpoint');
  t.same(await sportsOf('--node-name', 'other-*'), [], 'another node: nothing');
  const dict = await run(['observe', '--observer-socket', socket, '--last', '1', '-o', 'dict', '--print-node-name']);
  t.match(dict.stdout, /^ {2}TIMESTAMP: .+\n {7}NODE: node-t\n {5}SOURCE: 10\.2\.0\.2:6003\n/);
  const compact = await run(['observe', '--observer-socket', socket, '--last', '1', '--print-node-name', '--print-policy-names']);
  t.match(compact.stdout, /^\w{3} [ \d]\d [\d:.]+ \[node-t\]: 10\.2\.0\.2:6003 /);
  const ns = await run(['observe', 'namespaces', '--observer-socket', socket, '-o', 'json']);
  t.same(JSON.parse(ns.stdout), [{ namespace: 'shop' }]);
});

t.test('membrane observe --follow streams until interrupted', async (t) => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', ...cli(['observe', '--observer-socket', socket, '-f', '--protocol', 'tcp', '--to-port', '9999'])],
    { cwd: REPO, env: env() },
  );
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await waitFor(() => ring.followers === 1, 20_000);
  push({ type: EventType.FLOW_NEW, sport: 7777, dport: 9999 });
  push({ type: EventType.FLOW_NEW, sport: 7778, dport: 80 });
  await waitFor(() => out.includes(':7777'));
  child.kill('SIGINT');
  t.equal(await exited, 0);
  t.equal(out.trim().split('\n').length, 1, 'only the matching flow');
});

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}
