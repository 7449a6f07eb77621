// membrane-operator against a real etcd: two instances, one leads; SIGKILL the leader and the other
// takes over within 15 s and does the work; pod CIDRs never overlap across 20 node joins and leaves
// (and are released when a node leaves); identities nobody references are collected after the grace
// period, referenced ones never. Nodes here are node records under leases of our own (what an agent
// writes), so the operator is exercised without twenty agents.
import t from 'tap';
import { startCluster, eventually, type TestCluster } from './lib/cluster.ts';
import { encode, decode, type NodeRecord, type PodCidrAllocation } from '../shared/src/kvstore/layout.ts';
import type { Lease } from '../shared/src/kvstore/kv.ts';
import { parseCidr, cidrsOverlap } from '../shared/src/net/index.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

let c: TestCluster;
t.before(async () => {
  c = await startCluster({
    nodes: 0,
    operators: 2,
    nodeMaskSize: 26,
    clusterPoolIpv6: 'fd00:c1::/104',
    operatorArgs: ['--identity-gc-interval', '500ms', '--identity-gc-grace', '2s', '--node-cidr-mask-size-ipv6', '112'],
  });
});
t.teardown(() => c?.cleanup());

async function leader(): Promise<string | undefined> {
  const { items } = await c.kv.list(c.L.operatorLeader);
  return items.length ? items.reduce((a, b) => (b.createRevision < a.createRevision ? b : a)).value : undefined;
}

/** A node as an agent registers it: its record under its own lease. */
async function join(name: string, requested?: string): Promise<Lease> {
  const lease = await c.kv.grantLease(30);
  const now = new Date().toISOString();
  const rec: NodeRecord = {
    name,
    cluster: c.name,
    addresses: [{ type: 'InternalIP', ip: '198.18.0.1' }],
    podCidrs: {},
    nodeId: 0,
    agentVersion: 'test',
    registeredAt: now,
    updatedAt: now,
    ...(requested ? { requestedPodCidrs: { ipv4: requested } } : {}),
  };
  await c.kv.put(c.L.node(name), encode(rec), { lease: lease.id });
  return lease;
}

async function allocation(name: string): Promise<PodCidrAllocation | undefined> {
  const it = await c.kv.get(c.L.podCidrNode(name));
  return it && decode<PodCidrAllocation>(it.value);
}

t.test('two operators: one leads; SIGKILL the leader and the other takes over within 15 s', async (t) => {
  await eventually('a leader', async () => (await leader()) !== undefined);
  const first = (await leader())!;
  t.ok(['op1', 'op2'].includes(first), `leader: ${first}`);
  const lease = await join('before');
  await eventually('first leader allocates', async () => !!(await allocation('before')));
  const victim = c.operators[first === 'op1' ? 0 : 1];
  const t0 = Date.now();
  await victim.kill9();
  await eventually('another leader', async () => (await leader()) !== first && (await leader()) !== undefined, 20_000, 100);
  const takeover = Date.now() - t0;
  t.ok(takeover < 15_000, `takeover in ${takeover} ms (leader lease TTL 3 s)`);
  const lease2 = await join('after');
  await eventually('the new leader allocates', async () => !!(await allocation('after')), 10_000);
  t.ok(
    await allocation('after'),
    `the new leader (${await leader()}) serves: node "after" got ${(await allocation('after'))?.ipv4}`,
  );
  await lease.revoke();
  await lease2.revoke();
  await victim.start();
});

