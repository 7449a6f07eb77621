// holdEgress (cluster mode, native routing: a relabeled pod until the store has its new identity):
// egress default deny with no allow entries and no audit, ingress as before, through later syncs; once
// released, its egress entries are built whole again. The real-packet test is
// integration/cluster-native-relabel.test.ts.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { EP_FLAGS } from '../src/policy/map-codec.ts';
import { AUDIT_METADATA_KEY } from '../src/policy/engine-types.ts';
import { MemoryPolicyOps, testEndpoint, WEB_FROM_CLIENT } from './lib/policy.ts';

const WEB_POLICY = `${WEB_FROM_CLIENT}  egress:
  - toCIDR: [198.18.0.0/24]
`;

t.test('an endpoint whose egress is held', async (t) => {
  const ops = new MemoryPolicyOps();
  const engine = await PolicyEngine.open({ store: new MemoryStore(), ops, hostAddresses: () => ['192.0.2.1'] });
  await engine.start();
  const add = async (id: number, labels: Record<string, string>, ip: string, metadata?: Record<string, string>) => {
    const ep = { ...testEndpoint(id, labels, await engine.identityFor(labels), ip), ...(metadata ? { metadata } : {}) };
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
    return ep;
  };
  const web = await add(1, { app: 'web' }, '10.0.0.2', { [AUDIT_METADATA_KEY]: 'true' });
  await add(2, { app: 'client' }, '10.0.0.3');
  await engine.importText(WEB_POLICY);
  const egress = () => ops.entriesOf(web.id).filter((e) => e.direction === 'egress');
  const ingress = () => ops.entriesOf(web.id).filter((e) => e.direction === 'ingress');
  const before = { flags: ops.flags.get(web.hostIfIndex)!, egress: egress().length, ingress: ingress().length };
  t.ok(before.egress > 0 && before.ingress > 0, `entries both ways (${before.ingress} in, ${before.egress} out)`);

  await engine.holdEgress(web, true);
  const f = ops.flags.get(web.hostIfIndex)!;
  t.ok(f & EP_FLAGS.egressLookup && f & EP_FLAGS.egressDefaultDeny, 'egress default deny');
  t.equal(f & EP_FLAGS.audit, 0, 'no audit while held');
  t.equal(egress().length, 0, 'no egress entries');
  t.equal(ingress().length, before.ingress, 'ingress entries as before');

  await add(3, { app: 'other' }, '10.0.0.4'); // a sync for another endpoint keeps the hold
  await engine.importText(WEB_POLICY.replace('198.18.0.0/24', '198.18.1.0/24')); // and a policy change
  t.equal(egress().length, 0, 'still no egress entries after other changes');
  t.ok(ops.flags.get(web.hostIfIndex)! & EP_FLAGS.egressDefaultDeny, 'still egress default deny');

  await engine.holdEgress(web, false);
  t.ok(egress().length > 0, `released: egress entries back (${egress().length})`);
  t.ok(before.flags & EP_FLAGS.audit, 'web is in audit mode (its metadata)');
  t.equal(ops.flags.get(web.hostIfIndex), before.flags, 'flags as before, audit included');
  await engine.importText(WEB_POLICY);
  t.equal(egress().length, before.egress, 'and follow later changes as before');
});
