// Cluster mode benchmark (not a test), on the multi-node harness (3 nodes, real etcd, real agents):
//   1. policy propagation: `policy import` on node 1 -> node 3's maps hold it (node 3's policy
//      revision is bumped in the same synchronous step that writes its maps), p50/p99; peer: the
//      importing node's own time to enforce (same run, interleaved);
//   2. identity allocation rate: new label sets resolved concurrently by 3 nodes through etcd
//      transactions, against the single-node allocator on its journal store (same run);
//   3. agent memory and etcd traffic per 1,000 remote endpoints: N simulated endpoints of a
//      simulated node written to etcd; node 3's agent RSS and underlay bytes received, before/after;
//   4. resync: node 3's agent restarted with N remote entries in etcd: list + apply into its BPF
//      ipcache (ms), as the agent measures it; and the time from spawn to serving.
//   node --import tsx scripts/bench/cluster.ts [--remote 10000] [--rounds 30] [--labels 150]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startCluster, eventually, type TestCluster, type TestNode } from '../../integration/lib/cluster.ts';
import { webFromClient } from '../../integration/lib/cluster-maps.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { Session } from '../../shared/src/kvstore/session.ts';
import { connectEtcd } from '../../shared/src/kvstore/kv.ts';
import { encode, type IpcacheRecord, type NodeRecord } from '../../shared/src/kvstore/layout.ts';
import { ClusterIdentities } from '../../shared/src/cluster/identities.ts';
import { IdentityAllocator } from '../../shared/src/identity/allocator.ts';
import { JournalStore } from '../../shared/src/store/journal.ts';
import { markdownTable, numberArg, percentile, sleep } from './lib.ts';

const REMOTE = numberArg('remote', 10_000);
const ROUNDS = numberArg('rounds', 30);
const LABELS = numberArg('labels', 150);

const policyYaml = (port: number) => webFromClient('bench-propagation', port);

async function propagation(c: TestCluster): Promise<{ remote: number[]; local: number[] }> {
  const [n1, , n3] = c.nodes;
  await n3.pod({ app: 'web' });
  await n1.pod({ app: 'client' });
  const pc1 = new PolicyClient(n1.client),
    pc3 = new PolicyClient(n3.client);
  const remote: number[] = [],
    local: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = performance.now();
    const res = await pc1.import(policyYaml(1000 + i));
    local.push(res.enforcedMs);
    for (;;) {
      if ((await pc3.status()).revision >= res.revision) break;
      await sleep(1);
    }
    remote.push(performance.now() - t0);
    await sleep(50);
  }
  await pc1.delete('all');
  return { remote, local };
}

/** The floor: plain etcd transactions of the same shape (3 puts, one under a lease) at the same
 *  concurrency (3 clients x 16 in flight), no allocation logic. */
async function rawTxnRate(c: TestCluster, count: number): Promise<number> {
  const clients = await Promise.all([0, 1, 2].map(async () => connectEtcd({ endpoints: [c.etcd.localUrl] })));
  const lease = await clients[0].grantLease(60);
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    clients.flatMap((kv, n) =>
      Array.from({ length: 16 }, async () => {
        for (let i = next++; i < count; i = next++) {
          const k = `${c.L.base}bench/raw/${n}/${i}`;
          await kv.txn(
            [{ key: `${k}/a`, target: 'version', result: '=', value: 0 }],
            [
              { type: 'put', key: `${k}/a`, value: 'x' },
              { type: 'put', key: `${k}/b`, value: 'y' },
              { type: 'put', key: `${k}/c`, value: 'z', lease: lease.id },
            ],
          );
        }
      }),
    ),
  );
  const rate = count / ((performance.now() - t0) / 1000);
  await lease.revoke();
  await clients[0].delete(`${c.L.base}bench/raw/`, { prefix: true });
  for (const kv of clients) kv.close();
  return rate;
}

async function allocationRate(c: TestCluster): Promise<{ cluster: number; local: number; raw: number }> {
  // Cluster: three in-process "nodes" (own sessions, leases and allocators) against the real etcd.
  const nodes = await Promise.all(
    ['a1', 'a2', 'a3'].map(async (node) => {
      const kv = await connectEtcd({ endpoints: [c.etcd.localUrl] });
      const session = new Session({ kv, leaseTtlSeconds: 30 });
      await session.start(5_000);
      const backend = new ClusterIdentities({ session, layout: c.L, node });
      const alloc = await IdentityAllocator.open({ backend, randomIds: true });
      await backend.attach(alloc);
      return {
        alloc,
        close: async () => {
          await backend.stop();
          await session.close({ revoke: true });
          kv.close();
        },
      };
    }),
  );
  // Each node resolves LABELS label sets; half of them are shared by all nodes (they race for those).
  const sets = (n: number) =>
    Array.from({ length: LABELS }, (_, i) => (i % 2 ? { 'k8s:app': `shared-${i}` } : { 'k8s:app': `own-${n}-${i}` }));
  const run = async (resolve: (l: Record<string, string>) => Promise<number>, labels: Record<string, string>[]) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < labels.length) await resolve(labels[next++]);
      }),
    );
  };
  const t0 = performance.now();
  await Promise.all(nodes.map((n, i) => run((l) => n.alloc.resolve(l), sets(i))));
  const clusterDistinct = LABELS * 3 - (LABELS / 2) * 2; // own ones are distinct, shared ones count once
  const cluster = clusterDistinct / ((performance.now() - t0) / 1000);
  for (const n of nodes) await n.close();
  const raw = await rawTxnRate(c, clusterDistinct);
  // Peer: the single-node allocator on the journal store, same number of distinct label sets.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-alloc-'));
  try {
    const store = new JournalStore(dir);
    const alloc = await IdentityAllocator.open({ store });
    const labels = Array.from({ length: clusterDistinct }, (_, i) => ({ 'k8s:app': `local-${i}` }));
    const t1 = performance.now();
    await run((l) => alloc.resolve(l), labels);
    const local = clusterDistinct / ((performance.now() - t1) / 1000);
    store.close();
    return { cluster, local, raw };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}
