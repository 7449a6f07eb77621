// An endpoint's DEL whose identity stays on the node (another replica has it) is applied from the last
// desired state (desiredWithoutEndpoint) instead of a full sync over every endpoint: only its own
// entries, flags and addresses go, and after any number of DELs the maps are exactly what a full sync
// over the remaining endpoints leaves. The last endpoint of an identity takes the full sync.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { AUDIT_METADATA_KEY, PolicyEngine } from '../src/policy/engine.ts';
import { identityKind, RESERVED } from '../src/identity/reserved.ts';
import { FqdnState } from '../src/fqdn/state.ts';
import { decodePolicyKey } from '../src/policy/map-codec.ts';
import { MemoryPolicyOps, NO_CHANGES, testEndpoint } from './lib/policy.ts';
import type { Endpoint } from '../src/types.ts';
import { APPS, byPrefix, fullSyncOf, HOST, openEngine, REPLICA_POLICIES, snapshot } from './lib/policy-replicas.ts';

/** Counts the engine's full syncs (the shortcut is what a DEL should take). */
function countFullSyncs(engine: PolicyEngine): () => number {
  const e = engine as unknown as { sync: (...a: unknown[]) => unknown };
  const full = e.sync.bind(engine);
  let n = 0;
  e.sync = (...a: unknown[]) => {
    n++;
    return full(...a);
  };
  return () => n;
}

t.test('DELs one at a time leave the maps a full sync leaves, and touch no other endpoint', async (t) => {
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const store = new MemoryStore();
  const engine = await openEngine(ops, store);
  await engine.start();
  await engine.importText(REPLICA_POLICIES);
  const eps: Endpoint[] = [];
  const add = async (i: number, labels: Record<string, string>, ip: string) => {
    const ep = testEndpoint(i, labels, await engine.identityFor(labels), ip);
    if (i % 7 === 0) ep.metadata = { [AUDIT_METADATA_KEY]: 'true' };
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
    eps.push(ep);
    return ep;
  };
  for (let i = 1; i <= 40; i++) await add(i, { app: APPS[i % APPS.length] }, `10.0.${i >> 8}.${i & 255}`);
  // Addresses whose ipcache entry has another source under the endpoint's: the host's own address
  // and a /32 a policy names (a DEL must leave what a full sync would, not a hole). The named one has
  // no CIDR identity while the pod holds it (desired.ts hiddenAddresses): its DEL gives it one back,
  // which moves every rule that can select it, so it takes the full sync.
  await add(41, { app: 'web' }, HOST);
  await add(42, { app: 'client' }, '198.18.1.7');
  await add(43, { app: 'solo' }, '10.0.1.1');
  const fullSyncs = countFullSyncs(engine);

  // Replicas of every identity but the last ones of 'other' and 'solo' (those change the universe).
  const order = [41, 42, 5, 6, 7, 14, 21, 2, 3, 10, 11, 12, 13, 28, 35, 4, 8, 43, 16, 20, 24];
  let shortcuts = 0;
  for (const id of order) {
    const ep = eps.find((e) => e.id === id)!;
    const rest = eps.filter((e) => e !== ep);
    const named = ep.id === 42;
    const identityStays = rest.some((e) => e.identity === ep.identity) && !named;
    const before = snapshot(ops);
    const syncsBefore = fullSyncs();
    ops.flags.delete(ep.hostIfIndex); // its config goes first, as in the endpoint manager
    await engine.endpointDeleted(ep);
    eps.splice(eps.indexOf(ep), 1);
    t.same(ops.entriesOf(ep.id), [], `DEL ${id}: its policy entries are gone`);
    if (identityStays) {
      shortcuts++;
      t.equal(fullSyncs(), syncsBefore, `DEL ${id}: no full sync (its identity ${ep.identity} stays)`);
      for (const other of rest) {
        t.same(entriesOf(ops.policy, other.id), entriesOf(before.policy, other.id), `DEL ${id} kept ${other.id}'s entries`);
        t.equal(ops.flags.get(other.hostIfIndex), before.flags.get(other.hostIfIndex), `DEL ${id} kept ${other.id}'s flags`);
      }
    } else
      t.equal(
        fullSyncs(),
        syncsBefore + 1,
        named
          ? `DEL ${id}: a named address freed takes a full sync`
          : `DEL ${id}: the last of identity ${ep.identity} takes a full sync`,
      );
    const full = byPrefix(await fullSyncOf(eps, store));
    const now = byPrefix(snapshot(ops));
    t.same(now.ipcache, full.ipcache, `DEL ${id}: the ipcache a full sync leaves`);
    t.same(now.policy, full.policy, `DEL ${id}: the policy entries a full sync leaves`);
    t.same(now.flags, full.flags, `DEL ${id}: the flags a full sync leaves`);
  }
  t.ok(shortcuts >= 15, `${shortcuts} DELs took the shortcut`);
  t.equal(ops.ipcache.get(`${HOST}/32`), RESERVED.host, "the host's address is the host's again");
  t.ok(
    ops.ipcache.has('198.18.1.7/32') && ops.ipcache.get('198.18.1.7/32') !== RESERVED.world,
    'the policy /32 is its CIDR identity again',
  );
  t.notOk(ops.ipcache.has('10.0.0.5/32'), "a deleted endpoint's address is gone");

  // And a new replica after all those DELs still derives from the state they left.
  await add(44, { app: 'db' }, '10.0.0.5');
  t.same(
    byPrefix(snapshot(ops)),
    byPrefix(await fullSyncOf(eps, store)),
    'after a re-ADD of a freed address: what a full sync leaves',
  );
});

