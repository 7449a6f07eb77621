// The cluster store as the rest of Membrane sees it: a small typed interface over etcd v3 (keys,
// revisions, transactions with compares, prefix watches from a revision, leases). The etcd client
// behind it (etcd.ts) is loaded only in cluster mode.
import { MembraneError } from '../errors.ts';

export interface KvItem {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  /** Lease id in hex; '0' when the key has none. */
  lease: string;
}

export interface KvEvent {
  type: 'put' | 'delete';
  key: string;
  /** Empty for a delete. */
  value: string;
  modRevision: number;
}

/** One condition of a transaction. `prefix: true` makes it hold for every key under `key` (and
 *  vacuously for none: "version = 0 over a prefix" means "no key under it"). */
export interface Compare {
  key: string;
  prefix?: boolean;
  target: 'version' | 'create' | 'mod' | 'value' | 'lease';
  result: '=' | '!=' | '<' | '>';
  value: number | string;
}

export type Op =
  | { type: 'put'; key: string; value: string; lease?: string }
  | { type: 'delete'; key: string; prefix?: boolean }
  | { type: 'get'; key: string; prefix?: boolean };

export interface TxnResult {
  succeeded: boolean;
  revision: number;
  /** Items of each 'get' op of the branch that ran, in order. */
  gets: KvItem[][];
}

export interface WatchHandlers {
  /** Events of one revision or a batch of them, in order; `revision` is the store's revision then. */
  events(events: KvEvent[], revision: number): void;
  /** The watch broke (store unreachable, stream ended, history compacted): it is cancelled already;
   *  the caller lists again and watches from there. Called at most once. */
  broken(err: Error): void;
}

export interface WatchHandle {
  cancel(): Promise<void>;
}

export interface Lease {
  /** Hex id as etcd shows it. */
  readonly id: string;
  /** Called once when the lease is gone (expired while we could not reach the store, or revoked). */
  onLost(fn: (err: Error) => void): void;
  /** Stops keeping it alive; the keys attached expire after the TTL. */
  release(): void;
  /** Deletes the lease and every key attached to it now. */
  revoke(): Promise<void>;
}

export interface KvStatus {
  revision: number;
  version: string;
  leader: string;
  dbSize: number;
}

export interface Kv {
  readonly endpoints: string[];
  get(key: string): Promise<KvItem | undefined>;
  /** Every key under `prefix` and the store revision the read saw. */
  list(prefix: string, opts?: { keysOnly?: boolean }): Promise<{ items: KvItem[]; revision: number }>;
  put(key: string, value: string, opts?: { lease?: string }): Promise<number>;
  /** Number of keys deleted. */
  delete(key: string, opts?: { prefix?: boolean }): Promise<number>;
  txn(compare: Compare[], success: Op[], failure?: Op[]): Promise<TxnResult>;
  /** Watch a prefix from `fromRevision` (inclusive). */
  watch(prefix: string, fromRevision: number, handlers: WatchHandlers): WatchHandle;
  grantLease(ttlSeconds: number): Promise<Lease>;
  status(): Promise<KvStatus>;
  close(): void;
}

/** etcd's answer to a write under a lease it no longer has: expired while the keep-alives were late
 *  (a loaded node), or revoked. Not an outage: the writer needs a new lease, then may retry. */
export function isLeaseNotFound(e: unknown): boolean {
  return /requested lease not found/i.test(String((e as Error | undefined)?.message ?? e));
}

/** The store did not answer in time or is unreachable: the operation may be retried later. */
export class KvUnavailableError extends MembraneError<'kvstore_unavailable'> {
  constructor(message: string, cause?: unknown) {
    super('kvstore_unavailable', message, { cause });
    this.name = 'KvUnavailableError';
  }
}

export interface KvOptions {
  endpoints: string[];
  /** TLS: CA bundle, client certificate and key (PEM file contents). */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  /** Deadline of every unary call (default 5 s). Streams (watch, keepalive) have none. */
  timeoutMs?: number;
}

/** Loads the etcd client only when cluster mode asks for it (the single-node path never pays). */
export async function connectEtcd(opts: KvOptions): Promise<Kv> {
  const { EtcdKv } = await import('./etcd.ts');
  return new EtcdKv(opts);
}

export function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i] < 0xff) {
      const out = b.subarray(0, i + 1);
      out[i]++;
      return out;
    }
  }
  return Buffer.from([0]); // every key
}
