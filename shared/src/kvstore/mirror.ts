// A local copy of one prefix of the cluster store, kept in step: list at revision R, then watch from
// R+1. When the watch breaks (etcd restarted, network gone, history compacted) the mirror lists again
// once the store answers and hands the consumer the difference against what it had, deleted keys
// included, before watching from the new revision. So a consumer never keeps an entry the store lost
// while we were away, and never misses one it gained.
import type { Kv, KvEvent } from './kv.ts';

export interface MirrorChange<T> {
  /** Keys are relative to the prefix. */
  upserts: [string, T][];
  deletes: string[];
  revision: number;
  /** True for the initial list and every relist after a broken watch. */
  resync: boolean;
}

export interface MirrorOptions<T> {
  /** undefined = skip the entry (foreign or damaged value). */
  decode(value: string, key: string): T | undefined;
  /** Changes are delivered one at a time, in revision order (a returned promise is awaited). */
  onChange(change: MirrorChange<T>): void | Promise<void>;
  /** Same value (no change to report); default compares the raw text. */
  same?(a: T, b: T): boolean;
  log?: { warn(o: object, msg: string): void; info(o: object, msg: string): void };
  retryMinMs?: number;
  retryMaxMs?: number;
}

export class PrefixMirror<T> {
  readonly items = new Map<string, T>();
  private readonly raw = new Map<string, string>();
  /** Store revision this copy reflects. */
  revision = 0;
  /** Watching live (false between a break and the next successful list). */
  live = false;
  lastError?: string;
  resyncs = 0;
  /** The last list-and-apply: entries listed, and ms from the list request to the consumer done. */
  lastResync?: { entries: number; ms: number };
  private stopped = false;
  private watch?: { cancel(): Promise<void> };
  private queue: Promise<void> = Promise.resolve();
  private firstSync: Promise<void>;
  private resolveFirst!: () => void;
  private wake?: () => void;

  constructor(
    private readonly kv: Kv,
    readonly prefix: string,
    private readonly o: MirrorOptions<T>,
  ) {
    this.firstSync = new Promise((r) => {
      this.resolveFirst = r;
    });
  }

  /** Starts the list/watch loop; resolves after the first list was applied. */
  start(): Promise<void> {
    void this.loop();
    return this.firstSync;
  }

  /** Resolves once the copy has been listed at least once. */
  synced(): Promise<void> {
    return this.firstSync;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.watch?.cancel();
    await this.queue;
  }

  /** List again now (e.g. the session knows the store came back). */
  kick(): void {
    this.wake?.();
  }

  private async loop(): Promise<void> {
    let delay = this.o.retryMinMs ?? 200;
    while (!this.stopped) {
      let brokenP: Promise<Error>;
      try {
        const t0 = performance.now();
        const { items, revision } = await this.kv.list(this.prefix);
        if (this.stopped) return;
        this.applyList(
          items.map((i) => [i.key.slice(this.prefix.length), i.value]),
          revision,
        );
        void this.queue.then(() => {
          this.lastResync = { entries: items.length, ms: performance.now() - t0 };
        });
        let onBroken!: (e: Error) => void;
        brokenP = new Promise<Error>((r) => {
          onBroken = r;
        });
        this.watch = this.kv.watch(this.prefix, revision + 1, {
          events: (events, rev) => this.applyEvents(events, rev),
          broken: onBroken,
        });
        this.live = true;
        this.lastError = undefined;
        delay = this.o.retryMinMs ?? 200;
        this.resolveFirst();
      } catch (e) {
        this.live = false;
        this.lastError = (e as Error).message;
        await this.sleep(delay);
        delay = Math.min(delay * 2, this.o.retryMaxMs ?? 2_000);
        continue;
      }
      const err = await Promise.race([
        brokenP,
        new Promise<Error>((r) => {
          this.wake = () => r(new Error('stopped'));
        }),
      ]);
      this.live = false;
      if (this.stopped) return;
      this.lastError = err.message;
      this.o.log?.warn({ prefix: this.prefix, err: err.message }, 'cluster store watch broke; listing again when it answers');
      await this.watch?.cancel();
      await this.sleep(delay);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => {
      const t = setTimeout(r, ms);
      this.wake = () => {
        clearTimeout(t);
        r();
      };
    });
  }

  private applyList(entries: [string, string][], revision: number): void {
    const seen = new Set<string>();
    const change: MirrorChange<T> = { upserts: [], deletes: [], revision, resync: true };
    for (const [k, text] of entries) {
      seen.add(k);
      if (this.raw.get(k) === text) continue;
      this.setOne(k, text, change);
    }
    for (const k of [...this.raw.keys()]) {
      if (!seen.has(k)) {
        this.deleteOne(k, change);
      }
    }
    this.revision = revision;
    this.resyncs++;
    this.deliver(change);
  }

  private applyEvents(events: KvEvent[], revision: number): void {
    const change: MirrorChange<T> = { upserts: [], deletes: [], revision, resync: false };
    for (const e of events) {
      const k = e.key.slice(this.prefix.length);
      if (e.type === 'delete') this.deleteOne(k, change);
      else if (this.raw.get(k) !== e.value) this.setOne(k, e.value, change);
    }
    this.revision = Math.max(this.revision, revision);
    if (change.upserts.length || change.deletes.length) this.deliver(change);
  }

  private setOne(k: string, text: string, change: MirrorChange<T>): void {
    const v = this.o.decode(text, k);
    this.raw.set(k, text);
    if (v === undefined) {
      if (this.items.delete(k)) change.deletes.push(k);
      return;
    }
    const prev = this.items.get(k);
    this.items.set(k, v);
    if (prev === undefined || !(this.o.same?.(prev, v) ?? false)) change.upserts.push([k, v]);
  }

  private deleteOne(k: string, change: MirrorChange<T>): void {
    this.raw.delete(k);
    if (this.items.delete(k)) change.deletes.push(k);
  }

  private deliver(change: MirrorChange<T>): void {
    this.queue = this.queue
      .then(() => this.o.onChange(change))
      .catch((err) => {
        this.o.log?.warn({ prefix: this.prefix, err: (err as Error).message }, 'applying a cluster store change failed');
      });
  }

  /** Resolves when every change delivered so far has been applied. */
  settled(): Promise<void> {
    return this.queue;
  }
}
