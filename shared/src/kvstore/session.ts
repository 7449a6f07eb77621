// A node's session with the cluster store: its lease (kept alive, granted again when lost) and the
// keys it owns under that lease (node record, identity references, ipcache entries). Owned keys are
// desired state: set()/delete() return at once and a writer brings the store in line whenever it
// answers: after an outage, after the lease was lost (everything is written again under the new
// lease), and after a restart (reconcile() deletes what an earlier run left and no longer wants).
import { isLeaseNotFound, type Kv, type Lease } from './kv.ts';

export interface SessionLog {
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
}

export interface SessionOptions {
  kv: Kv;
  leaseTtlSeconds: number;
  log?: SessionLog;
  /** How often the store's status is read for `membrane status` (default 5 s). */
  statusIntervalMs?: number;
}

export interface SessionStatus {
  endpoints: string[];
  connected: boolean;
  leaseId?: string;
  leaseTtlSeconds: number;
  /** Store revision at the last status read, and its version. */
  revision: number;
  version?: string;
  /** Milliseconds since the store last answered (undefined: never). */
  lastContactMs?: number;
  /** Owned keys not yet written (puts and deletes waiting for the store). */
  pendingWrites: number;
  lastError?: string;
}

export class Session {
  readonly kv: Kv;
  private lease?: Lease;
  private leaseGen = 0;
  private readonly desired = new Map<string, string>();
  /** Keys whose store content may differ from `desired` (value or absence). */
  private readonly dirty = new Set<string>();
  /** Keys of the transaction on its way to the store. */
  private readonly inflight = new Set<string>();
  private readonly writtenListeners: ((keys: string[]) => void)[] = [];
  private writing = false;
  private closed = false;
  private retryTimer?: NodeJS.Timeout;
  private statusTimer?: NodeJS.Timeout;
  private lastContact?: number;
  private storeRevision = 0;
  private storeVersion?: string;
  private lastError?: string;
  private readonly leaseListeners: ((leaseId: string) => void)[] = [];
  private readonly reconnectListeners: (() => void)[] = [];
  private readonly disconnectListeners: ((err: Error) => void)[] = [];
  private wasConnected = false;
  private everConnected = false;

  constructor(private readonly o: SessionOptions) {
    this.kv = o.kv;
  }

  /** Grants the first lease (retrying until the store answers or `timeoutMs` passes). */
  async start(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.newLease();
        break;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const every = this.o.statusIntervalMs ?? 5_000;
    this.statusTimer = setInterval(() => {
      void this.probe();
    }, every);
    this.statusTimer.unref();
    void this.probe();
  }

  get leaseId(): string | undefined {
    return this.lease?.id;
  }

  /** Called with the new lease id whenever a lease replaces a lost one. */
  onNewLease(fn: (leaseId: string) => void): void {
    this.leaseListeners.push(fn);
  }
  /** Called when the store answers again after it did not. */
  onReconnect(fn: () => void): void {
    this.reconnectListeners.push(fn);
  }

  /** Called when the store stops answering after it had answered (once per outage). */
  onDisconnect(fn: (err: Error) => void): void {
    this.disconnectListeners.push(fn);
  }

  private async newLease(): Promise<void> {
    const gen = ++this.leaseGen;
    const lease = await this.kv.grantLease(this.o.leaseTtlSeconds);
    if (this.closed) {
      lease.release();
      return;
    }
    this.lease = lease;
    this.contact();
    lease.onLost((err) => {
      if (gen === this.leaseGen) this.dropLease(lease, err);
    });
    // Everything we own is written again under this lease.
    for (const k of this.desired.keys()) this.dirty.add(k);
    for (const fn of this.leaseListeners) fn(lease.id);
    this.kickWriter();
  }

  /** The store answered a write under `leaseId` with "lease not found" (isLeaseNotFound): the lease
   *  expired or was revoked before the keep-alive noticed (it asks only every TTL/3). If it is still
   *  the current one, it is dropped and a new one granted at once, as when the keep-alive loses it;
   *  the caller retries under `leaseId` once the session has a lease again. */
  leaseNotFound(leaseId: string, err: Error): void {
    if (this.lease?.id === leaseId) this.dropLease(this.lease, err);
  }

  private dropLease(lease: Lease, err: Error): void {
    if (this.closed || this.lease !== lease) return;
    this.o.log?.warn(
      { lease: lease.id, err: err.message },
      'cluster store lease lost; granting a new one and writing every owned key again',
    );
    this.lease = undefined;
    lease.release();
    this.noContact(err);
    void this.regrant();
  }