/** Bytes the node's underlay interface received (netlink, so the node's own netns is read). */
async function rxBytes(node: TestNode): Promise<number> {
  const [link] = JSON.parse(await node.netns.exec('ip', ['-j', '-s', 'link', 'show', 'dev', 'eth0']));
  return Number(link.stats64.rx.bytes);
}
const remoteCount = async (n: TestNode) => (await n.client.status()).cluster?.remoteEndpoints ?? 0;

/** A simulated node with `count` endpoints (what an agent would publish), under one lease. */
async function simulateRemote(c: TestCluster, count: number): Promise<() => Promise<void>> {
  const lease = await c.kv.grantLease(120);
  const now = new Date().toISOString();
  const node: NodeRecord = {
    name: 'sim',
    cluster: c.name,
    addresses: [{ type: 'InternalIP', ip: '198.18.255.250' }],
    podCidrs: {},
    nodeId: 0,
    agentVersion: 'bench',
    registeredAt: now,
    updatedAt: now,
  };
  await c.kv.put(c.L.node('sim'), encode(node), { lease: lease.id });
  const ids = Array.from({ length: 50 }, (_, i) => 60_000 + i);
  for (let i = 0; i < count; i += 128) {
    const ops = [];
    for (let j = i; j < Math.min(count, i + 128); j++) {
      const ip = `10.250.${j >> 8}.${j & 255}`;
      ops.push({
        type: 'put' as const,
        key: c.L.ipcacheEntry(ip),
        value: encode({
          identity: ids[j % ids.length],
          node: 'sim',
          nodeIp: '198.18.255.250',
          endpoint: `sim-${j}/eth0`,
        } satisfies IpcacheRecord),
        lease: lease.id,
      });
    }
    await c.kv.txn([], ops);
  }
  return () => lease.revoke();
}

async function main(): Promise<void> {
  const load0 = os.loadavg();
  const c = await startCluster({ nodes: 3, leaseTtl: 10 });
  try {
    const prop = await propagation(c);
    const alloc = await allocationRate(c);

    const n3 = c.nodes[2];
    await sleep(2_000);
    const rss0 = rssKiB(n3.agent.pid()!),
      rx0 = await rxBytes(n3);
    const t0 = performance.now();
    const dropSim = await simulateRemote(c, REMOTE);
    await eventually('remote endpoints synced on n3', async () => (await remoteCount(n3)) >= REMOTE, 120_000, 20);
    const syncMs = performance.now() - t0;
    await sleep(3_000);
    const rss1 = rssKiB(n3.agent.pid()!),
      rx1 = await rxBytes(n3);

    await n3.agent.stop();
    const t1 = performance.now();
    await n3.agent.start();
    await eventually('restarted n3 resynced', async () => (await remoteCount(n3)) >= REMOTE, 120_000, 20);
    const restartMs = performance.now() - t1;
    const resync = (await n3.client.status()).cluster?.ipcacheResync;
    await dropSim();

    const load1 = os.loadavg();
    const rows = [
      [
        'policy propagation node 1 -> node 3 maps, p50 / p99',
        `${percentile(prop.remote, 0.5).toFixed(1)} / ${percentile(prop.remote, 0.99).toFixed(1)} ms`,
        `node 1's own enforce ${percentile(prop.local, 0.5).toFixed(1)} / ${percentile(prop.local, 0.99).toFixed(1)} ms`,
        '< 100 ms p99 (Cilium: < 600 ms)',
      ],
      [
        'identity allocations/s, 3 nodes racing (half the label sets shared)',
        alloc.cluster.toFixed(0),
        `etcd txns of the same shape and concurrency: ${alloc.raw.toFixed(0)}/s (ratio ${(alloc.cluster / alloc.raw).toFixed(2)}); single node, journal store: ${alloc.local.toFixed(0)}/s`,
        '-',
      ],
      [
        `agent RSS per remote endpoint (${REMOTE} simulated)`,
        `${((rss1 - rss0) / REMOTE).toFixed(2)} KiB`,
        `RSS ${Math.round(rss0 / 1024)} -> ${Math.round(rss1 / 1024)} MiB`,
        '<= 5 KiB (Cilium: ~10.5 KiB per pod)',
      ],
      [
        'etcd traffic to a node per 1,000 remote endpoints',
        `${((rx1 - rx0) / 1024 / (REMOTE / 1000)).toFixed(0)} KiB`,
        `${REMOTE} entries in ${syncMs.toFixed(0)} ms (write + watch + maps)`,
        '-',
      ],
      [
        `restarted agent: resync of ${resync?.entries ?? '?'} ipcache entries (list + BPF ipcache)`,
        `${resync?.ms.toFixed(0) ?? '?'} ms`,
        `spawn to serving with them: ${restartMs.toFixed(0)} ms`,
        '< 1 s',
      ],
    ];
    console.log(
      `cluster benchmark: 3 nodes, ${ROUNDS} propagation rounds, load before ${load0.map((x) => x.toFixed(2)).join(' ')}, after ${load1.map((x) => x.toFixed(2)).join(' ')}`,
    );
    console.log(markdownTable(['measure', 'Membrane', 'peer / context', 'goal'], rows));
  } finally {
    await c.cleanup();
  }
}

await main();
