// The journal store against what disks do: torn and corrupt tails at every offset, short writes,
// a full disk mid-batch, a failed cut-back. State on disk and in memory must always agree.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { encodeRecord, JournalStore } from '../src/store/journal.ts';
import { dump, fullDisk, patchFs, tmp, zero } from './lib/journal-disk.ts';

t.test('a torn or corrupt tail at any offset of the last records: the store opens with every record before it', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  for (let i = 0; i < 50; i++) await s.put(`k/${i}`, { i });
  const ops: [string, unknown][] = [
    ['k/50', { i: 50 }],
    ['big/a', { blob: 'x'.repeat(300) }],
    ['k/3', null],
    ['k/51', { i: 51, s: 'é\n"' }],
    ['k/0', { changed: true }],
  ];
  const before = await dump(s);
  const states: Record<string, unknown>[] = [];
  for (const [k, v] of ops) {
    if (v === null) await s.delete(k);
    else await s.put(k, v);
    states.push(await dump(s));
  }
  s.close();
  const file = fs.readFileSync(path.join(dir, 'journal.log'));
  const ends: number[] = [];
  for (let i = 0; i < file.length; i++) if (file[i] === 0x0a) ends.push(i + 1);
  t.ok(zero(file.subarray(ends[ends.length - 1])) && file.length > ends[ends.length - 1], 'records, then preallocated zeros');
  // the records (damage to the zeros after them is damage to nothing)
  const journal = file.subarray(0, ends[ends.length - 1]);
  const zeros = file.subarray(journal.length);
  const tailStart = ends[ends.length - ops.length - 1];
  const expectAt = (goodBytes: number) => {
    const n = ends.slice(-ops.length).filter((e) => e <= goodBytes).length;
    return n === 0 ? before : states[n - 1];
  };
  let checked = 0;
  const failures: string[] = [];
  for (let off = tailStart; off < journal.length; off++) {
    for (const mode of ['truncate', 'corrupt'] as const) {
      // ~1,100 stores opened twice each: on a tmpfs when there is one (fdatasync costs nothing there)
      const d = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'mbr-journal-case-'));
      try {
        fs.copyFileSync(path.join(dir, 'snapshot.json'), path.join(d, 'snapshot.json'), fs.constants.COPYFILE_FICLONE);
      } catch {
        /* no snapshot yet */
      }
      const damaged = Buffer.from(journal);
      if (mode === 'corrupt') damaged[off] ^= 0x5a;
      fs.writeFileSync(
        path.join(d, 'journal.log'),
        mode === 'truncate' ? damaged.subarray(0, off) : Buffer.concat([damaged, zeros]),
      );
      try {
        const r = new JournalStore(d);
        // corrupting a byte of record i keeps the records before it; truncating keeps the whole ones
        const good = mode === 'truncate' ? off : Math.max(...[tailStart, ...ends.filter((e) => e <= off)]);
        const want = expectAt(good);
        const got = await dump(r);
        if (JSON.stringify(got) !== JSON.stringify(want)) failures.push(`${mode} at ${off}: state differs`);
        if (r.recovery && !zero(fs.readFileSync(path.join(d, 'journal.log')).subarray(r.recovery.offset)))
          failures.push(`${mode} at ${off}: file not cut back`);
        // and it goes on: a new record after the cut survives a reopen
        await r.put('k/after', { off });
        r.close();
        const again = new JournalStore(d);
        if (JSON.stringify(await again.get('k/after')) !== JSON.stringify({ off }) || again.recovery)
          failures.push(`${mode} at ${off}: the record after the cut is lost`);
        again.close();
        checked++;
      } catch (e) {
        failures.push(`${mode} at ${off}: ${(e as Error).message}`);
      } finally {
        fs.rmSync(d, { recursive: true, force: true });
      }
    }
  }
  t.same(
    failures,
    [],
    `every offset of the last ${ops.length} records (${journal.length - tailStart} bytes), truncated and corrupted`,
  );
  t.equal(checked, 2 * (journal.length - tailStart), `${checked} damaged journals opened`);
});

t.test('a damaged tail is cut off and kept aside, and the agent is told', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  await s.put('k/1', 1);
  await s.put('k/2', 2);
  s.close();
  const file = path.join(dir, 'journal.log');
  const buf = fs.readFileSync(file);
  buf[buf.lastIndexOf(0x0a) - 3] ^= 1;
  fs.writeFileSync(file, buf);
  const warnings: unknown[] = [];
  const r = new JournalStore(dir, { log: { warn: (o) => warnings.push(o) } });
  t.equal(await r.get('k/2'), undefined, 'the damaged record is not applied');
  t.equal(await r.get('k/1'), 1);
  t.match(r.recovery, {
    reason: /checksum mismatch/,
    droppedBytes: Buffer.byteLength(encodeRecord({ op: 'put', key: 'k/2', value: 2 })),
  });
  t.ok(r.recovery?.savedTo && fs.existsSync(r.recovery.savedTo), 'the cut-off bytes are kept aside');
  t.equal(warnings.length, 1, 'and logged');
  r.close();
});

