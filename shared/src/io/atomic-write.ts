// Replacing a file so that a crash at any moment leaves either the old or the new content, never a
// mix or nothing: write a temp file next to it, fsync it, rename it over the target, fsync the
// directory (the rename itself is only durable then). Node built-ins only (membrane-cni uses it).
import fs from 'node:fs';
import path from 'node:path';

let seq = 0;

/** Temp files start with ".tmp-": readers of a directory skip them; removeStaleTemps cleans them up. */
export const TEMP_PREFIX = '.tmp-';

function tempName(file: string): string {
  const dir = path.dirname(file);
  return path.join(dir, `${TEMP_PREFIX}${path.basename(file)}.${process.pid}.${++seq}.${Math.random().toString(36).slice(2, 8)}`);
}

export interface AtomicWriteOptions {
  /** File mode of the new file (default 0600). */
  mode?: number;
  /** Directory mode if it must be created (default 0700). */
  dirMode?: number;
}

export function writeFileAtomicSync(file: string, data: string | Uint8Array, opts: AtomicWriteOptions = {}): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: opts.dirMode ?? 0o700 });
  const tmp = tempName(file);
  try {
    const fd = fs.openSync(tmp, 'w', opts.mode ?? 0o600);
    try {
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fsyncDirSync(dir);
}

export async function writeFileAtomic(file: string, data: string | Uint8Array, opts: AtomicWriteOptions = {}): Promise<void> {
  const dir = path.dirname(file);
  await fs.promises.mkdir(dir, { recursive: true, mode: opts.dirMode ?? 0o700 });
  const tmp = tempName(file);
  try {
    const fh = await fs.promises.open(tmp, 'w', opts.mode ?? 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fs.promises.rm(tmp, { force: true });
    throw e;
  }
  await fsyncDir(dir);
}

/** Makes a directory's entries (creations, renames, unlinks) durable. */
export function fsyncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.promises.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Removes temp files older than `maxAgeMs` that a crashed writer left in `dir`. */
export function removeStaleTemps(dir: string, maxAgeMs = 3600_000): void {
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const before = Date.now() - maxAgeMs;
  for (const n of names) {
    if (!n.startsWith(TEMP_PREFIX)) continue;
    const p = path.join(dir, n);
    try {
      if (fs.statSync(p).mtimeMs < before) fs.unlinkSync(p);
    } catch {
      /* gone */
    }
  }
}
