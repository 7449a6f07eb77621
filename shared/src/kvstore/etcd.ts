// Kv over etcd v3 with the `etcd3` package (grpc-js underneath; see the README for why this client).
// etcd3 loads its .proto files next to its own code, so the bundles keep it external (build.mjs).
// Every unary call has a deadline, so an unreachable store surfaces as KvUnavailableError in bounded
// time instead of a hang; watches and lease keep-alives are streams and report breakage instead.
import * as etcd3 from 'etcd3';
import type { Etcd3 as Etcd3Type, IOptions, IKeyValue, IRequestOp, ICompare, Watcher } from 'etcd3';
import * as cockatiel from 'cockatiel';
import {
  KvUnavailableError,
  prefixEnd,
  type Compare,
  type Kv,
  type KvEvent,
  type KvItem,
  type KvOptions,
  type KvStatus,
  type Lease,
  type Op,
  type TxnResult,
  type WatchHandle,
  type WatchHandlers,
} from './kv.ts';

const TARGET = { version: 'Version', create: 'Create', mod: 'Mod', value: 'Value', lease: 'Lease' } as const;
const RESULT = { '=': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const;
const FIELD = { version: 'version', create: 'create_revision', mod: 'mod_revision', value: 'value', lease: 'lease' } as const;

export class EtcdKv implements Kv {
  readonly endpoints: string[];
  private readonly client: Etcd3Type;
  private readonly timeoutMs: number;
  /** Leases granted through this client: close() stops keeping them alive. */
  private readonly leases = new Set<{ release(): void }>();

  constructor(opts: KvOptions) {
    if (!opts.endpoints.length) throw new RangeError('kvstore: no endpoint given');
    this.endpoints = opts.endpoints;
    this.timeoutMs = opts.timeoutMs ?? 5_000;
    const secure = opts.endpoints.some((e) => e.startsWith('https://'));
    if (secure && !opts.tls) throw new RangeError('kvstore: https endpoints need --kvstore-ca');
    const o: IOptions = {
      hosts: opts.endpoints,
      ...(opts.tls ? { credentials: { rootCertificate: opts.tls.ca, privateKey: opts.tls.key, certChain: opts.tls.cert } } : {}),
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + this.timeoutMs }),
      faultHandling: {
        // A member that failed three times in a row is skipped for a second, then tried again:
        // with one member that second is all a recovered etcd waits for us.
        host: () =>
          cockatiel.circuitBreaker(cockatiel.handleWhen(etcd3.isRecoverableError), {
            halfOpenAfter: 1_000,
            breaker: new cockatiel.ConsecutiveBreaker(3),
          }),
        global: cockatiel.retry(cockatiel.handleWhen(etcd3.isRecoverableError), { maxAttempts: opts.endpoints.length }),
        // etcd3 uses this as a backoff factory (its type says otherwise).
        watchBackoff: new cockatiel.ExponentialBackoff({ initialDelay: 200, maxDelay: 2_000 }) as never,
      },
      grpcOptions: {
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5_000,
        'grpc.initial_reconnect_backoff_ms': 200,
        'grpc.max_reconnect_backoff_ms': 2_000,
      },
    };
    this.client = new etcd3.Etcd3(o);
  }

  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw unavailable(what, e, this.endpoints);
    }
  }

  async get(key: string): Promise<KvItem | undefined> {
    const res = await this.call(`get ${key}`, () => this.client.kv.range({ key: Buffer.from(key) }));
    return res.kvs[0] ? item(res.kvs[0]) : undefined;
  }

  async list(prefix: string, opts: { keysOnly?: boolean } = {}): Promise<{ items: KvItem[]; revision: number }> {
    const res = await this.call(`list ${prefix}`, () =>
      this.client.kv.range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix), keys_only: opts.keysOnly }),
    );
    return { items: res.kvs.map(item), revision: Number(res.header.revision) };
  }

  async put(key: string, value: string, opts: { lease?: string } = {}): Promise<number> {
    const res = await this.call(`put ${key}`, () =>
      this.client.kv.put({ key: Buffer.from(key), value: Buffer.from(value), lease: opts.lease }),
    );
    return Number(res.header.revision);
  }

  async delete(key: string, opts: { prefix?: boolean } = {}): Promise<number> {
    const res = await this.call(`delete ${key}`, () =>
      this.client.kv.deleteRange({ key: Buffer.from(key), ...(opts.prefix ? { range_end: prefixEnd(key) } : {}) }),
    );
    return Number(res.deleted);
  }

  async txn(compare: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    const res = await this.call(`transaction on ${compare[0]?.key ?? success[0]?.key}`, () =>
      this.client.kv.txn({
        compare: compare.map(toCompare),
        success: success.map(toRequestOp),
        failure: failure.map(toRequestOp),
      }),
    );
    const ops = res.succeeded ? success : failure;
    const gets: KvItem[][] = [];
    res.responses.forEach((r, i) => {
      if (ops[i]?.type === 'get') gets.push((r.response_range?.kvs ?? []).map(item));
    });
    return { succeeded: res.succeeded, revision: Number(res.header.revision), gets };
  }

  watch(prefix: string, fromRevision: number, h: WatchHandlers): WatchHandle {
    const w: Watcher = this.client.watch().prefix(prefix).startRevision(String(fromRevision)).watcher();
    let done = false;
    const cancel = async () => {
      if (!done) {
        done = true;
      }
      w.removeAllListeners();
      w.on('error', () => undefined);
      await w.cancel().catch(() => undefined);
    };
    const broken = (err: Error) => {
      if (done) return;
      done = true;
      w.removeAllListeners();
      w.on('error', () => undefined);
      void w.cancel().catch(() => undefined);
      h.broken(err);
    };
    w.on('data', (res) => {
      if (done || !res.events?.length) return;
      const events: KvEvent[] = res.events.map((e) => ({
        type: e.type === 'Delete' || (e.type as unknown) === 1 ? 'delete' : 'put',
        key: e.kv.key.toString(),
        value: e.kv.value?.toString() ?? '',
        modRevision: Number(e.kv.mod_revision),
      }));
      h.events(events, Number(res.header.revision));
    });
    w.on('disconnected', (err) => broken(err ?? new Error('watch disconnected')));
    w.on('error', (err) => broken(err));
    w.on('end', () => broken(new Error('watch ended')));
    return { cancel };
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    const l = this.client.lease(ttlSeconds, { autoKeepAlive: true });
    this.leases.add(l);
    let lostFns: ((e: Error) => void)[] = [];
    let lostErr: Error | undefined;
    l.on('lost', (err) => {
      lostErr = err;
      for (const fn of lostFns) fn(err);
      lostFns = [];
    });
    let id: string;
    try {
      id = await withTimeout(l.grant(), this.timeoutMs, 'lease grant');
    } catch (e) {
      l.release();
      throw unavailable('lease grant', e, this.endpoints);
    }
    return {
      id,
      onLost: (fn) => {
        if (lostErr) fn(lostErr);
        else lostFns.push(fn);
      },
      release: () => l.release(),
      revoke: () => this.call('lease revoke', () => withTimeout(l.revoke(), this.timeoutMs, 'lease revoke')),
    };
  }

  async status(): Promise<KvStatus> {
    const s = await this.call('status', () => this.client.maintenance.status());
    return { revision: Number(s.header.revision), version: s.version, leader: String(s.leader), dbSize: Number(s.dbSize) };
  }

  close(): void {
    for (const l of this.leases) l.release();
    this.leases.clear();
    this.client.close();
  }
}

