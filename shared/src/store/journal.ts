// The agent's durable state as a snapshot plus an append-only journal. A change is durable once its
// journal record is fdatasync'ed; all changes made in the same tick share one write and one sync
// (group commit), so 50 concurrent endpoint creations cost a handful of syncs, and an append costs
// ~0.2 ms here where a write-temp/fsync/rename/fsync-dir file update costs ~1-10 ms.
//
// A batch (batch()) is one record: several keys changed together survive a crash all or none (the
// policies: one key each, a change to several written at once, policy/store-backend.ts).
//
// What a full disk, a crash or a bad sector can do, and what the store does about it:
// - Every record is framed and checksummed (journal-record.ts). A record without its newline, with a
//   wrong checksum or unreadable JSON ends the journal: at open everything from there on is cut off (kept aside as journal.log.tail-<time> when
//   there is room) and the agent starts from the records before it. A crash tears only the batch that
//   was being written, which nobody was told had succeeded.
// - Writes loop until every byte is written (a short write is not success), at the offset after the
//   last good record; when a write or its sync fails, the file is cut back to that offset, so the next
//   batch never follows half a record. If even that fails the store refuses every later write.
// - Readers see a change only once it is on disk: a failed batch changes nothing in memory, and its
//   callers get `storage_full` (ENOSPC, EDQUOT: HTTP 507) or `unavailable` (another I/O error).
// - Space for deletions is reserved: the file is kept ahead of its records by zeros (written, so the
//   blocks are allocated), records are only ever written into that space, and new data (a put) may not
//   eat into the last RESERVE bytes of it, nor be written while the disk has less than RESERVE free.
//   On a full disk, puts fail while deletes (a DEL, the rollback of a failed create, the release of
//   an address) still succeed: nothing half-created stays behind.
//   (Copy-on-write filesystems such as btrfs allocate on every overwrite; there the reserve is moot.)
import fs from 'node:fs';
import path from 'node:path';
import type { Store, StoreChange } from './index.ts';
import { writeFileAtomicSync } from '../io/atomic-write.ts';
import { MembraneError } from '../errors.ts';
import { allZero, decodeRecord, encode, NEWLINE, writeError, writeFully, type Encoded, type Op } from './journal-record.ts';

export { decodeRecord, encodeRecord } from './journal-record.ts';

const SNAPSHOT = 'snapshot.json';
const JOURNAL = 'journal.log';
/** Journal records before the state is folded into a new snapshot, once the journal has also grown to
 *  the snapshot's size: a compaction rewrites the whole state (~14 ms and 0.9 MB for a 10,000-rule
 *  policy), so it waits until the records since the last one are as many bytes. Writing is then at most
 *  twice what the changes are, however large the state and small the changes (2,000 IPAM records are
 *  ~0.2 MB), and a restart replays at most the snapshot's size again. */
const COMPACT_AFTER = 2000;
/** Preallocated room only deletions may use (~600 endpoint deletions). */
const RESERVE = 64 * 1024;
/** Preallocation grows by at least this much at a time. */
const GROW = 256 * 1024;

export interface JournalRecovery {
  /** Offset of the first byte that was cut off, and how many bytes were. */
  offset: number;
  droppedBytes: number;
  reason: string;
  /** Where the cut-off bytes were kept (absent when they could not be saved). */
  savedTo?: string;
}

export interface JournalStoreOptions {
  log?: { warn(o: object, msg: string): void };
}

export class JournalStore implements Store {
  private readonly docs = new Map<string, string>();
  private readonly file: string;
  private fd: number;
  /** Bytes of good records: where the next batch goes. */
  private size = 0;
  /** Bytes of the file (records, then preallocated zeros). */
  private allocated = 0;
  private records = 0;
  private compactAt = COMPACT_AFTER;
  /** Bytes of the snapshot last read or written. */
  private snapshotBytes = 0;
  private pending: { ops: Encoded[]; waiters: { resolve(): void; reject(e: unknown): void }[] } | null = null;
  /** Set when a failed write could not be cut off: every later write is refused. */
  private broken: MembraneError | null = null;
  /** Why the last batch's writes were refused or failed; cleared by the next batch written whole. */
  private lastFailure: MembraneError | null = null;
  /** What load() cut off the journal, if anything. */
  readonly recovery: JournalRecovery | null = null;

