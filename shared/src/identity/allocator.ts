// Label identities: one number per distinct identity-relevant label set, persisted so numbers stay
// the same across agent restarts (the pinned policy map and ipcache are keyed by them).
//
// Reference counting is by owner (an endpoint key): resolve() only finds or allocates, hold() makes an
// owner use an identity (replacing what it held), release() drops it. Splitting resolve from hold
// means a create that fails between the two leaks nothing that sweep() does not collect: an identity
// nobody holds is given back once it has been unheld for `graceMs` (so an allocation in flight between
// resolve and hold is never collected under it).
//
// Where numbers live is the backend's business: the node's own store (single node, the default), or
// the cluster store, where the same label set gets the same number on every node (cluster/identities.ts).
import type { Store } from '../store/index.ts';
import { canonicalLabels, type Labels } from './labels.ts';
import { defaultLabelFilter, identityLabels, type LabelFilter } from '../labels/filter.ts';
import {
  FIRST_LABEL_IDENTITY,
  LAST_LABEL_IDENTITY,
  RESERVED,
  identityKind,
  reservedLabels,
  type IdentityKind,
  type ReservedName,
} from './reserved.ts';

const STORE_PREFIX = 'identities';

export interface IdentityRecord {
  id: number;
  labels: Labels;
  createdAt: string;
  /** Node that allocated it (cluster mode). */
  createdBy?: string;
}

export interface IdentityView {
  id: number;
  kind: IdentityKind;
  labels: Labels;
  /** Owners (endpoints) holding it; reserved identities report 0. */
  refs: number;
}

/** Where identities are kept. */
export interface IdentityBackend {
  /** Identities known when the allocator opens. */
  load(): Promise<IdentityRecord[]>;
  /** Makes `labels` an identity; `propose()` gives a number free as far as this node knows (call it
   *  again for another). Resolves with the record the backend holds, which in a cluster may carry the
   *  number another node chose first. Rejects with nothing persisted. */
  create(labels: Labels, propose: () => number): Promise<IdentityRecord>;
  /** This node uses a known identity (a cluster records its reference). Never throws. */
  use?(record: IdentityRecord): void;
  /** Nobody on this node held it for the grace period. true: forget it (deleted); false: it stays
   *  known (a cluster identity: only this node's reference went). */
  unused(record: IdentityRecord): Promise<boolean>;
}

/** The node's own store (single-node mode): one document per identity. */
export function storeBackend(store: Store, now: () => number = Date.now): IdentityBackend {
  return {
    async load() {
      return (await store.list<IdentityRecord>(STORE_PREFIX)).map((d) => d.value);
    },
    async create(labels, propose) {
      const record: IdentityRecord = { id: propose(), labels, createdAt: new Date(now()).toISOString() };
      await store.put(`${STORE_PREFIX}/${record.id}`, record);
      return record;
    },
    async unused(record) {
      await store.delete(`${STORE_PREFIX}/${record.id}`);
      return true;
    },
  };
}

export interface IdentityAllocatorOptions {
  /** The node's store (used when no backend is given). */
  store?: Store;
  backend?: IdentityBackend;
  graceMs?: number;
  now?: () => number;
  /** Highest label identity to hand out (tests shrink it to exercise exhaustion). */
  lastId?: number;
  /** Propose random free numbers (cluster mode: nodes allocating at once rarely propose the same
   *  number, so their transactions rarely collide) instead of the next one. */
  randomIds?: boolean;
  /** Which labels take part in an identity (--label-filter; default: labels/filter.ts). */
  labelFilter?: LabelFilter;
}

export class IdentityAllocator {
  private readonly byId = new Map<number, IdentityRecord>();
  private readonly byKey = new Map<string, number>();
  private readonly pending = new Map<string, Promise<number>>();
  private readonly inFlightIds = new Set<number>();
  private readonly holders = new Map<number, Set<string>>();
  private readonly heldBy = new Map<string, number>();
  private readonly unheldSince = new Map<number, number>();
  private nextHint = FIRST_LABEL_IDENTITY;
  private readonly graceMs: number;
  private readonly now: () => number;
  private readonly lastId: number;
  private readonly randomIds: boolean;
  private readonly labelFilter: LabelFilter;