function item(kv: IKeyValue): KvItem {
  return {
    key: kv.key.toString(),
    value: kv.value?.toString() ?? '',
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    lease: String(kv.lease ?? '0'),
  };
}

function toCompare(c: Compare): ICompare {
  const out: ICompare = { key: Buffer.from(c.key), target: TARGET[c.target], result: RESULT[c.result] };
  if (c.prefix) out.range_end = prefixEnd(c.key);
  (out as Record<string, unknown>)[FIELD[c.target]] = c.target === 'value' ? Buffer.from(String(c.value)) : String(c.value);
  return out;
}

function toRequestOp(op: Op): IRequestOp {
  const key = Buffer.from(op.key);
  switch (op.type) {
    case 'put':
      return { request_put: { key, value: Buffer.from(op.value), lease: op.lease } };
    case 'delete':
      return { request_delete_range: { key, ...(op.prefix ? { range_end: prefixEnd(op.key) } : {}) } };
    case 'get':
      return { request_range: { key, ...(op.prefix ? { range_end: prefixEnd(op.key) } : {}) } };
  }
}

function unavailable(what: string, e: unknown, endpoints: string[]): Error {
  if (e instanceof KvUnavailableError) return e;
  const err = e as Error;
  // Answers of a reachable etcd that say no (bad lease, compacted, ...) are not outages.
  const outage =
    err instanceof cockatiel.BrokenCircuitError ||
    err instanceof etcd3.GRPCDeadlineExceededError ||
    etcd3.isRecoverableError(err) ||
    /deadline|timed out|UNAVAILABLE|ECONNREFUSED|circuit breaker/i.test(`${err?.name} ${err?.message}`);
  if (err && !outage) return err;
  return new KvUnavailableError(
    `the cluster store (etcd at ${endpoints.join(', ')}) did not answer: ${what}: ${err?.message ?? err}`,
    e,
  );
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]);
}