  constructor(
    readonly dir: string,
    private readonly opts: JournalStoreOptions = {},
  ) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = path.join(dir, JOURNAL);
    this.fd = fs.openSync(this.file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    let legacy = false;
    try {
      this.loadSnapshot();
      const r = this.loadJournal();
      legacy = r.legacy;
      this.recovery = r.recovery;
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    if (this.recovery)
      opts.log?.warn(
        { ...this.recovery, file: this.file },
        'journal: cut off a torn or corrupt tail; starting from the records before it',
      );
    // Unframed records of an older version: fold them into a snapshot so every record is framed
    // (mixed journals read fine too, so a full disk only postpones it).
    if (legacy) {
      try {
        this.compact();
      } catch (e) {
        opts.log?.warn({ err: e, file: this.file }, 'journal: cannot fold the old records into a snapshot yet');
      }
    }
  }

  private loadSnapshot(): void {
    const file = path.join(this.dir, SNAPSHOT);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new Error(`store: cannot read ${file}: ${(e as Error).message}`);
    }
    let snap: Record<string, unknown>;
    try {
      snap = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new Error(
        `store: ${file} is corrupt (${(e as Error).message}); it is replaced atomically, so the disk or someone else damaged it`,
      );
    }
    for (const [k, v] of Object.entries(snap)) this.docs.set(k, JSON.stringify(v));
    this.snapshotBytes = text.length;
  }

  private loadJournal(): { legacy: boolean; recovery: JournalRecovery | null } {
    const buf = fs.readFileSync(this.file);
    let off = 0;
    let legacy = false;
    let reason = '';
    while (off < buf.length) {
      if (buf[off] === 0 && allZero(buf.subarray(off))) break; // the preallocated room
      const nl = buf.indexOf(NEWLINE, off);
      if (nl < 0) {
        reason = 'a record without its end (torn write)';
        break;
      }
      const r = decodeRecord(buf.subarray(off, nl));
      if ('error' in r) {
        reason = `${r.error} in the record at byte ${off}`;
        break;
      }
      if (buf[off] === 0x7b) legacy = true;
      this.apply(r.op);
      this.records++;
      off = nl + 1;
    }
    this.size = off;
    this.allocated = buf.length;
    if (off === buf.length || reason === '') return { legacy, recovery: null };
    let end = buf.length;
    while (end > off && buf[end - 1] === 0) end--; // preallocated zeros after the damage are not data
    const recovery: JournalRecovery = { offset: off, droppedBytes: end - off, reason };
    const aside = `${this.file}.tail-${new Date().toISOString().replaceAll(':', '')}`;
    try {
      fs.writeFileSync(aside, buf.subarray(off, end), { mode: 0o600 });
      recovery.savedTo = aside;
    } catch {
      /* no room for it: the tail is lost, the start is not */
    }
    fs.ftruncateSync(this.fd, off);
    fs.fdatasyncSync(this.fd);
    this.allocated = off;
    try {
      this.grow(GROW);
    } catch {
      /* a full disk: the reserve comes back once there is room */
    }
    return { legacy, recovery };
  }

  private apply(op: Op, valueJson?: string, batchJson?: (string | undefined)[]): void {
    if (op.op === 'batch') {
      for (const [i, c] of op.ops.entries()) this.apply(c, batchJson?.[i]);
    } else if (op.op === 'put') this.docs.set(op.key, valueJson ?? JSON.stringify(op.value));
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
    if (!this.willExist(key)) return false;
    await this.enqueue({ op: 'del', key });
    return true;
  }

  /** All of `changes` in one record: after a crash either all of them are there or none.
   *  `freeing`: the batch removes state (its puts are bookkeeping), so a full disk lets it through. */
  batch(changes: StoreChange[], opts: { freeing?: boolean } = {}): Promise<void> {
    if (!changes.length) return Promise.resolve();
    return this.enqueue({ op: 'batch', ops: changes, freeing: opts.freeing || undefined });
  }

  async list<T>(prefix: string): Promise<{ key: string; value: T }[]> {
    const p = prefix + '/';
    return [...this.docs.keys()]
      .filter((k) => k.startsWith(p))
      .sort()
      .map((key) => ({ key, value: JSON.parse(this.docs.get(key)!) as T }));
  }

  /** Whether the key exists once the writes queued so far are done. */
  private willExist(key: string): boolean {
    const ops = (this.pending?.ops ?? []).flatMap((o) => (o.op.op === 'batch' ? o.op.ops : [o.op]));
    for (let i = ops.length - 1; i >= 0; i--) if (ops[i].key === key) return ops[i].op === 'put';
    return this.docs.has(key);
  }

  /** Queues the change for this tick's batch; it shows in memory once the batch is on disk. */
  private enqueue(op: Op): Promise<void> {
    // Encode now: a value that cannot be serialised fails its caller alone, not the whole batch.
    let e: Encoded;
    try {
      e = encode(op);
    } catch (err) {
      return Promise.reject(err);
    }
    if (!this.pending) {
      this.pending = { ops: [], waiters: [] };
      setImmediate(() => this.flush());
    }
    this.pending.ops.push(e);
    return new Promise((resolve, reject) => this.pending!.waiters.push({ resolve, reject }));
  }

