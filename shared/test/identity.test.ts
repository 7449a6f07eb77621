// Identities: label handling, allocation (persisted, coalesced, refcounted, swept after a grace
// period, exhaustion), CIDR identities and the ipcache content. Pure.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { IdentityAllocator } from '../src/identity/allocator.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { desiredIpcache, diffMaps } from '../src/identity/ipcache.ts';
import { canonicalLabels, identityRelevant, parseLabelArgs, splitKey, valuesFor } from '../src/identity/labels.ts';
import { matches } from '../src/policy/selector.ts';

t.test('labels: sources, relevance, matching', async (t) => {
  t.same(splitKey('k8s:app'), { source: 'k8s', key: 'app' });
  t.same(splitKey('example.com/tier:x'), { source: null, key: 'example.com/tier:x' }, 'only known sources split');
  t.same(valuesFor({ 'k8s:app': 'web', 'container:app': 'db' }, 'app'), ['web', 'db'], 'no source: any source');
  t.same(valuesFor({ 'k8s:app': 'web', 'container:app': 'db' }, 'any:app'), ['web', 'db'], 'any: is any source');
  t.same(
    valuesFor({ 'k8s:app': 'web', app: 'plain', 'cni:app': 'c' }, 'k8s:app'),
    ['web'],
    'a source matches that source only (Cilium)',
  );
  t.same(valuesFor({ 'container:app': 'db' }, 'k8s:app'), []);
  t.same(
    valuesFor(
      {
        'cni:io.kubernetes.pod.namespace': 'prod',
        'container:io.kubernetes.pod.namespace': 'prod',
        'k8s:io.kubernetes.pod.namespace': 'dev',
      },
      'io.kubernetes.pod.namespace',
    ),
    ['dev'],
    'the namespace counts in the k8s source only, whatever other sources claim',
  );
  t.same(
    valuesFor({ 'api:io.cilium.k8s.policy.serviceaccount': 'admin' }, 'any:io.cilium.k8s.policy.serviceaccount'),
    [],
    "and Cilium's derived labels",
  );
  t.same(
    identityRelevant({
      'k8s:app': 'x',
      'docker:container-id': 'abc',
      'k8s:io.kubernetes.pod.name': 'p',
      'k8s:pod-template-hash': '1',
    }),
    { 'k8s:app': 'x' },
  );
  t.equal(canonicalLabels({ b: '2', a: '1' }), canonicalLabels({ a: '1', b: '2' }));
  t.same(parseLabelArgs(['app=web,tier=front', 'flag']), { app: 'web', tier: 'front', flag: '' });
  t.ok(
    matches(
      { matchLabels: { app: 'web' }, matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] },
      { 'k8s:app': 'web' },
    ),
  );
  t.notOk(matches({ matchLabels: {}, matchExpressions: [{ key: 'env', operator: 'Exists', values: [] }] }, { app: 'web' }));
  t.ok(
    matches(
      { matchLabels: { 'k8s:app': 'web' }, matchExpressions: [{ key: 'k8s:tier', operator: 'In', values: ['a'] }] },
      { 'k8s:app': 'web', 'k8s:tier': 'a' },
    ),
  );
  t.notOk(
    matches({ matchLabels: { 'k8s:app': 'web' }, matchExpressions: [] }, { 'container:app': 'web' }),
    'k8s:app does not select a Docker container',
  );
  t.notOk(
    matches({ matchLabels: {}, matchExpressions: [{ key: 'k8s:tier', operator: 'Exists', values: [] }] }, { 'cni:tier': 'a' }),
  );
});

t.test('allocator: persisted, coalesced, refcounted, swept', async (t) => {
  const store = new MemoryStore();
  let now = 1_000_000;
  const a = await IdentityAllocator.open({ store, graceMs: 1000, now: () => now });
  const [x, x2, y] = await Promise.all([a.resolve({ app: 'x' }), a.resolve({ app: 'x' }), a.resolve({ app: 'y' })]);
  t.equal(x, x2, 'concurrent resolves of one label set share the allocation');
  t.not(x, y);
  t.ok(x >= 256 && y >= 256);
  t.equal((await store.list('identities')).length, 2, 'persisted');
  const b = await IdentityAllocator.open({ store, graceMs: 1000, now: () => now });
  t.equal(await b.resolve({ app: 'x' }), x, 'a reopened allocator keeps numbers');
  a.hold('ep1', x);
  a.hold('ep2', x);
  a.hold('ep2', y); // moved to y
  t.equal(a.list().find((i) => i.id === x)?.refs, 1);
  now += 5000;
  t.same(await a.sweep(), [], 'held identities survive');
  a.release('ep1');
  t.same(await a.sweep(), [], 'within the grace period nothing is swept');
  now += 5000;
  t.same(await a.sweep(), [x], 'after it, the unheld identity goes');
  t.equal(a.labelsOf(x), undefined);
  t.equal((await store.list('identities')).length, 1);
  t.not(await a.resolve({ app: 'x' }), x, 'numbers are not handed out again right away');
});

