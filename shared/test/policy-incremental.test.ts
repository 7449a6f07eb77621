// Incremental policy: a change to one policy recompiles only the label sets it selects and writes only
// the entries that changed; an unrelated change writes nothing for the other endpoints. After a long
// random sequence of changes, a restarted engine (a full recompute against the same maps) finds
// nothing to change: the increments add up to the whole.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { buildDesired, type CompileCache, type DesiredInput } from '../src/policy/desired.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { decodePolicyKey } from '../src/policy/map-codec.ts';
import type { Entry } from '../src/policy/compile.ts';
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

const policy = (name: string, subject: string, from: string, port: number, cidr?: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: ${subject}}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: ${from}}}]
    toPorts: [{ports: [{port: "${port}", protocol: TCP}]}]
${cidr ? `  - fromCIDR: [${cidr}]\n` : ''}`;

/** Counts the policy map writes per endpoint id. */
class CountingOps extends MemoryPolicyOps {
  written = new Map<number, number>();
  override writePolicy(upsert: [string, Entry][], remove: string[]) {
    for (const k of [...upsert.map(([k]) => k), ...remove]) {
      const id = decodePolicyKey(Buffer.from(k, 'hex')).endpointId;
      this.written.set(id, (this.written.get(id) ?? 0) + 1);
    }
    super.writePolicy(upsert, remove);
  }
}

const setup = (ops: MemoryPolicyOps, store?: MemoryStore) => engineWithEndpoints(ops, ['web', 'db', 'client', 'cache'], store);

t.test('an unrelated policy change writes no entry of the endpoints it does not select', async (t) => {
  const ops = new CountingOps(100_000, 100_000);
  const { engine, eps } = await setup(ops);
  const [web, db] = eps;
  await engine.importText(policy('web', 'web', 'client', 80));
  t.ok(ops.entriesOf(web.id).length > 0, 'web has entries');
  ops.written.clear();
  const r = await engine.importText(policy('db', 'db', 'web', 5432));
  t.same([...ops.written.keys()], [db.id], "only db's entries were written");
  t.equal(r.stats.policyUpserts, ops.entriesOf(db.id).length, 'as many upserts as db has entries');
  ops.written.clear();
  const u = await engine.importText(policy('db', 'db', 'web', 5433));
  t.same([...ops.written.keys()], [db.id], "changing db's policy writes db's entries only");
  t.same([u.stats.policyUpserts, u.stats.policyRemovals], [1, 1], 'the one entry that changed: one upsert, one removal');
  ops.written.clear();
  await engine.delete(['db']);
  t.same([...ops.written.keys()], [db.id], 'deleting it too');
  t.equal(ops.entriesOf(db.id).length, 0);
  t.ok(ops.entriesOf(web.id).length > 0, 'web keeps its entries');
});

t.test('one policy changed recompiles only the label sets it selects', async (t) => {
  const { labels, endpoints } = webDbClient();
  const input = (recs: ReturnType<typeof records>, cidrs: CidrIdentities): DesiredInput => ({
    records: recs,
    endpoints,
    labelsOf: (id) => labels.get(id),
    hostAddresses: [],
    cidrs,
  });
  const [web, db] = [...records(policy('web', 'web', 'client', 80)), ...records(policy('db', 'db', 'web', 5432))];
  db.number = 2;
  const cache: { current?: CompileCache } = {};
  const cidrs = new CidrIdentities();
  const first = buildDesired(input([web, db], cidrs), cache);
  t.equal(cache.current!.compiler.compiled, 3, 'first build: every label set');

  const db2 = { ...records(policy('db', 'db', 'web', 5433))[0], number: 2 };
  const second = buildDesired(input([web, db2], cidrs), cache);
  t.equal(cache.current!.compiler.compiled, 1, "db's policy changed: only db recompiled");
  t.equal(second.policy.get('e0'), first.policy.get('e0'), "web's entries are the very same object (the apply skips them)");
  t.not(second.policy.get('e1'), first.policy.get('e1'), "db's are new");

  // A new CIDR identity changes what CIDR peers stand for: the policies naming CIDRs are recompiled.
  const web3 = { ...records(policy('web', 'web', 'client', 80, '198.18.0.0/16'))[0], number: 1 };
  buildDesired(input([web3, db2], cidrs), cache);
  t.equal(cache.current!.compiler.compiled, 1, "web's policy changed (it names a CIDR): web recompiled");
  const db4 = { ...records(policy('db', 'db', 'web', 5433, '198.18.1.0/24'))[0], number: 2 };
  buildDesired(input([web3, db4], cidrs), cache);
  t.equal(cache.current!.compiler.compiled, 2, "db's new CIDR is inside web's: both recompiled");

  // The same result as a build from scratch.
  const fresh = buildDesired(input([web3, db4], new CidrIdentities()));
  const flat = (d: typeof fresh) => [...d.policy.values()].flatMap((e) => [...e.entries]).sort(([a], [b]) => a.localeCompare(b));
  t.same(flat(buildDesired(input([web3, db4], cidrs), cache)), flat(fresh), 'incremental = from scratch');
});

t.test('after a random sequence of changes a full recompute finds nothing to change', async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const store = new MemoryStore();
  const { engine, eps } = await setup(ops, store);
  const apps = ['web', 'db', 'client', 'cache'];
  const rnd = seeded(7);
  for (let i = 0; i < 60; i++) {
    const name = `p${rnd(5)}`;
    if (rnd(4) === 0) {
      await engine.delete([name]).catch(() => undefined);
      continue;
    }
    await engine.importText(
      policy(name, apps[rnd(4)], apps[rnd(4)], 80 + rnd(3), rnd(2) ? `198.18.${rnd(4)}.0/${24 + rnd(2) * 8}` : undefined),
    );
  }
  const before = new Map(ops.policy);
  t.same(await restartChanges(store, ops, eps), NO_CHANGES, 'nothing to change');
  t.same(ops.policy, before);
});

t.test('one rule changed among many rebuilds only its columns, to the same table as a compile from scratch', async (t) => {
  const { labels, endpoints } = webDbClient();
  const rnd = seeded(11);
  // Rules of every shape the closure cares about: deny and allow, any port, a port, a protocol,
  // CIDRs (host and wider, so a new prefix can fall inside another rule's), endpoints, entities.
  const randomRule = () => {
    const peer = [
      () => `fromCIDR: [198.18.${rnd(4)}.${rnd(8)}/32]`,
      () => `fromCIDR: [198.18.${rnd(4)}.0/24]`,
      () => `fromEndpoints: [{matchLabels: {app: ${['db', 'client'][rnd(2)]}}}]`,
      () => `fromEntities: [${['host', 'world', 'cluster'][rnd(3)]}]`,
    ][rnd(4)]();
    const ports = [
      ``,
      `, toPorts: [{ports: [{port: "${80 + rnd(3)}", protocol: TCP}]}]`,
      `, toPorts: [{ports: [{port: "0", protocol: UDP}]}]`,
    ][rnd(3)];
    return { deny: rnd(5) === 0, text: `{${peer}${ports}}` };
  };
  const doc = (rules: { deny: boolean; text: string }[]) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: big}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [${rules
    .filter((r) => !r.deny)
    .map((r) => r.text)
    .join(', ')}]
  ingressDeny: [${rules
    .filter((r) => r.deny)
    .map((r) => r.text)
    .join(', ')}]
`;
  const rules = Array.from({ length: 60 }, randomRule);
  const input = (text: string, cidrs: CidrIdentities): DesiredInput => ({
    records: records(text),
    endpoints,
    labelsOf: (id) => labels.get(id),
    hostAddresses: [],
    cidrs,
  });
  const cache: { current?: CompileCache } = {};
  const cidrs = new CidrIdentities();
  buildDesired(input(doc(rules), cidrs), cache);
  let patched = 0;
  let differs: number | undefined;
  for (let step = 0; step < 40 && differs === undefined; step++) {
    // Replace one rule in place (keeping the others' positions and so their rule ids).
    const i = rnd(rules.length);
    const r = randomRule();
    if (r.deny !== rules[i].deny) r.deny = rules[i].deny;
    rules[i] = r;
    const text = doc(rules);
    const inc = buildDesired(input(text, cidrs), cache);
    const compiler = cache.current!.compiler;
    patched += compiler.patched;
    const fresh = buildDesired(input(text, new CidrIdentities()));
    if (JSON.stringify(entriesByPrefix(inc)) !== JSON.stringify(entriesByPrefix(fresh))) {
      differs = step;
      t.same(entriesByPrefix(inc), entriesByPrefix(fresh), `step ${step}: incremental = from scratch`);
    }
  }
  t.equal(differs, undefined, '40 one-rule changes: every incremental table equals a compile from scratch');
  t.ok(patched > 20, `most changes were patched from the previous compile (${patched} of 40)`);

  // One host-prefix rule changed among 1,000: two columns (the old peer's and the new one's).
  const many = Array.from({ length: 1000 }, (_, i) => ({
    deny: false,
    text: `{fromCIDR: [198.19.${i >> 8}.${i & 255}/32], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}`,
  }));
  const c2: { current?: CompileCache } = {};
  const cidrs2 = new CidrIdentities();
  const before = buildDesired(input(doc(many), cidrs2), c2);
  // The next build takes over the entries map (edits it in place): keep what it held.
  const beforeKeys = new Set(before.policy.get('e0')!.entries.keys());
  many[500] = { deny: false, text: `{fromCIDR: [198.19.200.1/32], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}` };
  const after = buildDesired(input(doc(many), cidrs2), c2);
  t.same(
    [c2.current!.compiler.patched, c2.current!.compiler.columnsRebuilt],
    [1, 2],
    'one label set patched, two columns rebuilt',
  );
  const web = after.policy.get('e0')!.entries;
  t.equal(web.size, beforeKeys.size, 'as many entries as before');
  t.equal([...web.keys()].filter((k) => !beforeKeys.has(k)).length, 1, 'one new entry');
});

