// An endpoint's DEL whose identity stays on the node (another replica has it) is applied from the last
// desired state (desiredWithoutEndpoint) instead of a full sync over every endpoint: only its own
// entries, flags and addresses go, and after any number of DELs the maps are exactly what a full sync
// over the remaining endpoints leaves. The last endpoint of an identity takes the full sync.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { AUDIT_METADATA_KEY, type PolicyEngine } from '../src/policy/engine.ts';
import { RESERVED } from '../src/identity/reserved.ts';
import { decodePolicyKey } from '../src/policy/map-codec.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';
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

/** One endpoint's entries of a policy map snapshot. */
function entriesOf(policy: Map<string, unknown>, id: number): [string, unknown][] {
  return [...policy]
    .filter(([k]) => decodePolicyKey(Buffer.from(k, 'hex')).endpointId === id)
    .sort(([a], [b]) => a.localeCompare(b));
}