  private readonly backend: IdentityBackend;

  private constructor(opts: IdentityAllocatorOptions) {
    this.graceMs = opts.graceMs ?? 60_000;
    this.now = opts.now ?? Date.now;
    this.lastId = opts.lastId ?? LAST_LABEL_IDENTITY;
    this.randomIds = opts.randomIds ?? false;
    this.labelFilter = opts.labelFilter ?? defaultLabelFilter;
    if (!opts.backend && !opts.store) throw new TypeError('IdentityAllocator needs a store or a backend');
    this.backend = opts.backend ?? storeBackend(opts.store!, this.now);
  }

  static async open(opts: IdentityAllocatorOptions): Promise<IdentityAllocator> {
    const a = new IdentityAllocator(opts);
    for (const value of await a.backend.load()) {
      if (!a.learn(value)) continue;
      a.unheldSince.set(value.id, a.now());
    }
    return a;
  }

  /** An identity that exists elsewhere (a cluster store change). false when the record is not one. */
  learn(value: IdentityRecord): boolean {
    if (!Number.isInteger(value?.id) || identityKind(value.id) !== 'endpoint' || !value.labels) return false;
    const prev = this.byId.get(value.id);
    if (prev) this.byKey.delete(canonicalLabels(prev.labels));
    this.byId.set(value.id, value);
    this.byKey.set(canonicalLabels(value.labels), value.id);
    this.nextHint = Math.max(this.nextHint, value.id + 1);
    return true;
  }

  /** An identity deleted elsewhere. Kept while an owner here holds it (the backend restores it). */
  forget(id: number): boolean {
    if (this.holders.has(id)) return false;
    const r = this.byId.get(id);
    if (!r) return false;
    this.byId.delete(id);
    if (this.byKey.get(canonicalLabels(r.labels)) === id) this.byKey.delete(canonicalLabels(r.labels));
    this.unheldSince.delete(id);
    return true;
  }

  /** The record of a label identity this node knows. */
  record(id: number): IdentityRecord | undefined {
    return this.byId.get(id);
  }

  /** The identity-relevant part of a label set (what its identity is made of). */
  relevant(labels: Labels): Labels {
    return identityLabels(labels, this.labelFilter);
  }

  /** The identity of a label set, allocated (and persisted) on first use. An empty set (a workload
   *  without labels) is a label set like any other; init is never resolved, only assigned to an
   *  endpoint whose labels are still being looked up. */
  async resolve(labels: Labels): Promise<number> {
    const relevant = this.relevant(labels);
    const reserved = reservedFor(relevant);
    if (reserved !== undefined) return reserved;
    const key = canonicalLabels(relevant);
    const known = this.byKey.get(key);
    if (known !== undefined) {
      const r = this.byId.get(known)!;
      if (!this.holders.has(known) && !this.unheldSince.has(known)) this.unheldSince.set(known, this.now());
      this.backend.use?.(r);
      return known;
    }
    const inflight = this.pending.get(key);
    if (inflight) return inflight;
    const proposed: number[] = [];
    const propose = () => {
      const id = this.pickFreeId();
      this.inFlightIds.add(id);
      proposed.push(id);
      return id;
    };
    const p = this.backend
      .create(relevant, propose)
      .then((record) => {
        this.learn(record);
        if (!this.holders.has(record.id)) this.unheldSince.set(record.id, this.now());
        return record.id;
      })
      .finally(() => {
        for (const id of proposed) this.inFlightIds.delete(id);
        this.pending.delete(key);
      });
    this.pending.set(key, p);
    return p;
  }

  /** Labels of an identity we know as a label identity or a reserved one. */
  labelsOf(id: number): Labels | undefined {
    const r = this.byId.get(id);
    if (r) return { ...r.labels };
    const name = (Object.keys(RESERVED) as ReservedName[]).find((n) => RESERVED[n] === id);
    return name ? reservedLabels(name) : undefined;
  }