t.test('pod CIDRs never overlap across 20 node joins and leaves, and are released when a node leaves', async (t) => {
  const live = new Map<string, Lease>();
  let joins = 0,
    overlaps = 0,
    checks = 0;
  const checkNoOverlap = async () => {
    const { items } = await c.kv.list(c.L.podCidrNodes);
    const allocs = items.map((i) => decode<PodCidrAllocation>(i.value)!);
    if (allocs.some((a) => !a.ipv4 || !a.ipv6)) overlaps++; // dual-stack pools: every node gets both
    const cidrs = allocs.flatMap((a) => [a.ipv4!, a.ipv6!]).filter(Boolean);
    for (let i = 0; i < cidrs.length; i++)
      for (let j = i + 1; j < cidrs.length; j++) if (cidrsOverlap(parseCidr(cidrs[i]), parseCidr(cidrs[j]))) overlaps++;
    checks++;
  };
  // Batches of concurrent joins, then some leaves, until 20 joins happened.
  for (let round = 0; joins < 20; round++) {
    const names = Array.from({ length: Math.min(4, 20 - joins) }, (_, i) => `j${round}-${i}`);
    joins += names.length;
    await Promise.all(
      names.map(async (n) => {
        live.set(n, await join(n));
      }),
    );
    await eventually(`round ${round} allocated`, async () => (await Promise.all(names.map(allocation))).every(Boolean), 15_000);
    await checkNoOverlap();
    const leaving = [...live.keys()].slice(0, 2);
    for (const n of leaving) {
      await live.get(n)!.revoke();
      live.delete(n);
    }
    await eventually(
      `round ${round} released`,
      async () => (await Promise.all(leaving.map(allocation))).every((a) => !a),
      15_000,
    );
    await checkNoOverlap();
  }
  t.equal(joins, 20, '20 joins');
  t.equal(overlaps, 0, `no two live nodes ever shared addresses, IPv4 or IPv6, and each got both (${checks} checks)`);
  const blocks = await c.kv.list(c.L.podCidrBlocks);
  t.equal(
    blocks.items.length,
    2 * (await c.kv.list(c.L.podCidrNodes)).items.length,
    'one IPv4 and one IPv6 block key per allocation: released blocks are gone',
  );
  // A node that comes back asks for its old block and gets it when it is free.
  const [name, lease] = [...live][0];
  const old = (await allocation(name))!.ipv4!;
  await lease.revoke();
  live.delete(name);
  await eventually('released', async () => !(await allocation(name)));
  live.set(name, await join(name, old));
  await eventually('re-allocated', async () => !!(await allocation(name)));
  t.equal((await allocation(name))!.ipv4, old, `a returning node gets its old pod CIDR back (${old})`);
  for (const l of live.values()) await l.revoke();
});

t.test('identities nobody references are collected after the grace period; referenced ones stay', async (t) => {
  const L = c.L;
  const lease = await c.kv.grantLease(30);
  // A referenced identity gets its reference before its record, so the operator never sees it
  // unreferenced before the test says so. t0 is taken before the first identity the operator may see
  // unreferenced is written: its grace starts after t0 however long the writes take (a loaded etcd
  // took longer than the grace's margin for the writes after the orphan when it was written first).
  const put = async (id: number, app: string, ref: boolean) => {
    const labels = { 'k8s:app': app };
    if (ref) await c.kv.put(L.identityRef(id, 'alive'), encode({ since: 'now' }), { lease: lease.id });
    await c.kv.put(L.identityId(id), encode({ id, labels, createdAt: new Date().toISOString(), createdBy: 'gone' }));
    await c.kv.put(L.identityLabels(labels), String(id));
  };
  await put(40002, 'used', true);
  await put(40003, 'was-used', true);
  const t0 = Date.now();
  await put(40001, 'orphan', false);
  await c.kv.delete(L.identityRef(40003, 'alive'));
  await eventually(
    'orphans collected',
    async () => !(await c.kv.get(L.identityId(40001))) && !(await c.kv.get(L.identityId(40003))),
    20_000,
    200,
  );
  t.ok(Date.now() - t0 >= 1_500, `not before the grace period (${Date.now() - t0} ms, grace 2 s)`);
  t.equal(await c.kv.get(L.identityLabels({ 'k8s:app': 'orphan' })), undefined, 'its labels key went with it');
  t.ok(await c.kv.get(L.identityId(40002)), 'the referenced identity stays');
  await lease.revoke();
  await eventually('collected once its last reference expired', async () => !(await c.kv.get(L.identityId(40002))), 20_000, 200);
  t.equal(await c.kv.get(L.identityId(40002)), undefined, 'collected once the node holding it went');
});
