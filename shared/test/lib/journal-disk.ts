// What the journal store's tests share: a scratch directory, and fs patched to act like a failing disk.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { JournalStore } from '../../src/store/journal.ts';

export const tmp = (t: { teardown(fn: () => unknown): void }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-journal-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
};

export const zero = (b: Buffer) => b.equals(Buffer.alloc(b.length));

/** Everything a store holds, as one comparable object. */
export async function dump(s: JournalStore): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const p of ['k', 'big']) for (const { key, value } of await s.list(p)) out[key] = value;
  return out;
}

/** Replaces fs.writeSync / fs.fdatasyncSync / fs.ftruncateSync for one test. */
export function patchFs(
  t: { teardown(fn: () => unknown): void },
  patch: Partial<Pick<typeof fs, 'writeSync' | 'fdatasyncSync' | 'ftruncateSync'>>,
) {
  const orig = { writeSync: fs.writeSync, fdatasyncSync: fs.fdatasyncSync, ftruncateSync: fs.ftruncateSync };
  Object.assign(fs, patch);
  const restore = () => Object.assign(fs, orig);
  t.teardown(restore);
  return restore;
}

/** A full disk: writes within the file's allocated size go through, writes past it fail with ENOSPC
 *  (after writing what fits, as a short write). */
export function fullDisk(t: { teardown(fn: () => unknown): void }) {
  const orig = fs.writeSync;
  return patchFs(t, {
    writeSync: ((fd: number, buf: Buffer, off: number, len: number, pos: number) => {
      const fit = Math.max(0, fs.fstatSync(fd).size - pos);
      if (len <= fit) return orig(fd, buf, off, len, pos);
      if (fit > 0) return orig(fd, buf, off, fit, pos);
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
    }) as typeof fs.writeSync,
  });
}
