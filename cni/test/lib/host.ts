// Host-wide resources the runtime tests touch (/etc/cni/net.d, /opt/cni/bin, the runtimes' global cache
// dirs): a cross-process lock so those tests run one at a time, and removal of exactly what they created.
import fs from 'node:fs';
import path from 'node:path';
import { alive } from '../../../integration/lib/cleanup.ts';

/** Waits for and takes a host-wide lock (a dir holding the owner's pid; a dead owner's lock is taken over). */
export async function hostLock(name: string, timeoutMs = 600_000): Promise<() => void> {
  const dir = `/run/lock/membrane-test-${name}`;
  fs.mkdirSync('/run/lock', { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'pid'), String(process.pid));
      return () => fs.rmSync(dir, { recursive: true, force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = 0;
    try {
      owner = Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8'));
    } catch {
      /* being written */
    }
    if (owner && !alive(owner)) fs.rmSync(dir, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`lock ${dir} still held by pid ${owner}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Global dirs runtimes create on first use; remembers which are absent now. */
export function absentNow(paths: string[]): string[] {
  return paths.filter((p) => !fs.existsSync(p));
}

/** Removes those of `created` that now exist but hold no regular file other than the `allowed` ones. */
export function removeIfOnly(created: string[], allowed: RegExp = /^$/): string[] {
  const removed: string[] = [];
  for (const p of created) {
    if (!fs.existsSync(p)) continue;
    if (files(p).every((f) => allowed.test(path.basename(f)))) {
      fs.rmSync(p, { recursive: true, force: true });
      removed.push(p);
    }
  }
  return removed;
}

function files(dir: string): string[] {
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) return [dir];
  return fs.readdirSync(dir).flatMap((n) => files(path.join(dir, n)));
}
