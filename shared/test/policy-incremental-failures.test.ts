// Incremental sync with failures and relabels in between: the compile, the entries and the ipcache
// are edited in place from one change to the next, so a change that fails half-way (a map write
// refused, an import too big for the maps) or an endpoint that moves to another label set while that
// set is patched must not leave a later change diffing against content the maps do not hold. After a
// random sequence of such steps a restarted engine (a full recompute against the same maps) finds
// nothing to change, in the policy map and in the ipcache.
import t from 'tap';
import { buildDesired, type CompileCache, type DesiredInput } from '../src/policy/desired.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import type { PolicyRecord } from '../src/policy/types.ts';
import {
  engineWithEndpoints,
  entriesByPrefix,
  MemoryPolicyOps,
  NO_CHANGES,
  records,
  restartChanges,
  webDbClient,
} from './lib/policy.ts';
import { seeded } from './lib/seeded.ts';

/** Maps whose next ipcache write can be refused too. */
class FailingOps extends MemoryPolicyOps {
  failNextIpcacheWrite = false;
  override writeIpcache(upsert: [string, number][], remove: string[]) {
    if (this.failNextIpcacheWrite) {
      this.failNextIpcacheWrite = false;
      throw new Error('ENOMEM');
    }
    super.writeIpcache(upsert, remove);
  }
}

const apps = ['web', 'db', 'client'];
const policy = (name: string, subject: string, from: string, cidrs: string[]) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: ${subject}}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: ${from}}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
${cidrs.map((c) => `  - {fromCIDR: [${c}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}`).join('\n')}
`;

t.test('failed changes and relabels between incremental changes: a full recompute finds nothing to change', async (t) => {
  const ops = new FailingOps(100_000, 100_000);
  const { engine, eps, store } = await engineWithEndpoints(ops, ['web', 'db', 'client', 'web']);
  const rnd = seeded(31);
  const cidrs = () => Array.from({ length: 1 + rnd(40) }, () => `198.18.${rnd(3)}.${rnd(20)}/32`);
  let failed = 0,
    relabels = 0,
    refused = 0;
  for (let i = 0; i < 80; i++) {
    const step = rnd(10);
    if (step === 0) {
      // An endpoint moves to another label set; the next change patches both sets.
      const k = rnd(eps.length);
      const labels = { app: apps[rnd(apps.length)] };
      eps[k] = { ...eps[k], labels, identity: await engine.identityFor(labels) };
      await engine.endpointLabelsChanged(eps[k]);
      relabels++;
      continue;
    }
    if (step === 1) ops.failNextPolicyWrite = true;
    if (step === 2) ops.failNextIpcacheWrite = true;
    if (step === 3) ops.policyCapacity = 1; // too big: refused before any write
    const r = await engine
      .importText(policy(`p${rnd(4)}`, apps[rnd(3)], apps[rnd(3)], cidrs()))
      .then(() => 'ok')
      .catch(() => 'failed');
    if (step === 3 && r === 'failed') refused++;
    else if (r === 'failed') failed++;
    ops.failNextPolicyWrite = false;
    ops.failNextIpcacheWrite = false;
    ops.policyCapacity = 100_000;
  }
  t.ok(
    failed > 3 && relabels > 3 && refused > 3,
    `failures (${failed}), refusals (${refused}) and relabels (${relabels}) happened`,
  );
  // One more successful change after the last failure, as an operator's retry would be.
  await engine.importText(policy('p0', 'web', 'client', cidrs()));
  const policyBefore = new Map(ops.policy),
    ipcacheBefore = new Map(ops.ipcache);
  t.same(await restartChanges(store, ops, eps), NO_CHANGES, 'the increments added up to what a full recompute wants');
  t.same(ops.policy, policyBefore, 'policy map unchanged');
  t.same(ops.ipcache, ipcacheBefore, 'ipcache unchanged');
});

t.test('an import whose ipcache write failed, retried: its prefixes reach the ipcache', async (t) => {
  const ops = new FailingOps(100_000, 100_000);
  const {
    engine,
    eps: [ep],
  } = await engineWithEndpoints(ops, ['web']);
  await engine.importText(policy('a', 'web', 'db', ['198.18.0.1/32']));
  const doc = policy('a', 'web', 'db', ['198.18.0.1/32', '198.18.0.2/32']);
  ops.failNextIpcacheWrite = true;
  await t.rejects(engine.importText(doc), /ENOMEM/, 'the first try fails');
  t.notOk(ops.ipcache.has('198.18.0.2/32'), 'nothing of it stayed');
  await engine.importText(doc);
  t.ok(ops.ipcache.has('198.18.0.2/32'), 'the retry wrote the new prefix');
  t.ok(
    ops.entriesOf(ep.id).some((e) => e.peer === ops.ipcache.get('198.18.0.2/32')),
    'with a policy entry for its identity',
  );
});

t.test('an endpoint whose label set changes while its old set is patched gets the new set entries', async (t) => {
  const { labels: known, endpoints } = webDbClient();
  const labels = known as Map<number, Record<string, string>>;
  labels.set(1004, { app: 'web', tier: 'x' });
  const cidrs = new CidrIdentities();
  const cache: { current?: CompileCache } = {};
  const input = (recs: PolicyRecord[], eps: typeof endpoints): DesiredInput => ({
    records: recs,
    endpoints: eps,
    labelsOf: (id) => labels.get(id),
    hostAddresses: [],
    cidrs,
  });
  const web = (cidr: string) => records(policy('w', 'web', 'client', [cidr]))[0];
  // A second web endpoint keeps the {app: web} label set compiled, so the next build patches it; a
  // third has the other identity already (the same identities: the next compiler is derived).
  const eps = [
    ...endpoints,
    { ...endpoints[0], key: 'e9', id: 9, hostIfIndex: 109, ips: ['10.0.0.9'] },
    { ...endpoints[0], key: 'e8', id: 8, hostIfIndex: 108, ips: ['10.0.0.8'], identity: 1004 },
  ];
  buildDesired(input([web('198.18.0.1/32')], eps), cache);
  // Web (e0) takes an identity with other labels in the same build that changes its old set's policy.
  // It comes last, after e9 has had the old set patched (its tables taken over).
  const moved = [...eps.filter((e) => e.key !== 'e0'), { ...eps[0], identity: 1004 }];
  const recs = [web('198.18.0.2/32')];
  const inc = buildDesired(input(recs, moved), cache);
  t.ok(cache.current!.compiler.patched >= 1, 'the old label set was patched');
  const fresh = buildDesired({ ...input(recs, moved), cidrs: new CidrIdentities() });
  t.same(entriesByPrefix(inc), entriesByPrefix(fresh), 'the same entries as a compile from scratch');
});