  private flush(): void {
    const batch = this.pending;
    this.pending = null;
    if (!batch) return;
    let ops = batch.ops;
    const waiters = batch.waiters;
    let refused: MembraneError | null = null;
    if (this.broken) {
      refused = this.broken;
      ops = [];
    } else {
      const bytes = (list: Encoded[]) => list.reduce((n, o) => n + o.rec.length, 0);
      const hasPut = ops.some((o) => o.grows);
      const room = (hasPut && this.diskFull()) || this.ensureRoom(bytes(ops) + (hasPut ? RESERVE : 0));
      if (room) {
        // No room for new data: deletions go on in the reserve, puts fail (their callers change nothing).
        const dels = ops.filter((o) => !o.grows);
        refused = room;
        if (!dels.length || this.allocated - this.size < bytes(dels)) ops = [];
        else ops = dels;
      }
    }
    const done = new Set(ops);
    const buf = ops.length === 1 ? ops[0].rec : Buffer.concat(ops.map((o) => o.rec));
    if (buf.length) {
      try {
        writeFully(this.fd, buf, this.size);
        fs.fdatasyncSync(this.fd);
      } catch (e) {
        const err = e instanceof MembraneError ? e : writeError(this.file, e);
        this.lastFailure = err;
        this.cutBack(buf.length, err);
        for (const w of waiters) w.reject(err);
        return;
      }
      this.size += buf.length;
      this.records += ops.length;
      for (const o of ops) this.apply(o.op, o.valueJson, o.batchJson);
    }
    batch.ops.forEach((op, i) => {
      if (done.has(op)) waiters[i].resolve();
      else waiters[i].reject(refused);
    });
    this.lastFailure = done.size < batch.ops.length ? refused : null;
    if (this.records >= this.compactAt && this.size >= this.snapshotBytes) {
      try {
        this.compact();
      } catch (e) {
        // The batch is durable in the journal; only the folding waits for room.
        this.compactAt = this.records + COMPACT_AFTER / 4;
        this.opts.log?.warn({ err: e, file: this.file }, 'journal: cannot write a new snapshot yet; the journal keeps growing');
      }
    }
  }

  /** New data is refused once the disk is (nearly) full, as `df` sees it: what is left there is
   *  for deletions and for other programs, not for more state. */
  private diskFull(): MembraneError | null {
    let free: number;
    try {
      const st = fs.statfsSync(this.dir);
      free = st.bavail * st.bsize;
    } catch {
      return null; // cannot tell: the writes themselves will say
    }
    if (free >= RESERVE) return null;
    return writeError(this.file, Object.assign(new Error(`ENOSPC: ${free} bytes free on the state disk`), { code: 'ENOSPC' }));
  }

  /** Makes `need` bytes of preallocated room after the records; the error when the disk has none. */
  private ensureRoom(need: number): MembraneError | null {
    if (this.allocated - this.size >= need) return null;
    try {
      this.grow(Math.max(GROW, need - (this.allocated - this.size)));
      return null;
    } catch (e) {
      return writeError(this.file, e);
    }
  }

  /** Appends `n` zero bytes to the file (allocating them); the file may grow partly before an error. */
  private grow(n: number): void {
    try {
      writeFully(this.fd, Buffer.alloc(n), this.allocated);
    } finally {
      this.allocated = fs.fstatSync(this.fd).size;
    }
  }

  /** After a failed write: zeros again where the batch went, so the next batch never follows half a record. */
  private cutBack(len: number, cause: MembraneError): void {
    try {
      writeFully(this.fd, Buffer.alloc(Math.min(len, Math.max(0, this.allocated - this.size))), this.size);
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      this.broken = new MembraneError(
        'unavailable',
        `store: ${this.file} could not be repaired after a failed write (${(e as Error).message}); restart the agent`,
        { cause },
      );
      this.opts.log?.warn(
        { err: e, file: this.file },
        'journal: a failed write could not be undone; refusing writes until restart',
      );
    }
  }

  /** Folds the journal into a new snapshot. A crash at any point leaves snapshot + journal replaying
   *  to the same state: journal ops are whole-value puts and deletes, so replaying them twice is harmless. */
  compact(): void {
    // From the JSON memory holds: no parse and stringify of megabytes of policy on the event loop.
    const parts: string[] = [];
    for (const [k, v] of this.docs) parts.push(`${JSON.stringify(k)}:${v}`);
    const text = `{${parts.join(',')}}`;
    writeFileAtomicSync(path.join(this.dir, SNAPSHOT), text);
    this.snapshotBytes = text.length;
    fs.ftruncateSync(this.fd, 0);
    fs.fdatasyncSync(this.fd);
    this.size = 0;
    this.allocated = 0;
    this.records = 0;
    this.compactAt = COMPACT_AFTER;
    try {
      this.grow(GROW);
    } catch {
      /* no room: puts wait for it, see ensureRoom */
    }
  }

  /** What is wrong with the store now, for the agent's status: writes refused until a restart, or
   *  the last batch refused or failed (a full disk); undefined once a batch is written whole again. */
  problem(): string | undefined {
    return (this.broken ?? this.lastFailure)?.message;
  }

  close(): void {
    if (this.pending) this.flush();
    fs.closeSync(this.fd);
  }
}