t.test('allocator: exhaustion and a failing store leave no trace', async (t) => {
  const store = new MemoryStore();
  const a = await IdentityAllocator.open({ store, lastId: 257 });
  await a.resolve({ n: '1' });
  await a.resolve({ n: '2' });
  await t.rejects(a.resolve({ n: '3' }), /no security identity left/);
  const failing = new MemoryStore();
  failing.put = async () => {
    throw new Error('disk full');
  };
  const f = await IdentityAllocator.open({ store: failing });
  await t.rejects(f.resolve({ app: 'z' }), /disk full/);
  t.equal(f.list().filter((i) => i.kind === 'endpoint').length, 0, 'nothing half-allocated');
});

t.test('CIDR identities and the ipcache', async (t) => {
  const c = new CidrIdentities();
  c.seed('198.18.0.0/15', (1 << 24) + 7);
  const { added } = c.sync(['198.18.0.0/15', '198.18.5.0/24', '198.19.0.1', 'fd00:1::/64']);
  t.equal(c.idOf('198.18.0.0/15'), (1 << 24) + 7, 'a seeded number is kept');
  t.equal(added.length, 3);
  t.equal(c.idOf('198.19.0.1/32'), c.idOf('198.19.0.1'), 'bare addresses are /32');
  t.same(c.within('198.18.0.0/15').sort(), [c.idOf('198.18.0.0/15'), c.idOf('198.18.5.0/24'), c.idOf('198.19.0.1/32')].sort());
  t.same(
    c.within('198.18.0.0/15', ['198.18.5.0/24']).sort(),
    [c.idOf('198.18.0.0/15'), c.idOf('198.19.0.1/32')].sort(),
    'except',
  );
  t.same(c.within('198.18.0.0/16'), [c.idOf('198.18.5.0/24')], 'a wider prefix is not inside a narrower one');
  t.same(c.within('fd00::/16'), [c.idOf('fd00:1::/64')]);
  const numbersOf = () =>
    c
      .entries()
      .map((e) => `${e.text}=${e.id}`)
      .sort();
  const numbers = numbersOf();
  c.checkpoint();
  c.sync(['198.18.5.0/24', '198.18.9.0/24']);
  t.equal(c.idOf('198.18.0.0/15'), undefined, 'the sync took effect');
  c.undo();
  t.same(numbersOf(), numbers, 'an abandoned sync is taken back: the same prefixes with the same numbers');
  t.same(c.within('198.18.0.0/15').length, 3, 'lookups see the restored table');
  const ipc = desiredIpcache({
    endpoints: [{ ips: ['10.1.0.5'], identity: 300 }],
    hostAddresses: ['192.0.2.2', 'fd00::2'],
    cidrs: c,
  });
  t.equal(ipc.get('0.0.0.0/0'), 2);
  t.equal(ipc.get('::/0'), 2);
  t.equal(ipc.get('10.1.0.5/32'), 300);
  t.equal(ipc.get('192.0.2.2/32'), 1);
  t.equal(ipc.get('fd00::2/128'), 1);
  t.same(
    diffMaps(
      new Map([
        ['a', 1],
        ['b', 2],
      ]),
      new Map([
        ['b', 3],
        ['c', 4],
      ]),
    ),
    {
      upsert: [
        ['b', 3],
        ['c', 4],
      ],
      remove: ['a'],
    },
  );
});

t.test('CIDR identities: the same prefix set again is no change; a seeded prefix is still dropped by it', async (t) => {
  const c = new CidrIdentities();
  const want = new Set(['198.18.0.0/24', '198.18.1.1/32']);
  t.equal(c.sync(want).added.length, 2);
  const version = c.version;
  t.same(c.sync(want), { added: [], removed: [] }, 'the same set: nothing to do');
  t.equal(c.version, version, 'and no new version (compiled policy is kept)');
  c.seed('198.18.9.0/24', c.idOf('198.18.0.0/24')! + 100);
  const r = c.sync(want);
  t.same(
    r.removed.map((e) => e.text),
    ['198.18.9.0/24'],
    'after a seed the same set is synced again: the seeded prefix nobody names goes',
  );
  t.same(
    c
      .entries()
      .map((e) => e.text)
      .sort(),
    [...want].sort(),
  );
});
