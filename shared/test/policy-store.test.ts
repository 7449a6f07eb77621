// The node's policies in its journal, one key per policy (policy/store-backend.ts): a change writes
// the policies it changed, not the set; a restart reads exactly what was acknowledged; a torn change
// is all gone and a stored record that is not a policy record is reported without losing the others;
// the whole-set layout of earlier versions is migrated on first start.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { JournalStore } from '../src/store/journal.ts';
import { MemoryStore, type StoreChange } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { policySetJson } from '../src/policy/record-json.ts';
import { OLD_POLICY_KEY, POLICY_META_KEY, policyRecordKey } from '../src/policy/store-backend.ts';
import { MemoryPolicyOps } from './lib/policy.ts';

const tmp = (t: { teardown(fn: () => unknown): void }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-polstore-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
};

/** A policy with `n` CIDR rules for "app: web". */
const policy = (name: string, n: number, port = 443, namespace?: string) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name, namespace },
    spec: {
      endpointSelector: { matchLabels: { app: 'web' } },
      ingress: Array.from({ length: n }, (_, i) => ({
        fromCIDR: [`198.18.${(i >> 8) & 255}.${i & 255}/32`],
        toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }],
      })),
    },
  });

const warnings: { o: object; msg: string }[] = [];
const log = { info: () => undefined, warn: (o: object, msg: string) => warnings.push({ o, msg }) };
const open = (store: JournalStore | MemoryStore) =>
  PolicyEngine.open({ store, ops: new MemoryPolicyOps(100_000, 100_000), hostAddresses: () => [], parseOffloadBytes: 0, log });
const plain = (x: unknown) => JSON.parse(JSON.stringify(x));
/** The bytes of records in a journal file (the zeros after them are preallocated room). */
const recordBytes = (dir: string) => {
  const b = fs.readFileSync(path.join(dir, 'journal.log'));
  return b.lastIndexOf(0x0a) + 1;
};

t.test('one policy changed among many writes that policy alone; a restart reads exactly the acknowledged set', async (t) => {
  const dir = tmp(t);
  const store = new JournalStore(dir);
  const engine = await open(store);
  for (let i = 0; i < 20; i++) await engine.importText(policy(`big-${i}`, 200));
  await engine.importText(policy('small', 1));
  const before = recordBytes(dir);
  await engine.importText(policy('small', 1, 8443));
  const written = recordBytes(dir) - before;
  t.ok(written < 2000, `a 1-rule policy changed next to 4,000 rules: ${written} bytes written`);
  await engine.delete(['big-3']);
  await engine.importText(policy('with-slash', 2, 443, 'shop'));
  const acknowledged = plain(engine.list());
  const revision = engine.revision;
  await engine.close();
  // No close(): what a SIGKILL leaves (every acknowledged change was fdatasync'ed).
  const again = new JournalStore(dir);
  t.teardown(() => again.close());
  const restarted = await open(again);
  t.teardown(() => restarted.close());
  t.same(plain(restarted.list()), acknowledged, 'the same records after a restart');
  t.equal(restarted.revision, revision, 'the same revision');
  t.equal(await again.get(OLD_POLICY_KEY), undefined, 'no whole-set key');
  t.ok(await again.get(policyRecordKey('shop/with-slash')), 'a name with "/" is one key');
  // Numbers keep being handed out after the restart as before it.
  const r = await restarted.importText(policy('after', 1));
  t.equal(r.changes[0].change, 'created');
  t.notOk(
    restarted
      .list()
      .slice(0, -1)
      .some((p) => p.number === restarted.get('after')!.number),
    'a free number',
  );
});

t.test('a change torn by a crash is gone as a whole; the changes before it stay', async (t) => {
  const dir = tmp(t);
  const store = new JournalStore(dir);
  const engine = await open(store);
  await engine.importText(policy('a', 5));
  await engine.importText(policy('b', 5));
  const acknowledged = plain(engine.list());
  const end = recordBytes(dir);
  // Two policies in one document: one batch, one record.
  await engine.importText(`[${policy('c', 5)},${policy('a', 5, 80)}]`);
  await engine.close();
  const file = path.join(dir, 'journal.log');
  const rec = fs.readFileSync(file).subarray(end, recordBytes(dir));
  t.match(rec.toString(), /"op":"batch"/, 'the change is one record');
  for (const cut of [20, Math.floor(rec.length / 2), rec.length - 1]) {
    const copy = tmp(t);
    fs.copyFileSync(file, path.join(copy, 'journal.log'));
    const fd = fs.openSync(path.join(copy, 'journal.log'), 'r+');
    fs.writeSync(fd, Buffer.alloc(rec.length - cut), 0, rec.length - cut, end + cut); // torn at `cut`
    fs.closeSync(fd);
    const s = new JournalStore(copy);
    const e = await open(s);
    t.ok(s.recovery, `torn at byte ${cut} of ${rec.length}: reported`);
    t.same(plain(e.list()), acknowledged, `torn at byte ${cut}: neither c nor the new a, a and b as they were`);
    await e.close();
    s.close();
  }
});

