// An endpoint's ADD whose identity the node already has (a replica) is applied from the last desired
// state (desiredWithEndpoint) instead of a build over every endpoint: the maps must end up exactly as
// a full sync over the same endpoints leaves them, and the ADD must not touch another endpoint.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { AUDIT_METADATA_KEY } from '../src/policy/engine.ts';
import { EP_FLAGS } from '../src/policy/map-codec.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';
import type { Endpoint } from '../src/types.ts';
import { APPS, fullSyncOf, openEngine, REPLICA_POLICIES, snapshot } from './lib/policy-replicas.ts';

t.test('replicas added one at a time leave the maps a full sync leaves', async (t) => {
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const store = new MemoryStore();
  const engine = await openEngine(ops, store);
  await engine.start();
  await engine.importText(REPLICA_POLICIES);
  const eps: Endpoint[] = [];
  for (let i = 1; i <= 40; i++) {
    const labels = { app: APPS[i % APPS.length] };
    const ep = testEndpoint(i, labels, await engine.identityFor(labels), `10.0.${i >> 8}.${i & 255}`);
    if (i % 7 === 0) ep.metadata = { [AUDIT_METADATA_KEY]: 'true' };
    ops.flags.set(ep.hostIfIndex, 0);
    const before = snapshot(ops);
    await engine.endpointAttached(ep);
    eps.push(ep);
    // Nothing of another endpoint changed: its entries, flags and addresses are as they were.
    for (const [k, v] of before.policy) t.same(ops.policy.get(k), v, `ADD ${i} kept entry ${k}`);
    for (const [ifindex, f] of before.flags) if (ifindex !== ep.hostIfIndex) t.equal(ops.flags.get(ifindex), f);
    if (i === 20) {
      // A DEL in between (its config goes first, as in the endpoint manager): the next ADDs derive
      // from the state after it.
      ops.flags.delete(eps[2].hostIfIndex);
      await engine.endpointDeleted(eps[2]);
      eps.splice(2, 1);
    }
  }
  const web = eps.find((e) => e.labels.app === 'web' && !e.metadata?.[AUDIT_METADATA_KEY])!;
  const client = eps.find((e) => e.labels.app === 'client')!;
  t.ok((ops.flags.get(web.hostIfIndex) ?? 0) & EP_FLAGS.ingressDefaultDeny, 'a web replica is default-deny');
  t.ok(
    ops.entriesOf(web.id).some((e) => e.direction === 'ingress' && e.peer === client.identity && e.dport === 80),
    'a web replica admits clients on 80',
  );
  t.equal(ops.ipcache.get(`${client.ips[0].address}`), client.identity, 'a replica address has its identity');

  // The same endpoints and policies from scratch: one full sync over fresh maps.
  const fresh = await fullSyncOf(eps, store);
  t.same(snapshot(ops).policy, fresh.policy, 'policy entries');
  t.same(snapshot(ops).ipcache, fresh.ipcache, 'ipcache');
  t.same(snapshot(ops).flags, fresh.flags, 'endpoint flags');
});
