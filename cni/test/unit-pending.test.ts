import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import {
  drainPendingDeletes,
  listPendingDeletes,
  queuePendingDelete,
  type PendingDelete,
} from '../../shared/src/pending-deletes/index.ts';
import { tmpDir } from './lib/inproc.ts';

t.test('queue, overwrite, drain in order, keep failures, set aside garbage', async (t) => {
  const root = tmpDir();
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const dir = path.join(root, 'q');
  t.same(listPendingDeletes(dir), [], 'missing dir = empty queue');
  queuePendingDelete(dir, { containerId: 'a', ifName: 'eth0', netns: '/n/a', reason: 'down' });
  queuePendingDelete(dir, { containerId: 'b', ifName: 'eth0', netns: '', reason: 'down' });
  queuePendingDelete(dir, { containerId: 'a', ifName: 'eth0', netns: '/n/a2', reason: 'down again' });
  fs.writeFileSync(path.join(dir, 'junk.json'), '{nope');
  t.equal(fs.statSync(dir).mode & 0o777, 0o700);
  const list = listPendingDeletes(dir);
  t.equal(list.filter((l) => l.entry).length, 2, 'same attachment queued twice = one entry');
  t.equal(list.find((l) => l.entry?.containerId === 'a')?.entry?.netns, '/n/a2');

  const seen: PendingDelete[] = [];
  const r1 = await drainPendingDeletes(dir, async (e) => {
    seen.push(e);
    if (e.containerId === 'b') throw new Error('agent busy');
  });
  t.same(
    r1.deleted.map((e) => e.containerId),
    ['a'],
  );
  t.same(
    r1.failed.map((f) => [f.entry.containerId, f.error]),
    [['b', 'agent busy']],
  );
  t.equal(r1.invalid.length, 1);
  t.ok(fs.existsSync(path.join(dir, 'junk.json.bad')), 'garbage set aside');
  t.same(
    seen.map((e) => e.containerId),
    ['b', 'a'],
    'oldest first (a was queued again last)',
  );

  const r2 = await drainPendingDeletes(dir, async () => undefined);
  t.same(
    r2.deleted.map((e) => e.containerId),
    ['b'],
    'failure kept for the next drain',
  );
  t.same(listPendingDeletes(dir), []);
});

t.test('a DEL queued again during the drain is kept', async (t) => {
  const dir = tmpDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  queuePendingDelete(dir, { containerId: 'a', ifName: 'eth0', netns: '', reason: 'r' });
  const r = await drainPendingDeletes(dir, async () => {
    await new Promise((res) => setTimeout(res, 5));
    queuePendingDelete(dir, { containerId: 'a', ifName: 'eth0', netns: '', reason: 'again' });
  });
  t.equal(r.deleted.length, 0);
  t.equal(listPendingDeletes(dir)[0].entry?.reason, 'again');
});
