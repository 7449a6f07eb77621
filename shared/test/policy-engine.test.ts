// The engine against in-memory maps: endpoints get entries and flags before attach, imports and
// deletes apply diffs and bump revisions, failures leave nothing changed, a restart (new engine over
// the same maps and store) changes nothing, trace agrees with the entries.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine, PolicyError } from '../src/policy/engine.ts';
import { EP_FLAGS } from '../src/policy/map-codec.ts';
import { MemoryPolicyOps, testEndpoint, WEB_FROM_CLIENT } from './lib/policy.ts';
import { parsePortArg } from '../src/policy/ports.ts';

const WEB_POLICY = `${WEB_FROM_CLIENT}  egress:
  - toCIDR: [198.18.0.0/24]
`;

async function setup(ops = new MemoryPolicyOps(), store = new MemoryStore()) {
  const engine = await PolicyEngine.open({ store, ops, hostAddresses: () => ['192.0.2.1'] });
  const add = async (id: number, labels: Record<string, string>, ip: string) => {
    const ep = testEndpoint(id, labels, await engine.identityFor(labels), ip);
    ops.flags.set(ep.hostIfIndex, 0); // the endpoint manager wrote the config before beforeAttach
    await engine.endpointAttached(ep);
    return ep;
  };
  return { engine, ops, store, add };
}

t.test('entries, flags and ipcache follow policies and endpoints', async (t) => {
  const { engine, ops, add } = await setup();
  await engine.start();
  const web = await add(1, { app: 'web' }, '10.0.0.2');
  const client = await add(2, { app: 'client' }, '10.0.0.3');
  t.equal(ops.flags.get(web.hostIfIndex), 0, 'no policy: allow all');
  t.equal(ops.ipcache.get('10.0.0.2/32'), web.identity, 'endpoint address -> identity');
  t.equal(ops.ipcache.get('192.0.2.1/32'), 1, 'host address -> host');
  t.equal(ops.ipcache.get('0.0.0.0/0'), 2, 'default -> world');

  const r = await engine.importText(WEB_POLICY);
  t.equal(r.revision, 1);
  t.same(r.changes, [{ name: 'web', change: 'created', revision: 1 }]);
  const f = ops.flags.get(web.hostIfIndex)!;
  t.ok(f & EP_FLAGS.ingressDefaultDeny && f & EP_FLAGS.egressDefaultDeny, 'web is default-deny both ways');
  t.equal(ops.flags.get(client.hostIfIndex), 0, 'client is not selected');
  const entries = ops.entriesOf(web.id);
  t.ok(
    entries.some(
      (e) => e.direction === 'ingress' && e.peer === client.identity && e.proto === 6 && e.dport === 80 && e.action === 'allow',
    ),
  );
  t.ok(
    entries.some((e) => e.direction === 'ingress' && e.peer === 1 && e.proto === 0),
    'host allowance',
  );
  const cidrId = [...ops.ipcache].find(([p]) => p === '198.18.0.0/24')?.[1];
  t.ok(cidrId && cidrId >= 1 << 24, 'the CIDR got a CIDR identity in the ipcache');
  t.ok(
    entries.some((e) => e.direction === 'egress' && e.peer === cidrId),
    'egress entry toward it',
  );

  const unchanged = await engine.importText(WEB_POLICY);
  t.equal(unchanged.revision, 1, 're-importing the same policy changes nothing');
  t.equal(unchanged.changes[0].change, 'unchanged');

  // A new endpoint gets everything before it is attached (beforeAttach resolves after the maps).
  const web2 = await add(3, { app: 'web' }, '10.0.0.4');
  t.ok(ops.flags.get(web2.hostIfIndex)! & EP_FLAGS.ingressDefaultDeny, 'new endpoint enforced at once');
  t.equal(ops.entriesOf(web2.id).length, entries.length, 'with the same entries');

  // Trace agrees.
  const tr = engine.trace({ src: { labels: { app: 'client' } }, dst: { labels: { app: 'web' } }, ...parsePortArg('80/tcp') });
  t.equal(tr.verdict, 'allow');
  t.match(tr.steps.find((s) => s.direction === 'ingress')!.reason, /allowed by web spec\.ingress\[0\]/);
  const tr2 = engine.trace({ src: { labels: { app: 'client' } }, dst: { labels: { app: 'web' } }, ...parsePortArg('81/tcp') });
  t.equal(tr2.verdict, 'deny');
  t.match(tr2.steps.find((s) => s.direction === 'ingress')!.reason, /default deny/);
  const tr3 = engine.trace({ src: { labels: { app: 'web' } }, dst: { ip: '198.18.0.9' }, ...parsePortArg('443/tcp') });
  t.equal(tr3.verdict, 'allow', 'egress to the CIDR');
  const tr4 = engine.trace({ src: { labels: { app: 'web' } }, dst: { ip: '198.19.0.9' }, ...parsePortArg('443/tcp') });
  t.equal(tr4.verdict, 'deny', 'egress to world is denied');
  // Labels as a user types them name the live identity they select (CRI pods carry k8s: labels and a namespace).
  const shopper = await add(4, { 'k8s:app': 'shopper', 'k8s:io.kubernetes.pod.namespace': 'shop' }, '10.0.0.5');
  const tr5 = engine.trace({ src: { labels: { app: 'shopper' } }, dst: { labels: { app: 'web' } }, ...parsePortArg('80/tcp') });
  t.same(
    [tr5.src.identity, tr5.src.unallocated],
    [shopper.identity, undefined],
    "--src app=shopper traces the pod's real identity",
  );
  t.same(tr5.src.labels, shopper.labels, 'with its labels');
  const other = await add(5, { 'k8s:app': 'shopper', 'k8s:io.kubernetes.pod.namespace': 'other' }, '10.0.0.6');
  const tr6 = engine.trace({ src: { labels: { app: 'shopper' } }, dst: { labels: { app: 'web' } }, ...parsePortArg('80/tcp') });
  t.same(
    [tr6.src.unallocated, tr6.src.candidates],
    [true, [shopper.identity, other.identity].sort((a, b) => a - b)],
    'two identities match: both named, none picked',
  );
  t.equal(
    engine.trace({ src: { labels: { app: 'nobody' } }, dst: { labels: { app: 'web' } }, ...parsePortArg('80/tcp') }).src
      .unallocated,
    true,
    'labels no endpoint has: said so',
  );
  t.match(engine.describeRule(tr.steps[1].rule!.ruleId), { policy: 'web', path: 'spec.ingress[0]', action: 'allow' });
  t.match(engine.endpointPolicy('c1', 'eth0'), {
    enforcement: { ingress: 'default-deny', egress: 'default-deny' },
    policies: [{ name: 'web' }],
  });

  // Relabel: client becomes "other"; its old identity's entries go away.
  const relabelled = { ...client, labels: { app: 'other' }, identity: await engine.identityFor({ app: 'other' }) };
  await engine.endpointLabelsChanged(relabelled);
  t.notOk(
    ops.entriesOf(web.id).some((e) => e.peer === client.identity),
    'entries for the old identity are gone',
  );
  t.equal(ops.ipcache.get('10.0.0.3/32'), relabelled.identity);

  const del = await engine.delete(['web']);
  t.equal(del.revision, 2);
  t.equal(ops.flags.get(web.hostIfIndex), 0, 'deleting the policy opens the endpoint');
  t.equal(ops.policy.size, 0, 'and removes every entry');
  t.notOk(ops.ipcache.has('198.18.0.0/24'), 'and the CIDR prefix');
  await t.rejects(engine.delete(['nope']), PolicyError);

  await engine.endpointDeleted(web);
  t.notOk(ops.ipcache.has('10.0.0.2/32'), 'a deleted endpoint leaves the ipcache');
});

