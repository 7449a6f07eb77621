// The agent's flows part with stand-ins for its declared dependencies (root: real bpffs pins). The synthetic producer
// writes trace events into the same `events` / `events_lost` pins the agent reads, so the path
// ring buffer -> flows (enriched from endpoints, identities, policy) -> gRPC + metrics is real.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Endpoint } from '../src/types.ts';
import { endpointRecord } from './lib/endpoint-record.ts';
import { metricsPageAt } from './lib/metrics-page.ts';
import { pollFor } from './lib/poll.ts';
import type { ServerStatus } from '../src/flows/types.ts';

const root = process.getuid?.() === 0 && fs.existsSync('/sys/fs/bpf');
if (!root) {
  t.plan(0, 'needs root and bpffs');
  process.exit(0);
}

const { startFlows } = await import('../src/agent/flows.ts');
const { SyntheticProducer } = await import('../src/flows/synthetic/producer.ts');
const { ObserverClient } = await import('../src/flows/client.ts');
const { encodeTraceEvent, EventType } = await import('../src/flows/event.ts');
const { createLogger } = await import('../src/log.ts');
const { parsePrometheusText, sampleValue } = await import('../src/metrics/parse.ts');

const id = randomBytes(4).toString('hex');
const pinDir = `/sys/fs/bpf/mbt-flows-ext-${id}`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mbt-flows-ext-${id}-`));
const producer = SyntheticProducer.open(pinDir); // creates the events / events_lost pins the agent reads

const ep = (n: number, ip: string, labels: Record<string, string>): Endpoint =>
  endpointRecord(n, {
    containerId: `ctr-${n}`,
    network: 'default',
    netns: '/x',
    hostIfName: `mbr${n}`,
    hostIfIndex: 10 + n,
    hostMac: '',
    mac: '',
    ips: [{ address: `${ip}/32`, gateway: '', family: 4, subnet: '' }],
    labels,
    identity: 300 + n,
  });
const endpoints = [ep(1, '10.77.0.2', { 'k8s:app': 'client' }), ep(2, '10.77.0.3', { 'k8s:app': 'db' })];
const hooks: { afterCreate?: (e: Endpoint, ms: number) => void; afterDelete?: (e: Endpoint) => void }[] = [];
let policyRevision = 1;
let policyList: { name: string; namespace?: string; kind: string; revision: number; rules: number }[] = [
  { name: 'shop/db-deny', namespace: 'shop', kind: 'CiliumNetworkPolicy', revision: 1, rules: 2 },
];
const deps = {
  startedAt: Date.now(),
  cfg: {
    nodeName: 'node-x',
    observerSocket: path.join(dir, 'observer.sock'),
    observerAddress: '127.0.0.1:0',
    metricsAddress: '127.0.0.1:0',
    flowBufferSize: 50,
    flowEvents: true,
  },
  log: createLogger({ level: 'silent' }),
  datapath: {
    pinDir,
    mapPressure: () => ({
      conntrack: { entries: 3, max: 65536 },
      policy: { entries: 2, max: 16384 },
      ipcache: { entries: 5, max: 65536 },
    }),
    dropCounters: () => ({ 1: { packets: 4n, bytes: 240n } }),
    globalConfig: () => ({ events: true, audit: false }),
  },
  endpoints: {
    list: () => endpoints,
    addHooks: (h: object) => {
      hooks.push(h);
    },
  },
  rules: {
    describeRule: (r: number) =>
      r === 0x2401 ? { policy: 'db-deny', index: 1, direction: 'ingress' as const, action: 'deny' as const } : undefined,
    policies: () => policyList,
    revision: () => policyRevision,
  },
  identities: { labelsOf: (i: number) => (i === 2 ? { 'reserved:world': '' } : undefined) },
};

const flows = await startFlows(deps as never);
t.teardown(async () => {
  await flows.close();
  producer.close();
  fs.rmSync(pinDir, { recursive: true, force: true });
  fs.rmSync(dir, { recursive: true, force: true });
});
const client = new ObserverClient(deps.cfg.observerSocket);
t.teardown(() => client.close());

t.test('publishes where it serves', async (t) => {
  const ob = flows.status().observer;
  t.equal(ob.socket, deps.cfg.observerSocket);
  t.match(ob.address, /^127\.0\.0\.1:[1-9]\d*$/);
  t.equal(ob.flowBufferSize, 50);
  t.match(flows.status().metrics.address, /^127\.0\.0\.1:[1-9]\d*$/);
});

t.test('kernel ring buffer events become enriched flows', async (t) => {
  producer.emit(
    encodeTraceEvent({
      type: EventType.FLOW_NEW,
      endpointId: 2,
      ifindex: 12,
      saddr: '10.77.0.2',
      daddr: '10.77.0.3',
      sport: 41000,
      dport: 5432,
      tcpFlags: 2,
      srcIdentity: 301,
      dstIdentity: 302,
    }),
  );
  producer.emit(
    encodeTraceEvent({
      type: EventType.DROP,
      verdict: 1,
      reason: 1,
      endpointId: 2,
      ifindex: 12,
      saddr: '198.18.0.7',
      daddr: '10.77.0.3',
      sport: 41001,
      dport: 5432,
      srcIdentity: 2,
      dstIdentity: 302,
      ruleId: 0x2401,
    }),
  );
  const flows = await pollFor('both flows in the buffer', async () => {
    const r = await client.collect({});
    return r.length >= 2 ? r : undefined;
  });
  const [ok, drop] = flows.map((r) => r.flow!);
  t.equal(ok.verdict, 'FORWARDED');
  t.same(ok.source, { ID: 1, identity: 301, labels: ['k8s:app=client'] });
  t.same([ok.membrane?.sourceContainerId, ok.membrane?.destinationContainerId], ['ctr-1', 'ctr-2']);
  t.same(ok.destination, { ID: 2, identity: 302, labels: ['k8s:app=db'] });
  t.same(ok.interface, { index: 12, name: 'mbr2' });
  t.ok(Math.abs(ok.time.seconds * 1000 - Date.now()) < 10_000, 'monotonic time turned into wall-clock time');
  t.equal(drop.verdict, 'DROPPED');
  t.same(drop.source, { identity: 2, labels: ['reserved:world'] });
  t.equal(drop.ingressDeniedBy?.[0].name, 'db-deny');
  t.equal(drop.nodeName, 'node-x');
});

t.test('the buffer keeps the newest --flow-buffer flows; status counts them all', async (t) => {
  producer.emit(
    encodeTraceEvent({ type: EventType.FLOW_END, saddr: '10.77.0.2', daddr: '10.77.0.3', packets: 3, bytes: 300 }),
    200,
  );
  const st = await pollFor('202 flows seen', async () => {
    const s = await client.status();
    return s.seenFlows >= 202 ? s : undefined;
  });
  t.match(st, {
    numFlows: 50,
    maxFlows: 50,
    seenFlows: 202,
    membrane: { lostEventsDatapath: 0, flowEventsEnabled: true, nodeName: 'node-x' },
  });
});

t.test('losses in the datapath are reported', async (t) => {
  producer.emit(encodeTraceEvent({ type: EventType.FLOW_NEW, saddr: '10.77.0.2', daddr: '10.77.0.3' }), 30_000); // > 1 MiB ring
  const lost = (s: ServerStatus) => s.membrane?.lostEventsDatapath ?? 0;
  const st = await pollFor('every event seen or counted lost', async () => {
    const s = await client.status();
    return s.seenFlows + lost(s) >= 202 + 30_000 ? s : undefined;
  });
  t.ok(lost(st) > 0);
  t.equal(st.seenFlows + lost(st), 202 + 30_000, 'every event either seen or counted lost');
});

t.test('metrics: endpoint hooks, drops, map pressure, flows, lost', async (t) => {
  for (const h of hooks) h.afterCreate?.(endpoints[0], 37);
  const address = flows.status().metrics.address;
  const page = parsePrometheusText(await metricsPageAt(address));
  t.equal(sampleValue(page, 'membrane_endpoint_create_duration_seconds_count'), 1);
  t.equal(sampleValue(page, 'membrane_endpoints'), 2);
  t.equal(sampleValue(page, 'membrane_drop_count_total', { reason: 'POLICY_DENIED' }), 4);
  t.equal(sampleValue(page, 'membrane_bpf_map_pressure', { map: 'conntrack' }), 3 / 65536);
  t.equal(sampleValue(page, 'membrane_flows_processed_total', { verdict: 'DROPPED', type: 'DROP' }), 1);
  t.equal(sampleValue(page, 'membrane_policy_verdict_total', { direction: 'ingress', action: 'denied', match: 'rule' }), 1);
  t.ok((sampleValue(page, 'membrane_flow_events_lost_total', { source: 'datapath' }) ?? 0) > 0);
});

t.test('agent events: start, endpoints, policy changes', async (t) => {
  for (const h of hooks) h.afterDelete?.(endpoints[1]);
  policyRevision = 2;
  policyList = [{ name: 'allow-all', kind: 'CiliumClusterwideNetworkPolicy', revision: 2, rules: 1 }];
  const types = await pollFor(
    'the POLICY_DELETED agent event',
    async () => {
      const got: string[] = [];
      for await (const r of client.agentEvents({}).responses) got.push(r.agentEvent!.type);
      return got.includes('POLICY_DELETED') ? got : undefined;
    },
    5000,
  );
  t.same(
    types,
    ['AGENT_STARTED', 'ENDPOINT_CREATED', 'ENDPOINT_DELETED', 'POLICY_UPDATED', 'POLICY_DELETED'],
    'no event for the policy that was there when the agent started',
  );
  const all: unknown[] = [];
  for await (const r of client.agentEvents({}).responses) all.push(r.agentEvent);
  t.same(all[2], { type: 'ENDPOINT_DELETED', endpointUpdate: { id: 2, labels: ['k8s:app=db'] } });
  t.same(all[3], {
    type: 'POLICY_UPDATED',
    policyUpdate: {
      labels: ['k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy', 'k8s:io.cilium.k8s.policy.name=allow-all'],
      revision: 2,
      ruleCount: 1,
    },
  });
  t.same(all[4], {
    type: 'POLICY_DELETED',
    policyUpdate: {
      labels: [
        'k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy',
        'k8s:io.cilium.k8s.policy.name=db-deny',
        'k8s:io.cilium.k8s.policy.namespace=shop',
      ],
      revision: 2,
      ruleCount: 2,
    },
  });
});

t.test('close releases the socket and ports', async (t) => {
  await flows.close();
  t.notOk(fs.existsSync(deps.cfg.observerSocket));
  await t.rejects(client.status(2000), { name: 'ObserverUnreachableError' });
});
