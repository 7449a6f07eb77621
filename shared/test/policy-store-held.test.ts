// A stored policy the agent cannot read must not open what it closed (fail closed): the engine
// restarted over the same maps does not rebuild them from the other policies (the pinned state,
// which had it, stays), an endpoint that comes meanwhile gets default deny, other policy changes are
// refused with an error naming the key and what to do, and re-importing or deleting the damaged
// policy lifts the hold and syncs the maps from the whole set.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine, PolicyError } from '../src/policy/engine.ts';
import { EP_FLAGS } from '../src/policy/map-codec.ts';
import { policyRecordKey } from '../src/policy/store-backend.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';
import { attachmentId } from '../src/endpoint/naming.ts';

const policy = (name: string, app: string) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name },
    spec: {
      endpointSelector: { matchLabels: { app } },
      ingress: [{ fromCIDR: ['198.18.0.0/24'], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }],
    },
  });
const DENY_ALL = EP_FLAGS.ingressLookup | EP_FLAGS.egressLookup | EP_FLAGS.ingressDefaultDeny | EP_FLAGS.egressDefaultDeny;
const log = { info: () => undefined, warn: () => undefined };

async function damaged(t: { teardown(fn: () => unknown): void; ok(v: unknown, msg: string): void }) {
  const store = new MemoryStore();
  const ops = new MemoryPolicyOps();
  const first = await PolicyEngine.open({ store, ops, hostAddresses: () => [], log });
  const web = testEndpoint(1, { app: 'web' }, await first.identityFor({ app: 'web' }), '10.0.0.2');
  ops.flags.set(web.hostIfIndex, 0);
  await first.endpointAttached(web);
  await first.start();
  await first.importText(policy('only-web', 'web')); // the only policy selecting web
  await first.importText(policy('for-db', 'db'));
  await first.close();
  const enforced = { flags: ops.flags.get(web.hostIfIndex)!, policy: new Map(ops.policy), ipcache: new Map(ops.ipcache) };
  t.ok(enforced.flags & EP_FLAGS.ingressDefaultDeny, 'web is closed to all but its policy');
  // What a damaged write leaves: a record under the key that is no policy record.
  await store.put(policyRecordKey('only-web'), { name: 'only-web', policy: 'x' });
  const engine = await PolicyEngine.open({ store, ops, hostAddresses: () => [], log });
  t.teardown(() => engine.close());
  await engine.endpointAttached(web); // restored, then the start's full sync
  await engine.start();
  return { engine, ops, web, enforced };
}

t.test(
  'restarted with an unreadable stored policy: the maps stay as last enforced, new endpoints get default deny',
  async (t) => {
    const { engine, ops, web, enforced } = await damaged(t);
    t.same(engine.damagedPolicyNames(), ['only-web']);
    t.equal(ops.flags.get(web.hostIfIndex), enforced.flags, "web keeps its flags (not opened by the others' set)");
    t.same(ops.policy, enforced.policy, 'the policy entries are as last enforced');
    const web2 = testEndpoint(2, { app: 'web' }, await engine.identityFor({ app: 'web' }), '10.0.0.3');
    ops.flags.set(web2.hostIfIndex, 0);
    await engine.endpointAttached(web2);
    t.equal(ops.flags.get(web2.hostIfIndex), DENY_ALL, 'a new endpoint: default deny both ways');
    t.equal(ops.ipcache.get('10.0.0.3/32'), web2.identity, 'and its address its identity');
    const other = testEndpoint(3, { app: 'web' }, await engine.identityFor({ app: 'web' }), '10.0.0.4');
    ops.flags.set(other.hostIfIndex, 0);
    await engine.endpointAttached(other);
    await engine.endpointLabelsChanged({ ...other, labels: { app: 'x' }, identity: await engine.identityFor({ app: 'x' }) });
    t.equal(ops.flags.get(other.hostIfIndex), DENY_ALL, 'a relabeled endpoint: default deny both ways');
  },
);

t.test('other changes are refused naming the key; re-importing the policy lifts the hold', async (t) => {
  const { engine, ops, web } = await damaged(t);
  const refused = async (p: Promise<unknown>, what: string) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof PolicyError && err.code === 'policy_store_damaged', `${what}: refused`);
    t.match(
      String((err as Error)?.message),
      /policy\/records\/only-web.*import "only-web" again.*or delete it/,
      'naming the key and what to do',
    );
  };
  await refused(engine.importText(policy('new', 'api')), 'another import');
  await refused(engine.importText(`${policy('only-web', 'web')}\n---\n${policy('new', 'api')}`), 'an import with another policy');
  await refused(engine.delete(['for-db']), 'deleting another policy');
  await refused(engine.delete('all'), 'deleting all');
  await refused(engine.setAudit(attachmentId(web), web.ifName, true), 'audit mode');
  t.same(
    engine.list().map((p) => p.name),
    ['for-db'],
    'nothing changed',
  );
  await engine.importText(policy('only-web', 'web'));
  t.same(engine.damagedPolicyNames(), [], 'the hold is lifted');
  t.ok(ops.flags.get(web.hostIfIndex)! & EP_FLAGS.ingressDefaultDeny, 'web enforced by the re-imported policy');
  await engine.importText(policy('new', 'api'));
  t.ok(engine.get('new'), 'and other changes are taken again');
});

t.test('deleting the damaged policy lifts the hold and syncs the set without it', async (t) => {
  const { engine, ops, web } = await damaged(t);
  const r = await engine.delete(['only-web']);
  t.same(
    r.changes.map((c) => [c.name, c.change]),
    [['only-web', 'deleted']],
  );
  t.same(engine.damagedPolicyNames(), []);
  t.equal(ops.flags.get(web.hostIfIndex), 0, 'web is no longer selected: the maps follow the set');
});