t.test('invalid input and failed map writes change nothing', async (t) => {
  const { engine, ops, add } = await setup();
  await engine.start();
  await add(1, { app: 'web' }, '10.0.0.2');
  const invalid = await engine.importText('kind: NetworkPolicy').catch((e: PolicyError) => e);
  t.ok(
    invalid instanceof PolicyError && invalid.code === 'bad_request' && invalid.issues!.length > 0,
    'invalid input: bad_request with issues',
  );
  t.equal(engine.revision, 0);
  ops.failNextPolicyWrite = true;
  await t.rejects(engine.importText(WEB_POLICY), /E2BIG/);
  t.equal(ops.policy.size, 0, 'the partially written entry was rolled back');
  t.equal(ops.flags.get(101), 0, 'flags untouched');
  t.equal(engine.revision, 0, 'nothing committed');
  t.equal(engine.list().length, 0);
  ops.policyCapacity = 1;
  const writes = ops.writes;
  await t.rejects(engine.importText(WEB_POLICY), /need 2 policy map entries; the map holds 1/);
  t.equal(ops.writes, writes, 'a capacity error is found before any write');
  ops.policyCapacity = 1000;
  await engine.importText(WEB_POLICY);
  t.equal(engine.revision, 1, 'and the next import works');
});

t.test('a restarted engine over the same maps and store changes nothing and keeps numbers', async (t) => {
  const store = new MemoryStore();
  const ops = new MemoryPolicyOps();
  const first = await setup(ops, store);
  await first.engine.start();
  const web = await first.add(1, { app: 'web' }, '10.0.0.2');
  const client = await first.add(2, { app: 'client' }, '10.0.0.3');
  await first.engine.importText(WEB_POLICY);
  const before = { policy: new Map(ops.policy), ipcache: new Map(ops.ipcache), flags: new Map(ops.flags) };

  const second = await PolicyEngine.open({ store, ops, hostAddresses: () => ['192.0.2.1'] });
  t.equal(await second.identityFor({ app: 'web' }), web.identity, 'identity numbers survive');
  ops.writes = 0;
  for (const ep of [web, client]) await second.endpointAttached(ep); // restore, before start
  const stats = await second.start();
  t.same(stats, { policyUpserts: 0, policyRemovals: 0, ipcacheUpserts: 0, ipcacheRemovals: 0, flagChanges: 0 }, 'no map change');
  t.equal(ops.writes, 0);
  t.same(ops.policy, before.policy);
  t.same(ops.ipcache, before.ipcache, 'CIDR identities re-seeded from the pinned ipcache');
  t.equal(second.revision, 1);
});

