// The agent's durable state as a snapshot plus an append-only journal. A change is durable once its
// journal line is fdatasync'ed; all changes made in the same tick share one write and one sync
// (group commit), so 50 concurrent endpoint creations cost a handful of syncs, and an append costs
// ~0.2 ms here where a write-temp/fsync/rename/fsync-dir file update costs ~1-10 ms.
import fs from 'node:fs';
import path from 'node:path';
import type { Store } from './index.ts';
import { writeFileAtomicSync } from '../io/atomic-write.ts';
import { MembraneError } from '../errors.ts';

type Op = { op: 'put'; key: string; value: unknown } | { op: 'del'; key: string };

const SNAPSHOT = 'snapshot.json';
const JOURNAL = 'journal.log';
/** Journal lines before the state is folded into a new snapshot. */
const COMPACT_AFTER = 2000;

export class JournalStore implements Store {
  private readonly docs = new Map<string, string>();
  private fd: number;
  private lines = 0;
  private pending: { ops: Op[]; waiters: { resolve(): void; reject(e: unknown): void }[] } | null = null;

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.load();
    this.fd = fs.openSync(path.join(dir, JOURNAL), 'a', 0o600);
  }

  private load(): void {
    try {
      const snap = JSON.parse(fs.readFileSync(path.join(this.dir, SNAPSHOT), 'utf8')) as Record<string, unknown>;
      for (const [k, v] of Object.entries(snap)) this.docs.set(k, JSON.stringify(v));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`store: cannot read ${path.join(this.dir, SNAPSHOT)}: ${(e as Error).message}`);
    }
    let text = '';
    try { text = fs.readFileSync(path.join(this.dir, JOURNAL), 'utf8'); } catch { /* no journal yet */ }
    const lines = text.split('\n');
    for (const [i, line] of lines.entries()) {
      if (!line) continue;
      let op: Op;
      try { op = JSON.parse(line) as Op; } catch {
        // Only the last line can be torn (a crash mid-append); it was never acknowledged.
        if (i >= lines.length - 2) break;
        throw new Error(`store: ${path.join(this.dir, JOURNAL)} line ${i + 1} is corrupt`);
      }
      this.apply(op);
      this.lines++;
    }
  }

  private apply(op: Op): void {
    if (op.op === 'put') this.docs.set(op.key, JSON.stringify(op.value));
    else this.docs.delete(op.key);
  }

  async get<T>(key: string): Promise<T | undefined> {
    const v = this.docs.get(key);
    return v === undefined ? undefined : (JSON.parse(v) as T);
  }

  put(key: string, value: unknown): Promise<void> {
    return this.enqueue({ op: 'put', key, value });
  }

  async delete(key: string): Promise<boolean> {
    if (!this.docs.has(key)) return false;
    await this.enqueue({ op: 'del', key });
    return true;
  }

  async list<T>(prefix: string): Promise<{ key: string; value: T }[]> {
    const p = prefix + '/';
    return [...this.docs.keys()].filter((k) => k.startsWith(p)).sort()
      .map((key) => ({ key, value: JSON.parse(this.docs.get(key)!) as T }));
  }

  /** Applies in memory at once (readers see it), acknowledges after the batch is on disk. */
  private enqueue(op: Op): Promise<void> {
    this.apply(op);
    if (!this.pending) {
      this.pending = { ops: [], waiters: [] };
      setImmediate(() => this.flush());
    }
    this.pending.ops.push(op);
    return new Promise((resolve, reject) => this.pending!.waiters.push({ resolve, reject }));
  }

  private flush(): void {
    const batch = this.pending;
    this.pending = null;
    if (!batch) return;
    try {
      fs.writeSync(this.fd, batch.ops.map((o) => JSON.stringify(o)).join('\n') + '\n');
      fs.fdatasyncSync(this.fd);
      this.lines += batch.ops.length;
      if (this.lines >= COMPACT_AFTER) this.compact();
      for (const w of batch.waiters) w.resolve();
    } catch (e) {
      // Nothing wrong with the request (a full disk, an I/O error): the caller may try again.
      const err = new MembraneError('unavailable', `store: cannot write ${path.join(this.dir, JOURNAL)}: ${(e as Error).message}`, { cause: e });
      for (const w of batch.waiters) w.reject(err);
    }
  }

  /** Folds the journal into a new snapshot. A crash at any point leaves snapshot + journal replaying
   *  to the same state: journal ops are whole-value puts and deletes, so replaying them twice is harmless. */
  compact(): void {
    const snap: Record<string, unknown> = {};
    for (const [k, v] of this.docs) snap[k] = JSON.parse(v);
    writeFileAtomicSync(path.join(this.dir, SNAPSHOT), JSON.stringify(snap));
    fs.ftruncateSync(this.fd, 0);
    fs.fdatasyncSync(this.fd);
    this.lines = 0;
  }

  close(): void {
    if (this.pending) this.flush();
    fs.closeSync(this.fd);
  }
}