t.test('short writes are written in full', async (t) => {
  const dir = tmp(t);
  const orig = fs.writeSync;
  let calls = 0;
  patchFs(t, {
    writeSync: ((fd: number, buf: Buffer, off: number, len: number, pos: number) => {
      calls++;
      return orig(fd, buf, off, Math.min(len, 7), pos);
    }) as typeof fs.writeSync,
  });
  const s = new JournalStore(dir);
  await Promise.all(Array.from({ length: 20 }, (_, i) => s.put(`k/${i}`, { i, pad: 'p'.repeat(i * 10) })));
  s.close();
  t.ok(calls > 100, `${calls} write calls of at most 7 bytes`);
  const r = new JournalStore(dir);
  t.equal((await r.list('k')).length, 20, 'every record reads back');
  t.equal(r.recovery, null, 'no damage');
  r.close();
});

t.test('a full disk: puts fail with storage_full and change nothing; deletes still go through the reserve', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  await s.put('k/keep', 'kept');
  const file = path.join(dir, 'journal.log');
  const allocated = fs.statSync(file).size;
  const restore = fullDisk(t);
  let n = 0;
  let err: unknown;
  for (; n < 500; n++) {
    try {
      await s.put(`big/${n}`, 'x'.repeat(4000));
    } catch (e) {
      err = e;
      break;
    }
  }
  t.match(err, { code: 'storage_full', message: /state disk is full.*ENOSPC.*nothing was changed/ });
  t.match(s.problem(), /state disk is full/, 'the store reports the refused writes (agent status)');
  t.ok(n > 10 && n < 60, `${n} puts of 4 KB fit in the preallocated room, then the reserve is left to deletions`);
  t.equal(await s.get(`big/${n}`), undefined, 'the refused put is not in memory');
  const queued = s.put('k/a', 'x'.repeat(4000));
  t.equal(await s.get('k/a'), undefined, 'a queued write is not visible before it is on disk');
  const mixed = await Promise.allSettled([queued, s.delete('k/keep')]);
  t.same(
    mixed.map((r) => r.status),
    ['rejected', 'fulfilled'],
    'in one batch: the put fails, the delete goes through',
  );
  for (let i = 0; i < n; i++) await s.delete(`big/${i}`);
  t.same(await dump(s), {}, 'every delete went through on the full disk');
  t.equal(fs.statSync(file).size, allocated, 'within the room allocated before the disk filled');
  restore();
  await s.put('k/c', 3);
  t.equal(s.problem(), undefined, 'and nothing once a put is written again');
  s.close();
  const r = new JournalStore(dir);
  t.same(await dump(r), { 'k/c': 3 }, 'disk and memory agree');
  t.equal(r.recovery, null, 'and the journal holds no half record');
  r.close();
});

t.test('a write that fails halfway leaves no half record behind', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  await s.put('k/keep', 'kept');
  const orig = fs.writeSync;
  let fail = true;
  const restore = patchFs(t, {
    writeSync: ((fd: number, buf: Buffer, off: number, len: number, pos: number) => {
      if (fail && buf.some((b) => b !== 0)) {
        fail = false;
        orig(fd, buf, off, Math.floor(len / 2), pos);
        throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      }
      return orig(fd, buf, off, len, pos);
    }) as typeof fs.writeSync,
  });
  await t.rejects(Promise.all([s.put('k/a', 1), s.put('k/b', 2)]), { code: 'unavailable', message: /EIO.*nothing was changed/ });
  restore();
  await s.put('k/c', 3);
  s.close();
  const r = new JournalStore(dir);
  t.same(await dump(r), { 'k/keep': 'kept', 'k/c': 3 });
  t.equal(r.recovery, null, 'the half-written batch was zeroed, the next batch took its place');
  r.close();
});

t.test('a failed sync is unavailable; a failure that cannot be cut off stops all later writes', async (t) => {
  const dir = tmp(t);
  const s = new JournalStore(dir);
  await s.put('k/1', 1);
  const sync = fs.fdatasyncSync;
  let failures = 1;
  const restore = patchFs(t, {
    fdatasyncSync: ((fd: number) => {
      if (failures-- > 0) throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
      sync(fd);
    }) as typeof fs.fdatasyncSync,
  });
  await t.rejects(s.put('k/2', 2), { code: 'unavailable', message: /EIO/ });
  restore();
  t.equal(await s.get('k/2'), undefined);
  await s.put('k/3', 3);
  patchFs(t, {
    writeSync: (() => {
      throw Object.assign(new Error('EIO'), { code: 'EIO' });
    }) as typeof fs.writeSync,
    ftruncateSync: (() => {
      throw Object.assign(new Error('EIO'), { code: 'EIO' });
    }) as typeof fs.ftruncateSync,
  });
  await t.rejects(s.put('k/4', 4), { code: 'unavailable' });
  restore();
  await t.rejects(
    s.put('k/5', 5),
    { code: 'unavailable', message: /restart the agent/ },
    'refused until a restart reads the file again',
  );
  t.match(s.problem(), /restart the agent/, 'and the store reports it');
});