  private async regrant(): Promise<void> {
    let delay = 200;
    while (!this.closed && !this.lease) {
      try {
        await this.newLease();
        this.o.log?.info({ lease: (this.lease as Lease | undefined)?.id }, 'cluster store lease granted again');
        return;
      } catch (e) {
        this.noContact(e as Error);
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 2_000);
      }
    }
  }

  /** This node wants `key` to hold `value` under its lease. */
  set(key: string, value: string): void {
    if (this.desired.get(key) === value && !this.dirty.has(key)) return;
    this.desired.set(key, value);
    this.dirty.add(key);
    this.kickWriter();
  }

  /** `key` was just written with `value` under the current lease by the caller's own transaction:
   *  own it (written again after a lease change) without writing it now. */
  adopt(key: string, value: string): void {
    this.desired.set(key, value);
  }

  /** This node wants `key` gone (only keys it owns). */
  delete(key: string): void {
    // Also for keys this run never set (left by an earlier one): deleting a missing key is harmless.
    this.desired.delete(key);
    this.dirty.add(key);
    this.kickWriter();
  }

  owns(key: string): boolean {
    return this.desired.has(key);
  }

  /** The store may not hold what this node wants for `key` yet (a write waits or is on its way). */
  pending(key: string): boolean {
    return this.dirty.has(key) || this.inflight.has(key);
  }

  /** Calls `fn` with the keys of each transaction the store took (their desired value or absence). */
  onWritten(fn: (keys: string[]) => void): void {
    this.writtenListeners.push(fn);
  }

  /** Deletes keys under `prefix` that `mine` claims and this run does not want (left by an earlier run). */
  async reconcile(prefix: string, mine: (key: string, value: string) => boolean): Promise<number> {
    const { items } = await this.kv.list(prefix);
    this.contact();
    let n = 0;
    for (const it of items) {
      if (this.desired.has(it.key) || !mine(it.key, it.value)) continue;
      this.dirty.add(it.key);
      n++;
    }
    this.kickWriter();
    return n;
  }

  /** Resolves when every owned key is written (or rejects after `timeoutMs`). */
  async flushed(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.dirty.size || this.writing) {
      if (Date.now() > deadline) throw new Error(`${this.dirty.size} cluster store writes still pending after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private kickWriter(): void {
    if (this.writing || this.closed || !this.dirty.size) return;
    void this.write();
  }

  private async write(): Promise<void> {
    this.writing = true;
    try {
      while (this.dirty.size && !this.closed) {
        const lease = this.lease;
        if (!lease) return; // regrant() kicks us again
        const batch = [...this.dirty].slice(0, 128);
        for (const k of batch) {
          this.dirty.delete(k);
          this.inflight.add(k);
        }
        try {
          // Chunks of independent writes in one transaction: one round trip, one fsync.
          const ops = batch.map((k) => {
            const v = this.desired.get(k);
            return v === undefined
              ? { type: 'delete' as const, key: k }
              : { type: 'put' as const, key: k, value: v, lease: lease.id };
          });
          await this.kv.txn([], ops);
          this.contact();
          for (const k of batch) this.inflight.delete(k);
          for (const fn of this.writtenListeners) fn(batch);
        } catch (e) {
          for (const k of batch) {
            this.inflight.delete(k);
            this.dirty.add(k);
          }
          if (isLeaseNotFound(e)) this.leaseNotFound(lease.id, e as Error);
          else this.noContact(e as Error);
          this.o.log?.warn({ err: (e as Error).message, pending: this.dirty.size }, 'cluster store writes failed; retrying');
          this.scheduleRetry();
          return;
        }
      }
    } finally {
      this.writing = false;
    }
    if (this.dirty.size) this.kickWriter();
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.kickWriter();
    }, 500);
    this.retryTimer.unref();
  }

  private async probe(): Promise<void> {
    try {
      const s = await this.kv.status();
      this.storeRevision = s.revision;
      this.storeVersion = s.version;
      this.contact();
    } catch (e) {
      this.noContact(e as Error);
    }
  }

  /** Every successful answer of the store comes through here. */
  contact(): void {
    this.lastContact = Date.now();
    this.lastError = undefined;
    if (!this.wasConnected) {
      this.wasConnected = true;
      if (this.everConnected) for (const fn of this.reconnectListeners) fn();
      this.everConnected = true;
      this.kickWriter();
    }
  }

  noContact(err: Error): void {
    this.lastError = err.message;
    if (!this.wasConnected) return;
    this.wasConnected = false;
    for (const fn of this.disconnectListeners) fn(err);
  }

  get connected(): boolean {
    return this.wasConnected;
  }

  status(): SessionStatus {
    return {
      endpoints: this.kv.endpoints,
      connected: this.wasConnected,
      leaseId: this.lease ? BigInt(this.lease.id).toString(16) : undefined,
      leaseTtlSeconds: this.o.leaseTtlSeconds,
      revision: this.storeRevision,
      version: this.storeVersion,
      lastContactMs: this.lastContact === undefined ? undefined : Date.now() - this.lastContact,
      pendingWrites: this.dirty.size,
      lastError: this.lastError,
    };
  }

  /** Stops writing; the lease is left to expire (a restarting agent takes its keys over) or revoked. */
  async close(opts: { revoke?: boolean } = {}): Promise<void> {
    this.closed = true;
    clearInterval(this.statusTimer);
    clearTimeout(this.retryTimer);
    const lease = this.lease;
    this.lease = undefined;
    if (lease) {
      if (opts.revoke) await lease.revoke().catch(() => lease.release());
      else lease.release();
    }
  }
}