t.test('a stored record that is not a policy record is reported; the others load', async (t) => {
  const dir = tmp(t);
  const store = new JournalStore(dir);
  const engine = await open(store);
  await engine.importText(policy('a', 3));
  await engine.importText(policy('b', 3));
  await engine.close();
  await store.put(policyRecordKey('broken'), { name: 'broken', number: 'x' });
  await store.put(policyRecordKey('renamed'), { ...(await store.get<object>(policyRecordKey('a'))), name: 'other' });
  store.close();
  warnings.length = 0;
  const again = new JournalStore(dir);
  t.teardown(() => again.close());
  const e = await open(again);
  t.teardown(() => e.close());
  t.same(
    e.list().map((p) => p.name),
    ['a', 'b'],
    'a and b load',
  );
  t.same(plain(e.storedPolicyProblems), [
    { key: 'policy/records/broken', reason: 'no valid policy number' },
    { key: 'policy/records/renamed', reason: 'its name does not match its key' },
  ]);
  t.equal(warnings.length, 2, 'each one logged');
  t.ok(await again.get(policyRecordKey('broken')), 'left in the store');
  await e.importText(policy('broken', 1));
  t.equal(e.get('broken')?.revision, 1, 'importing the name again replaces it');
  t.same(
    e.storedPolicyProblems.map((p) => p.key),
    ['policy/records/renamed'],
    'and its problem is gone',
  );
});

t.test('the whole-set layout of earlier versions is migrated on first start, in one batch', async (t) => {
  const dir = tmp(t);
  // An earlier version's store: the set under policy/repository.
  const oldStore = new JournalStore(dir);
  const mem = new MemoryStore();
  const oldEngine = await open(mem);
  await oldEngine.importText(policy('a', 3));
  await oldEngine.importText(policy('b', 4));
  await oldEngine.delete(['a']);
  await oldEngine.importText(policy('c', 2));
  const { nextNumber } = (await mem.get<{ nextNumber: number }>(POLICY_META_KEY))!;
  const set = { revision: oldEngine.revision, nextNumber, records: oldEngine.list() };
  await oldStore.put(OLD_POLICY_KEY, policySetJson(set));
  await oldEngine.close();
  oldStore.close();

  const store = new JournalStore(dir);
  const engine = await open(store);
  t.same(plain(engine.list()), plain(set.records), 'the same records');
  t.equal(engine.revision, set.revision, 'the same revision');
  t.equal(await store.get(OLD_POLICY_KEY), undefined, 'the old key is gone');
  t.same(await store.get(POLICY_META_KEY), { revision: set.revision, nextNumber });
  t.same(
    (await store.list('policy/records')).map((x) => x.key),
    [policyRecordKey('b'), policyRecordKey('c')],
  );
  await engine.importText(policy('d', 1));
  await engine.close();
  store.close();
  const again = new JournalStore(dir);
  t.teardown(() => again.close());
  const e = await open(again);
  t.teardown(() => e.close());
  t.same(
    e.list().map((p) => p.name),
    ['b', 'c', 'd'],
    'restarted after the migration',
  );
  t.same(
    e
      .list()
      .slice(0, 2)
      .map((p) => p.number),
    set.records.map((r) => r.number),
    'numbers kept',
  );
});

t.test('a migration that cannot be written (full disk) keeps the old layout until a later start', async (t) => {
  const store = new MemoryStore();
  const first = await open(store);
  await first.importText(policy('a', 2));
  const { nextNumber } = (await store.get<{ nextNumber: number }>(POLICY_META_KEY))!;
  const set = { revision: first.revision, nextNumber, records: first.list() };
  await first.close();
  const old = new MemoryStore();
  await old.put(OLD_POLICY_KEY, policySetJson(set));
  const full = Object.assign(old, {
    batch: async (_c: StoreChange[]) => {
      throw Object.assign(new Error('the state disk is full'), { code: 'ENOSPC' });
    },
  });
  warnings.length = 0;
  const e = await open(full);
  t.same(plain(e.list()), plain(set.records), 'the set is read');
  t.match(warnings[0]?.msg ?? '', /cannot move the policies/, 'reported');
  await e.importText(policy('b', 1));
  t.same(
    ((await old.get<{ records: { name: string }[] }>(OLD_POLICY_KEY))?.records ?? []).map((r) => r.name),
    ['a', 'b'],
    'changes still written, the old way',
  );
  await e.close();
});
