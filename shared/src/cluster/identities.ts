// Cluster-wide security identities: the identity backend of an agent in cluster mode.
//
// Allocation is one etcd transaction: "if no identity has these labels and number N is free, write
// id/N -> labels, labels/<digest> -> N and this node's reference". Two nodes racing for the same label
// set: one transaction wins, the other sees the winner's number in its failure branch and uses it.
// Racing for the same number with different labels: the loser learns that number and proposes the
// next. So the same label set has the same number on every node, without a lock.
//
// References (refs/<id>/<node>) live under the node's lease: a dead node's references expire with
// it, and the operator deletes identities nobody references (after a grace period, in a transaction
// that checks the reference prefix is still empty). An identity this node uses is restored with its
// number if it ever disappears (e.g. deleted while this node could not reach the store).
import { MembraneError } from '../errors.ts';
import type { IdentityAllocator, IdentityBackend, IdentityRecord } from '../identity/allocator.ts';
import { formatLabels, type Labels } from '../identity/labels.ts';
import { isLeaseNotFound, KvUnavailableError } from '../kvstore/kv.ts';
import { decode, encode, type Layout } from '../kvstore/layout.ts';
import { PrefixMirror } from '../kvstore/mirror.ts';
import type { Session, SessionLog } from '../kvstore/session.ts';

export class IdentityUnavailableError extends MembraneError<'kvstore_unavailable'> {
  constructor(message: string) {
    super('kvstore_unavailable', message);
    this.name = 'IdentityUnavailableError';
  }
}

export interface ClusterIdentitiesOptions {
  session: Session;
  layout: Layout;
  node: string;
  /** How long a new label set may wait for the store before its endpoint fails (default 10 s). */
  allocateTimeoutMs?: number;
  log?: SessionLog;
}

export class ClusterIdentities implements IdentityBackend {
  readonly mirror: PrefixMirror<IdentityRecord>;
  /** Identities this node references (and keeps referencing through lease changes). */
  private readonly refs = new Set<number>();
  private allocator?: IdentityAllocator;
  private readonly learnListeners: ((ids: number[]) => void)[] = [];
  private readonly L: Layout;

  constructor(private readonly o: ClusterIdentitiesOptions) {
    this.L = o.layout;
    this.mirror = new PrefixMirror<IdentityRecord>(o.session.kv, o.layout.identityIds, {
      decode: (v, key) => {
        const r = decode<IdentityRecord>(v);
        return r && Number.isInteger(r.id) && String(r.id) === key && r.labels ? r : undefined;
      },
      onChange: (c) =>
        this.applyChange(
          c.upserts.map(([, r]) => r),
          c.deletes.map(Number),
        ),
      log: o.log,
    });
  }

  /** Connects the allocator the mirror feeds; resolves once the identities are listed. */
  async attach(allocator: IdentityAllocator): Promise<void> {
    this.allocator = allocator;
    for (const r of this.mirror.items.values()) allocator.learn(r);
    await this.mirror.start();
  }

  /** Called with identity numbers that appeared or changed (policy recompiles for remote peers). */
  onLearn(fn: (ids: number[]) => void): void {
    this.learnListeners.push(fn);
  }

  private applyChange(upserts: IdentityRecord[], deletes: number[]): void {
    const a = this.allocator;
    if (!a) return;
    for (const r of upserts) a.learn(r);
    for (const id of deletes) {
      if (a.forget(id)) continue;
      const r = a.record(id);
      if (r && this.refs.has(id)) void this.restore(r);
    }
    if (upserts.length) for (const fn of this.learnListeners) fn(upserts.map((r) => r.id));
  }

  // ---- IdentityBackend -------------------------------------------------------------------------

  async load(): Promise<IdentityRecord[]> {
    return []; // the mirror teaches the allocator (attach)
  }