  /** Owner now uses `id` (and no longer what it held before). */
  hold(owner: string, id: number): void {
    const prev = this.heldBy.get(owner);
    if (prev === id) return;
    if (prev !== undefined) this.drop(owner, prev);
    this.heldBy.set(owner, id);
    if (identityKind(id) !== 'endpoint') return;
    let set = this.holders.get(id);
    if (!set) {
      this.holders.set(id, (set = new Set()));
      const r = this.byId.get(id);
      if (r) this.backend.use?.(r);
    }
    set.add(owner);
    this.unheldSince.delete(id);
  }

  release(owner: string): void {
    const prev = this.heldBy.get(owner);
    if (prev === undefined) return;
    this.heldBy.delete(owner);
    this.drop(owner, prev);
  }

  heldIdentity(owner: string): number | undefined {
    return this.heldBy.get(owner);
  }

  private drop(owner: string, id: number): void {
    const set = this.holders.get(id);
    if (!set) return;
    set.delete(owner);
    if (set.size === 0) {
      this.holders.delete(id);
      this.unheldSince.set(id, this.now());
    }
  }

  /** Delete identities unheld for at least the grace period (all unheld ones with force). */
  async sweep(force = false): Promise<number[]> {
    const cutoff = this.now() - this.graceMs;
    const gone: number[] = [];
    for (const [id, since] of [...this.unheldSince]) {
      if (!force && since > cutoff) continue;
      if (this.holders.has(id)) continue;
      const record = this.byId.get(id);
      if (!record) {
        this.unheldSince.delete(id);
        continue;
      }
      const deleted = await this.backend.unused(record);
      this.unheldSince.delete(id);
      if (!deleted) continue;
      this.byId.delete(id);
      this.byKey.delete(canonicalLabels(record.labels));
      gone.push(id);
    }
    return gone;
  }

  /** Label identities (held or not yet swept) plus the reserved ones. */
  list(): IdentityView[] {
    const out: IdentityView[] = (Object.keys(RESERVED) as ReservedName[]).map((n) => ({
      id: RESERVED[n],
      kind: 'reserved' as const,
      labels: reservedLabels(n),
      refs: 0,
    }));
    for (const r of [...this.byId.values()].sort((a, b) => a.id - b.id)) {
      out.push({ id: r.id, kind: 'endpoint', labels: { ...r.labels }, refs: this.holders.get(r.id)?.size ?? 0 });
    }
    return out;
  }

  /** Label identities in use or allocated: the ones policy must compile entries for. */
  labelIdentities(): { id: number; labels: Labels }[] {
    return [...this.byId.values()].map((r) => ({ id: r.id, labels: r.labels }));
  }

  private pickFreeId(): number {
    const free = (id: number) => !this.byId.has(id) && !this.inFlightIds.has(id);
    if (this.randomIds) {
      // Within the first 64k numbers while they last (short numbers in flows, like Cilium's range).
      const top = Math.min(this.lastId, 65_535);
      for (let i = 0; i < 64; i++) {
        const id = FIRST_LABEL_IDENTITY + Math.floor(Math.random() * (top - FIRST_LABEL_IDENTITY + 1));
        if (free(id)) return id;
      }
    }
    // Monotonic first, so a freed number is not handed out again soon (flows name identities).
    for (let id = this.nextHint; id <= this.lastId; id++) {
      if (free(id)) {
        this.nextHint = id + 1;
        return id;
      }
    }
    for (let id = FIRST_LABEL_IDENTITY; id < this.nextHint && id <= this.lastId; id++) {
      if (free(id)) {
        this.nextHint = id + 1;
        return id;
      }
    }
    throw new Error(`no security identity left (${this.lastId - FIRST_LABEL_IDENTITY + 1} label sets in use)`);
  }
}

/** A lone reserved label names that reserved identity. */
function reservedFor(labels: Labels): number | undefined {
  const keys = Object.keys(labels);
  if (keys.length === 1 && keys[0].startsWith('reserved:')) {
    const name = keys[0].slice('reserved:'.length) as ReservedName;
    if (name in RESERVED) return RESERVED[name];
  }
  return undefined;
}
