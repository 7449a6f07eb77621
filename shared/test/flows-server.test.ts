// The observer's gRPC API end to end without a kernel (the setup: lib/observer-file.ts): injected
// events -> collector -> ring -> gRPC (unix socket and TCP) -> client: GetFlows and its filters, bad
// requests, field masks, ServerStatus, following (slow followers included), GetNodes, GetNamespaces,
// GetAgentEvents, GetDebugEvents. The `membrane observe` CLI against it: flows-server-cli.test.ts.
import t from 'tap';
import fs from 'node:fs';
import { ObserverClient } from '../src/flows/client.ts';
import { EventType } from '../src/flows/event.ts';
import { FOLLOW_QUEUE_LIMIT } from '../src/flows/server.ts';
import type { GetFlowsResponse } from '../src/flows/types.ts';
import { observerForFile, waitFor } from './lib/observer-file.ts';

const o = observerForFile(t);
const { ring, source, collector, agentEvents, socket, push, newFlow, dropFlow, sports, run } = o;

t.test('GetFlows: last, first, filters, time window', async (t) => {
  t.same(sports(await o.client.collect({ number: 3 })), [1008, 1009, 1010]);
  t.same(sports(await o.client.collect({ number: 2, first: true })), [1001, 1002]);
  t.same(
    sports(await o.client.collect({})),
    Array.from({ length: 10 }, (_, i) => 1001 + i),
    'number 0: all held',
  );
  const drops = await o.client.collect({ whitelist: [{ verdict: ['DROPPED'] }] });
  t.same(sports(drops), [1003, 1006, 1009]);
  t.equal(drops[0].flow?.ingressDeniedBy?.[0].name, 'deny-legacy');
  t.equal(drops[0].nodeName, 'node-t');
  t.same(
    sports(await o.client.collect({ blacklist: [{ eventType: [{ type: 1 }] }, { sourcePort: ['1001-1004'] }] })),
    [1005, 1007, 1008, 1010],
  );
  const all = await o.client.collect({});
  const since = all[4].flow!.time,
    until = all[6].flow!.time;
  t.same(sports(await o.client.collect({ since, until })), [1005, 1006, 1007]);
  t.same(sports(await o.client.collect({ since, number: 1, first: true })), [1005]);
});

t.test('bad requests are INVALID_ARGUMENT with the reason', async (t) => {
  await t.rejects(o.client.collect({ whitelist: [{ sourceIp: ['10.0.0.0/40'] }] }), {
    code: 3,
    message: /source_ip.*prefix length/,
  });
  await t.rejects(
    async () => {
      for await (const _ of o.client.flows({ first: true, follow: true }).responses) {
        /* none */
      }
    },
    { message: /first and follow/ },
  );
  await t.rejects(o.client.collect({ whitelist: [{ sourceService: ['web'] }] }), {
    code: 3,
    message: /whitelist\[0\]\.source_service: cannot be applied/,
  });
  await t.rejects(o.client.collect({ fieldMask: { paths: ['nope'] } }), { code: 3, message: /field_mask: "nope"/ });
});

t.test('field masks keep only the fields asked for', async (t) => {
  const [r] = await o.client.collect({ number: 1, fieldMask: { paths: ['time', 'IP.source', 'l4', 'Summary'] } });
  t.same(Object.keys(r.flow!).sort(), ['IP', 'Summary', 'l4', 'time']);
  t.same(r.flow!.IP, { source: '10.2.0.2' });
});

t.test('ServerStatus and TCP listener', async (t) => {
  const tcp = new ObserverClient(o.server.address!);
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
  t.match(o.server.address, /^127\.0\.0\.1:\d+$/);
  t.equal(fs.statSync(socket).mode & 0o777, 0o660);
});

t.test('follow: history then live flows that match, datapath losses included', async (t) => {
  const stream = o.client.flows({ follow: true, number: 1, whitelist: [{ verdict: ['DROPPED'] }] });
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
  t.equal((await o.client.status()).membrane?.lostEventsDatapath, 7);
});

t.test(
  'a follower that does not read loses flows, is told how many (datapath losses included), and never blocks the agent',
  async (t) => {
    const stream = o.client.flows({ follow: true });
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
    t.equal((await o.client.status()).membrane?.lostEventsAgent, collector.agentLost);
  },
);

t.test('GetNodes, GetNamespaces, GetAgentEvents, GetDebugEvents', async (t) => {
  const nodes = await o.client.nodes();
  t.equal(nodes.length, 1);
  t.match(nodes[0], { name: 'node-t', version: 'test', state: 'NODE_CONNECTED', tls: {}, maxFlows: 1000 });
  t.match(nodes[0].address, /^127\.0\.0\.1:\d+$/, 'the TCP address when there is one');
  t.same(await o.client.namespaces(), [], 'no flow of a namespaced endpoint yet');
  push({ type: EventType.FLOW_NEW, endpointId: 9, direction: 1, sport: 4444, dport: 80 });
  t.same(await o.client.namespaces(), [{ namespace: 'shop' }], "the namespace of a flow's endpoint");
  agentEvents.record({ type: 'AGENT_STARTED', agentStart: { time: { seconds: 5, nanos: 0 } } });
  agentEvents.record({ type: 'ENDPOINT_CREATED', endpointUpdate: { id: 9, namespace: 'shop', podName: 'db-0' } });
  const history: string[] = [];
  for await (const r of o.client.agentEvents({}).responses) history.push(r.agentEvent!.type);
  t.same(history, ['AGENT_STARTED', 'ENDPOINT_CREATED']);
  const last: string[] = [];
  for await (const r of o.client.agentEvents({ number: 1 }).responses) last.push(r.agentEvent!.type);
  t.same(last, ['ENDPOINT_CREATED']);
  const subscribed = () => (agentEvents as unknown as { subscribers: Set<unknown> }).subscribers.size;
  const before = subscribed();
  const follow = o.client.agentEvents({ follow: true });
  const it = follow.responses[Symbol.asyncIterator]();
  const next = it.next();
  // A follow sends only what happens once the server has subscribed it: record after that, not
  // after a fixed 100 ms a loaded machine can outlast.
  await waitFor(() => subscribed() > before);
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
      const stream = (o.client as unknown as { raw: { getDebugEvents(r: object): AsyncIterable<unknown> } }).raw.getDebugEvents(
        {},
      );
      for await (const _ of stream) {
        /* none */
      }
    },
    { code: 12, details: /no debug events/ },
  );
});
