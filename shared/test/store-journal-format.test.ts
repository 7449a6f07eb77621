// The journal store's values and file format: a value is taken when put; unframed journals are read;
// JSON text stays that value; compaction stays proportional to what was written. (The disk's
// failures: store-journal.test.ts.)

import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { rawJson } from '../src/store/index.ts';
import { JournalStore } from '../src/store/journal.ts';
import { dump, fullDisk, tmp, zero } from './lib/journal-disk.ts';

t.test('a delete of a key whose put is still queued is not lost', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  const p = s.put('k/x', 1);
  const d = s.delete('k/x');
  await Promise.all([p, d]);
  t.equal(await d, true);
  t.equal(await s.get('k/x'), undefined);
  s.close();
  t.equal(await new JournalStore(dir).get('k/x'), undefined);
});

t.test('a value is taken when put() is called: later changes to the object reach neither memory nor disk', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  const v = { rules: [1, 2] };
  const p = s.put('k/v', v);
  v.rules.push(3);
  await p;
  t.same(await s.get('k/v'), { rules: [1, 2] }, 'memory');
  await t.rejects(s.put('k/u', undefined), /cannot be stored/, 'a value JSON cannot hold fails its caller');
  await s.put('k/w', 'ok');
  s.close();
  t.same(await dump(new JournalStore(dir)), { 'k/v': { rules: [1, 2] }, 'k/w': 'ok' }, 'disk');
});

t.test('journals of the unframed format are read and folded into a snapshot', async (t) => {
  const dir = tmp(t);
  fs.writeFileSync(
    path.join(dir, 'journal.log'),
    '{"op":"put","key":"k/1","value":1}\n{"op":"put","key":"k/2","value":2}\n{"op":"put","key":"k/3","val',
  );
  const s = new JournalStore(dir);
  t.same(await dump(s), { 'k/1': 1, 'k/2': 2 });
  t.ok(zero(fs.readFileSync(path.join(dir, 'journal.log'))), 'folded into the snapshot');
  await s.put('k/4', 4);
  s.close();
  t.same(await dump(new JournalStore(dir)), { 'k/1': 1, 'k/2': 2, 'k/4': 4 });
});

t.test('a value given as JSON text is stored as that value, through a restart and a compaction', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  const set = {
    revision: 3,
    records: [
      { name: 'a', policy: { rules: [1, 2] } },
      { name: 'b', source: null },
    ],
  };
  await s.put('k/set', rawJson(`{"revision":3,"records":[${set.records.map((r) => JSON.stringify(r)).join(',')}]}`));
  await s.put('k/plain', { n: 1 });
  t.same(await s.get('k/set'), set, 'read back as the value');
  s.close();
  const reopened = new JournalStore(dir);
  t.same(await dump(reopened), { 'k/set': set, 'k/plain': { n: 1 } }, 'after a restart');
  reopened.compact();
  reopened.close();
  t.ok(fs.existsSync(path.join(dir, 'snapshot.json')), 'folded into a snapshot');
  const fromSnapshot = new JournalStore(dir);
  t.same(
    await dump(fromSnapshot),
    { 'k/set': set, 'k/plain': { n: 1 } },
    'the snapshot written from the stored text holds the same',
  );
  fromSnapshot.close();
});

t.test(
  'a batch is one record: all of it or none; on a full disk a freeing batch goes through, a growing one does not',
  async (t) => {
    const dir = tmp(t);
    const s = new JournalStore(dir);
    await s.put('k/a', 1);
    await s.batch([
      { op: 'put', key: 'k/b', value: rawJson('{"x":2}') },
      { op: 'del', key: 'k/a' },
      { op: 'put', key: 'k/c', value: 3 },
    ]);
    t.same(await dump(s), { 'k/b': { x: 2 }, 'k/c': 3 }, 'memory');
    const restore = fullDisk(t);
    for (let n = 0; n < 500; n++) {
      try {
        await s.put(`big/${n}`, 'x'.repeat(4000));
      } catch {
        break;
      }
    }
    const before = await dump(s);
    await t.rejects(
      s.batch([
        { op: 'del', key: 'k/b' },
        { op: 'put', key: 'k/d', value: 'x'.repeat(4000) },
      ]),
      { code: 'storage_full' },
      'a growing batch is refused, its deletion too',
    );
    await s.batch(
      [
        { op: 'del', key: 'k/b' },
        { op: 'put', key: 'k/c', value: 5 },
      ],
      { freeing: true },
    );
    const { 'k/b': _b, ...rest } = before;
    t.same(await dump(s), { ...rest, 'k/c': 5 }, 'the freeing batch went through the reserve');
    restore();
    s.close();
    const r = new JournalStore(dir);
    t.same(await dump(r), { ...rest, 'k/c': 5 }, 'disk and memory agree');
    r.close();
  },
);

t.test('a compaction waits until the journal has grown to the snapshot size (writing stays proportional)', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  // A large state (a 10,000-rule policy is ~0.9 MB), folded into a snapshot.
  await s.put('big/policy', { rules: Array.from({ length: 4000 }, (_, i) => ({ toCIDR: [`10.0.${i % 256}.0/24`], n: i })) });
  s.compact();
  const snapshot = fs.statSync(path.join(dir, 'snapshot.json'));
  // 2,500 small changes: more records than the count alone waits for, fewer bytes than the snapshot.
  for (let i = 0; i < 2500; i++) await s.put(`k/${i % 50}`, i);
  t.equal(fs.statSync(path.join(dir, 'snapshot.json')).ino, snapshot.ino, 'no compaction yet: the snapshot is the same file');
  // Enough bytes of changes: folded.
  const big = 'x'.repeat(4096);
  for (let i = 0; i * 4096 < snapshot.size; i++) await s.put(`k/${i % 50}`, big);
  t.not(fs.statSync(path.join(dir, 'snapshot.json')).ino, snapshot.ino, 'compacted once the journal is as large');
  s.close();
  const reopened = new JournalStore(dir);
  t.equal(((await reopened.get('big/policy')) as { rules: unknown[] }).rules.length, 4000, 'the state survives');
  reopened.close();
});
