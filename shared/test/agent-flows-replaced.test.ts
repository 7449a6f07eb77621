// The agent's flows part reuses the last event's lookups per direction (EnrichMemo) while its endpoint
// table is unchanged: a pod replaced by another with the same address, labels and identity (a
// Deployment's rollout) must show as the new pod in the next flow, never as the one that is gone, and
// so must a pod whose metadata changed. Real ring buffer pins (root + bpffs), stand-ins for the rest.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Endpoint } from '../src/types.ts';
import { endpointRecord } from './lib/endpoint-record.ts';
import { pollFor } from './lib/poll.ts';

const root = process.getuid?.() === 0 && fs.existsSync('/sys/fs/bpf');
if (!root) {
  t.plan(0, 'needs root and bpffs');
  process.exit(0);
}

const { startFlows } = await import('../src/agent/flows.ts');
const { SyntheticProducer } = await import('../src/flows/synthetic/producer.ts');
const { ObserverClient } = await import('../src/flows/client.ts');
const { encodeTraceEvent, EventType, Direction } = await import('../src/flows/event.ts');
const { createLogger } = await import('../src/log.ts');

const id = randomBytes(4).toString('hex');
const pinDir = `/sys/fs/bpf/mbt-flows-rep-${id}`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), `mbt-flows-rep-${id}-`));
const producer = SyntheticProducer.open(pinDir);

const CLIENT = '10.78.0.2',
  DB = '10.78.0.3';
const pod = (n: number, ip: string, app: string, name: string): Endpoint =>
  endpointRecord(n, {
    containerId: `ctr-${name}`,
    hostIfName: `mbr${n}`,
    hostIfIndex: 10 + n,
    ips: [{ address: `${ip}/32`, gateway: '', family: 4, subnet: '' }],
    labels: { 'k8s:app': app, 'k8s:io.kubernetes.pod.namespace': 'shop' },
    metadata: { 'k8s:io.kubernetes.pod.name': name },
    identity: app === 'client' ? 301 : 302,
  });
const client = pod(1, CLIENT, 'client', 'client-1');
const dbA = pod(2, DB, 'db', 'db-a');
const dbB = pod(3, DB, 'db', 'db-b'); // dbA's address, labels and identity: its replacement
let endpoints = [client, dbA];
type Hooks = {
  afterCreate?: (e: Endpoint, ms: number) => void;
  afterDelete?: (e: Endpoint) => void;
  afterLabelsChanged?: (e: Endpoint) => void;
};
const hooks: Hooks[] = [];

const flows = await startFlows({
  startedAt: Date.now(),
  cfg: {
    nodeName: 'node-r',
    observerSocket: path.join(dir, 'observer.sock'),
    metricsAddress: 'off',
    flowBufferSize: 50,
    flowEvents: true,
  },
  log: createLogger({ level: 'silent' }),
  datapath: {
    pinDir,
    mapPressure: () => ({}),
    dropCounters: () => ({}),
    globalConfig: () => ({ events: true, audit: false }),
  },
  endpoints: { list: () => endpoints, addHooks: (h: Hooks) => hooks.push(h) },
  rules: { describeRule: () => undefined, policies: () => [], revision: () => 1 },
  identities: { labelsOf: () => undefined },
} as never);
const observer = new ObserverClient(path.join(dir, 'observer.sock'));
t.teardown(async () => {
  observer.close();
  await flows.close();
  producer.close();
  fs.rmSync(pinDir, { recursive: true, force: true });
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The client's connection to the db and the db's answer as its hook sees them (both directions). */
const events = () => [
  encodeTraceEvent({
    type: EventType.FLOW_NEW,
    endpointId: 1,
    direction: Direction.EGRESS,
    saddr: CLIENT,
    daddr: DB,
    sport: 41000,
    dport: 5432,
    srcIdentity: 301,
    dstIdentity: 302,
  }),
  encodeTraceEvent({
    type: EventType.FLOW_NEW,
    endpointId: 1,
    direction: Direction.INGRESS,
    saddr: DB,
    daddr: CLIENT,
    sport: 5432,
    dport: 41000,
    srcIdentity: 302,
    dstIdentity: 301,
  }),
];
let seen = 0;
/** Emits both events and answers the db side of each as the flows show it: [ID, pod name]. */
async function dbAsSeen(): Promise<[number | undefined, string | undefined][]> {
  for (const e of events()) producer.emit(e);
  seen += 2;
  const got = await pollFor(`${seen} flows`, async () => {
    const r = await observer.collect({});
    return r.length >= seen ? r.slice(seen - 2) : undefined;
  });
  const [out, back] = got.map((r) => r.flow!);
  return [
    [out.destination?.ID, out.destination?.podName],
    [back.source?.ID, back.source?.podName],
  ];
}

t.test('a pod replaced by one with its address, labels and identity shows as the new pod', async (t) => {
  t.same(await dbAsSeen(), [
    [2, 'db-a'],
    [2, 'db-a'],
  ]);
  t.same(
    await dbAsSeen(),
    [
      [2, 'db-a'],
      [2, 'db-a'],
    ],
    'the same again (from the memo)',
  );
  endpoints = [client, dbB];
  for (const h of hooks) h.afterDelete?.(dbA);
  for (const h of hooks) h.afterCreate?.(dbB, 1);
  t.same(
    await dbAsSeen(),
    [
      [3, 'db-b'],
      [3, 'db-b'],
    ],
    'the replacement, both ways',
  );
});

t.test("a pod's new metadata shows in the next flows", async (t) => {
  const renamed = { ...dbB, metadata: { 'k8s:io.kubernetes.pod.name': 'db-b2' } };
  endpoints = [client, renamed];
  for (const h of hooks) h.afterLabelsChanged?.(renamed);
  t.same(await dbAsSeen(), [
    [3, 'db-b2'],
    [3, 'db-b2'],
  ]);
});