t.test('an endpoint whose labels are still pending (init) is closed while any policy exists', async (t) => {
  const { engine, ops } = await setup();
  await engine.start();
  const docker = testEndpoint(9, {}, 5, '10.0.0.9'); // the endpoint manager assigns init while a runtime owes labels
  ops.flags.set(docker.hostIfIndex, 0);
  await engine.endpointAttached(docker);
  t.equal(ops.flags.get(docker.hostIfIndex), 0, 'no policy at all: open');
  await engine.importText(WEB_POLICY);
  const f = ops.flags.get(docker.hostIfIndex)!;
  t.ok(f & EP_FLAGS.ingressDefaultDeny && f & EP_FLAGS.egressDefaultDeny, 'some policy exists: closed both ways');
  t.ok(
    ops.entriesOf(docker.id).some((e) => e.peer === 1 && e.direction === 'ingress'),
    'the node may still reach it',
  );
  t.match(
    engine.endpointPolicy(docker.containerId, docker.ifName),
    { identity: 5, init: true, enforcement: { ingress: 'default-deny', egress: 'default-deny' }, policies: [] },
    'endpoint get says why: the init policy, not a selecting policy',
  );
  const labelled = { ...docker, labels: { app: 'client' }, identity: await engine.identityFor({ app: 'client' }) };
  await engine.endpointLabelsChanged(labelled);
  t.equal(ops.flags.get(docker.hostIfIndex), 0, 'labels known, not selected: open');
  await engine.delete('all');
});

t.test('an endpoint without labels has a normal identity and is open while no policy selects it', async (t) => {
  const { engine, ops, add } = await setup();
  await engine.start();
  const bare = await add(11, {}, '10.0.0.11');
  const bare2 = await add(12, {}, '10.0.0.12');
  t.ok(bare.identity >= 256, `identity ${bare.identity} for the empty label set, not init`);
  t.equal(bare2.identity, bare.identity, 'label-less workloads share it');
  await engine.importText(WEB_POLICY);
  t.equal(ops.flags.get(bare.hostIfIndex), 0, 'a policy selecting app=web leaves it open');
  t.match(engine.endpointPolicy(bare.containerId, bare.ifName), {
    init: false,
    enforcement: { ingress: 'allow-all', egress: 'allow-all' },
    policies: [],
  });
  await engine.delete('all');
});

t.test('identities: reserved, empty, filtered, refcounted, swept', async (t) => {
  const { engine, add } = await setup();
  await engine.start();
  t.ok((await engine.identityFor({})) >= 256, 'no labels: the empty set has an identity like any other');
  t.equal(await engine.identityFor({ 'reserved:health': '' }), 4);
  const a = await engine.identityFor({ 'container:app': 'x', 'container:com.docker.compose.container-number': '1' });
  t.equal(
    await engine.identityFor({ 'container:app': 'x', 'container:com.docker.compose.container-number': '2' }),
    a,
    'per-replica labels do not split identities',
  );
  t.equal(
    await engine.identityFor({ 'k8s:app': 'x', 'k8s:io.kubernetes.pod.name': 'p-1', 'k8s:pod-template-hash': 'abc' }),
    await engine.identityFor({ 'k8s:app': 'x', 'k8s:io.kubernetes.pod.name': 'p-2', 'k8s:pod-template-hash': 'def' }),
    'pod names and template hashes either',
  );
  t.ok(a >= 256);
  const ep = await add(7, { 'container:app': 'x' }, '10.0.0.9');
  t.equal(engine.identityList().find((i) => i.id === a)?.refs, 1);
  await engine.endpointDeleted(ep);
  t.equal(engine.identityList().find((i) => i.id === a)?.refs, 0);
  t.ok(engine.identityList().find((i) => i.id === 1 && i.kind === 'reserved'));
});