t.test('a pod whose address a policy names and DNS taught: its DEL takes no full sync', async (t) => {
  // The address stays hidden (DNS taught it, the policy names it: hidden-addresses.ts), so it gets no
  // CIDR identity back and no rule moves: the ipcache falls back to its FQDN identity.
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const fqdn = new FqdnState(0);
  const engine = await PolicyEngine.open({ store: new MemoryStore(), ops, hostAddresses: () => [HOST], fqdn });
  t.teardown(() => engine.close());
  const web = { app: 'web' };
  const eps = [
    testEndpoint(1, web, await engine.identityFor(web), '10.0.0.2'),
    testEndpoint(2, web, await engine.identityFor(web), '198.18.0.2'),
    testEndpoint(3, { app: 'db' }, await engine.identityFor({ app: 'db' }), '10.0.0.3'),
  ];
  for (const ep of eps) {
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  await engine.start();
  await engine.importText(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-out}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress:
  - toCIDR: [198.18.0.2/32, 10.9.0.0/16]
  - toFQDNs: [{matchName: web.example.com}]
`);
  const r = fqdn.learn(eps[2]!.id, ['web.example.com.'], [{ ip: '198.18.0.2', ttl: 3600 }], 0);
  await engine.fqdnChanged(r.changed, r.newIdentity);
  const addr = '198.18.0.2/32';
  t.equal(ops.ipcache.get(addr), eps[1]!.identity, 'the pod holds its address in the ipcache');
  const fullSyncs = countFullSyncs(engine);
  ops.flags.delete(eps[1]!.hostIfIndex);
  await engine.endpointDeleted(eps[1]!);
  t.equal(fullSyncs(), 0, 'the DEL took the shortcut');
  t.equal(identityKind(ops.ipcache.get(addr) ?? 0), 'fqdn', 'the address falls back to its FQDN identity');
  t.same(ops.entriesOf(eps[1]!.id), [], 'its policy entries are gone');
  const sync = (engine as unknown as { sync: () => typeof NO_CHANGES }).sync.bind(engine);
  t.same(sync(), NO_CHANGES, 'a full sync now changes nothing');
});

/** One endpoint's entries of a policy map snapshot. */
function entriesOf(policy: Map<string, unknown>, id: number): [string, unknown][] {
  return [...policy]
    .filter(([k]) => decodePolicyKey(Buffer.from(k, 'hex')).endpointId === id)
    .sort(([a], [b]) => a.localeCompare(b));
}
