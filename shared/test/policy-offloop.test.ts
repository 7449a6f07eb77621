// Imports read off the event loop (parse-offloop.ts): a big document is read in a worker thread while
// the loop goes on; the result, the errors for a bad document and the order of imports in flight are
// those of reading inline.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { JournalStore } from '../src/store/journal.ts';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine, PolicyError } from '../src/policy/engine.ts';
import { PolicyParser } from '../src/policy/parse-offloop.ts';
import { parsePolicies } from '../src/policy/parse.ts';
import { fingerprint, fingerprintOf } from '../src/policy/fingerprint.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';

/** A policy with `n` CIDR rules for "app: web" (about 100 bytes a rule). */
function bigPolicy(name: string, n: number, port = 443, extra = ''): string {
  const ingress = Array.from({ length: n }, (_, i) => ({
    fromCIDR: [`198.18.${(i >> 8) & 255}.${i & 255}/32`],
    toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }],
  }));
  return JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name },
    spec: { endpointSelector: { matchLabels: { app: 'web' } }, ingress },
  }).replace('"ingress":[', `"ingress":[${extra}`);
}

async function setup() {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    parseOffloadBytes: 0,
  });
  const ep = testEndpoint(1, { app: 'web' }, await engine.identityFor({ app: 'web' }), '10.0.0.2');
  ops.flags.set(ep.hostIfIndex, 0);
  await engine.endpointAttached(ep);
  await engine.start();
  return { engine, ops, ep };
}

t.test('a big document is read in the worker, with the loop free meanwhile, to the same result', async (t) => {
  const parser = new PolicyParser({ minBytes: 0 });
  t.teardown(() => parser.close());
  const text = bigPolicy('big', 2000);
  let doneAtFirstTurn: boolean | undefined;
  let done = false;
  const reading = parser.parse(text, {}).then((r) => {
    done = true;
    return r;
  });
  setImmediate(() => {
    doneAtFirstTurn = done;
  });
  const r = await reading;
  t.equal(doneAtFirstTurn, false, 'the loop turned while the document was being read');
  const inline = parsePolicies(text, {});
  t.same(r.policies, inline.policies, 'the same policies as read inline');
  t.same(JSON.parse(JSON.stringify(r.sources)), inline.sources, 'and the same sources once serialised (kept as text)');
  t.equal(r.fingerprints?.rules[0][0].length, 2000, 'with a fingerprint per rule');
  t.equal(fingerprintOf(r.policies[0]), fingerprint(inline.policies[0]), 'adopted: the fingerprint of the content');
  t.equal(fingerprintOf(r.policies[0].specs[0].rules[7]), fingerprint(inline.policies[0].specs[0].rules[7]));
});

t.test('a bad document read in the worker is refused naming the field, and changes nothing', async (t) => {
  const { engine, ops, ep } = await setup();
  t.teardown(() => engine.close());
  await engine.importText(bigPolicy('web', 500));
  const before = new Map(ops.policy);
  const bad = bigPolicy(
    'web',
    500,
    80,
    '{"fromCIDR":["198.18.0.0/16"],"toPorts":[{"ports":[{"port":"http","protocol":"TCP"}]}]},',
  );
  const err = await engine.importText(bad).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof PolicyError && err.code === 'bad_request', 'refused as a bad request');
  t.match((err as PolicyError).message, /spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port/, 'naming the field');
  t.equal((err as PolicyError).issues?.[0].line, 1, 'and its line');
  t.same(ops.policy, before, 'the maps are as they were');
  t.equal(engine.revision, 1, 'the revision too');
  t.ok(
    ops.entriesOf(ep.id).some((e) => e.dport === 443),
    'the old policy is still enforced',
  );
});

t.test('imports in flight apply in the order they arrived', async (t) => {
  const { engine, ops, ep } = await setup();
  t.teardown(() => engine.close());
  // The big one takes longest to read; the small one, sent after it, must still apply after it.
  const first = engine.importText(bigPolicy('web', 3000, 443));
  const second = engine.importText(bigPolicy('web', 1, 8080));
  const deleted = engine.delete(['web']);
  const again = engine.importText(bigPolicy('web', 2, 9090));
  const [a, b, c, d] = await Promise.all([first, second, deleted, again]);
  t.same([a.revision, b.revision, c.revision, d.revision], [1, 2, 3, 4], 'revisions in arrival order');
  t.same(
    [a.changes[0].change, b.changes[0].change, c.changes[0].change, d.changes[0].change],
    ['created', 'updated', 'deleted', 'created'],
  );
  const ports = new Set(
    ops
      .entriesOf(ep.id)
      .filter((e) => e.proto === 6)
      .map((e) => e.dport),
  );
  t.same([...ports], [9090], 'the maps hold the last import');
  t.equal(engine.get('web')?.policy.specs[0].rules.length, 2);
});

t.test('a set read in the worker is stored from the text the worker sent: a restarted engine reads the same set', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-offloop-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const open = (store: JournalStore) =>
    PolicyEngine.open({ store, ops: new MemoryPolicyOps(100_000, 100_000), hostAddresses: () => [], parseOffloadBytes: 0 });
  const store = new JournalStore(dir);
  const engine = await open(store);
  await engine.importText(bigPolicy('big', 200));
  await engine.importText(bigPolicy('other', 100, 80));
  await engine.importText(bigPolicy('big', 200, 8443)); // one of two changed: the other's stored text is reused
  const before = engine.list();
  await engine.close();
  store.close();
  const again = new JournalStore(dir);
  t.teardown(() => again.close());
  const restarted = await open(again);
  t.teardown(() => restarted.close());
  t.same(restarted.list(), JSON.parse(JSON.stringify(before)), 'the same records, policies and sources after a restart');
  t.same(
    restarted.get('big')?.policy,
    parsePolicies(bigPolicy('big', 200, 8443), {}).policies[0],
    'the changed policy as read inline',
  );
  t.equal(restarted.get('big')?.revision, 2);
});

t.test('rules the last answer carried come back as references: the same objects, the same result as read inline', async (t) => {
  const parser = new PolicyParser({ minBytes: 0 });
  t.teardown(() => parser.close());
  const first = await parser.parse(bigPolicy('big', 300), {});
  const changedText = bigPolicy('big', 300, 443, '{"fromCIDR":["198.19.0.1/32"]},');
  const second = await parser.parse(changedText, {});
  const inline = parsePolicies(changedText, {});
  t.same(second.policies, inline.policies, 'the same policies as read inline');
  const [a, b] = [first.policies[0].specs[0].rules, second.policies[0].specs[0].rules];
  // The new rule went in first: every old rule moved one index on, so none is the same rule.
  t.not(b[1], a[0], 'a rule at another index is another rule');
  const third = await parser.parse(changedText.replace('198.19.0.1/32', '198.19.0.2/32'), {});
  const c = third.policies[0].specs[0].rules;
  t.equal(c[5], b[5], 'an unchanged rule is the very object the agent holds already');
  t.not(c[0], b[0], 'the changed rule is new');
  t.same(third.policies, parsePolicies(changedText.replace('198.19.0.1/32', '198.19.0.2/32'), {}).policies);
  t.equal(fingerprintOf(c[0]), fingerprint(c[0]), 'fingerprints still those of the content');
});