t.test(
  'one rule changed among many, back and forth: only its entries are diffed and written, and the maps stay whole',
  async (t) => {
    const ops = new CountingOps(100_000, 100_000);
    const store = new MemoryStore();
    const { engine, eps } = await setup(ops, store);
    const web = eps[0];
    const big = (first: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: big}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
${[first, ...Array.from({ length: 300 }, (_, i) => `198.18.${i >> 8}.${i & 255}/32`)].map((c) => `  - {fromCIDR: [${c}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}`).join('\n')}
`;
    await engine.importText(big('198.19.0.1/32'));
    const entries = ops.entriesOf(web.id).length;
    for (const [i, cidr] of ['198.19.0.2/32', '198.19.0.1/32', '198.19.0.3/32'].entries()) {
      ops.written.clear();
      const r = await engine.importText(big(cidr));
      t.same([r.stats.policyUpserts, r.stats.policyRemovals], [1, 1], `change ${i + 1}: one entry in, one out`);
      t.same([...ops.written.keys()], [web.id], "only web's entries were written");
      t.equal(ops.entriesOf(web.id).length, entries, 'as many entries as before');
    }
    const before = new Map(ops.policy);
    t.same(await restartChanges(store, ops, eps), NO_CHANGES, 'a full recompute finds nothing to change');
    t.same(ops.policy, before);
  },
);