  async create(labels: Labels, propose: () => number): Promise<IdentityRecord> {
    const deadline = Date.now() + (this.o.allocateTimeoutMs ?? 10_000);
    let lastErr: Error | undefined;
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      const lease = this.o.session.leaseId;
      if (!lease) {
        lastErr = new Error('this node has no lease while the store does not answer');
        await sleep(250);
        continue;
      }
      const record: IdentityRecord = { id: propose(), labels, createdAt: new Date().toISOString(), createdBy: this.o.node };
      const idKey = this.L.identityId(record.id);
      const labelsKey = this.L.identityLabels(labels);
      const refKey = this.L.identityRef(record.id, this.o.node);
      const ref = encode({ since: record.createdAt });
      try {
        const res = await this.o.session.kv.txn(
          [
            { key: labelsKey, target: 'version', result: '=', value: 0 },
            { key: idKey, target: 'version', result: '=', value: 0 },
          ],
          [
            { type: 'put', key: idKey, value: encode(record) },
            { type: 'put', key: labelsKey, value: String(record.id) },
            { type: 'put', key: refKey, value: ref, lease },
          ],
          [
            { type: 'get', key: labelsKey },
            { type: 'get', key: idKey },
          ],
        );
        this.o.session.contact();
        if (res.succeeded) {
          this.refs.add(record.id);
          this.o.session.adopt(refKey, ref);
          return record;
        }
        const [byLabels, byId] = res.gets;
        if (byLabels[0]) {
          const winner = await this.recordOf(Number(byLabels[0].value));
          if (winner) {
            this.use(winner);
            return winner;
          }
          continue; // labels key without its id key: a GC in flight; try again
        }
        const taken = byId[0] && decode<IdentityRecord>(byId[0].value);
        if (taken) this.allocator?.learn(taken);
      } catch (e) {
        lastErr = e as Error;
        if (isLeaseNotFound(e)) {
          // The node's lease expired (late keep-alives on a loaded node) or was revoked: not this
          // allocation's fault. The session grants a new one; the loop waits for it and tries again.
          this.o.session.leaseNotFound(lease, lastErr);
          continue;
        }
        if (!(e instanceof KvUnavailableError)) throw e;
        this.o.session.noContact(lastErr);
        await sleep(Math.min(250 * (attempt + 1), 1_000));
      }
    }
    throw new IdentityUnavailableError(
      `cannot allocate a security identity for labels ${formatLabels(labels)}: the cluster store (etcd at ${this.o.session.kv.endpoints.join(', ')}) ` +
        `did not answer within ${Math.round((this.o.allocateTimeoutMs ?? 10_000) / 1000)} s (last error: ${lastErr?.message ?? 'none'}); ` +
        'endpoints whose labels already have an identity can still be created; try again when it is back',
    );
  }

  use(record: IdentityRecord): void {
    if (this.refs.has(record.id)) return;
    this.refs.add(record.id);
    this.o.session.set(this.L.identityRef(record.id, this.o.node), encode({ since: new Date().toISOString() }));
  }

  async unused(record: IdentityRecord): Promise<boolean> {
    if (this.refs.delete(record.id)) this.o.session.delete(this.L.identityRef(record.id, this.o.node));
    return false; // still a cluster identity: only our reference went
  }

  /** Identity numbers this node references. */
  referenced(): number[] {
    return [...this.refs].sort((a, b) => a - b);
  }

  /** Deletes references an earlier run of this node left for identities it no longer uses. */
  reconcile(): Promise<number> {
    const suffix = `/${this.o.node}`;
    return this.o.session.reconcile(this.L.identityRefs, (key) => key.endsWith(suffix));
  }

  private async recordOf(id: number): Promise<IdentityRecord | undefined> {
    const known = this.allocator?.record(id) ?? this.mirror.items.get(String(id));
    if (known) return known;
    const it = await this.o.session.kv.get(this.L.identityId(id));
    const r = it && decode<IdentityRecord>(it.value);
    if (r) this.allocator?.learn(r);
    return r;
  }

  /** Puts back an identity this node uses that vanished from the store, with the same number. */
  private async restore(r: IdentityRecord): Promise<void> {
    const idKey = this.L.identityId(r.id);
    const labelsKey = this.L.identityLabels(r.labels);
    try {
      const res = await this.o.session.kv.txn(
        [
          { key: idKey, target: 'version', result: '=', value: 0 },
          { key: labelsKey, target: 'version', result: '=', value: 0 },
        ],
        [
          { type: 'put', key: idKey, value: encode(r) },
          { type: 'put', key: labelsKey, value: String(r.id) },
        ],
      );
      if (res.succeeded) this.o.log?.info({ identity: r.id }, 'restored an identity this node uses');
      else
        this.o.log?.warn(
          { identity: r.id, labels: formatLabels(r.labels) },
          'an identity this node uses was deleted and its number or labels taken since; endpoints keep the old number until they are recreated',
        );
    } catch (e) {
      this.o.log?.warn(
        { identity: r.id, err: (e as Error).message },
        'could not restore an identity; trying again on the next change',
      );
    }
  }

  stop(): Promise<void> {
    return this.mirror.stop();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
