// Label identities: one number per distinct identity-relevant label set, persisted so numbers stay
// the same across agent restarts (the pinned policy map and ipcache are keyed by them).
//
// Reference counting is by owner (an endpoint key): resolve() only finds or allocates, hold() makes an
// owner use an identity (replacing what it held), release() drops it. Splitting resolve from hold
// means a create that fails between the two leaks nothing that sweep() does not collect: an identity
// nobody holds is deleted once it has been unheld for `graceMs` (so an allocation in flight between
// resolve and hold is never collected under it).
import type { Store } from '../store/index.ts';
import { canonicalLabels, identityRelevant, type Labels } from './labels.ts';
import {
  FIRST_LABEL_IDENTITY, LAST_LABEL_IDENTITY, RESERVED, identityKind, isInitLabels, reservedLabels, type ReservedName,
} from './reserved.ts';

const STORE_PREFIX = 'identities';

interface IdentityRecord {
  id: number;
  labels: Labels;
  createdAt: string;
}

export interface IdentityView {
  id: number;
  kind: 'reserved' | 'endpoint' | 'cidr';
  labels: Labels;
  /** Owners (endpoints) holding it; reserved identities report 0. */
  refs: number;
}

export interface IdentityAllocatorOptions {
  store: Store;
  graceMs?: number;
  now?: () => number;
  /** Highest label identity to hand out (tests shrink it to exercise exhaustion). */
  lastId?: number;
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

  private constructor(private readonly store: Store, opts: IdentityAllocatorOptions) {
    this.graceMs = opts.graceMs ?? 60_000;
    this.now = opts.now ?? Date.now;
    this.lastId = opts.lastId ?? LAST_LABEL_IDENTITY;
  }

  static async open(opts: IdentityAllocatorOptions): Promise<IdentityAllocator> {
    const a = new IdentityAllocator(opts.store, opts);
    for (const { value } of await opts.store.list<IdentityRecord>(STORE_PREFIX)) {
      if (!Number.isInteger(value?.id) || identityKind(value.id) !== 'endpoint' || !value.labels) continue;
      a.byId.set(value.id, value);
      a.byKey.set(canonicalLabels(value.labels), value.id);
      a.unheldSince.set(value.id, a.now());
      a.nextHint = Math.max(a.nextHint, value.id + 1);
    }
    return a;
  }

  /** The identity of a label set, allocated (and persisted) on first use. Empty labels: init. */
  async resolve(labels: Labels): Promise<number> {
    const relevant = identityRelevant(labels);
    const reserved = reservedFor(relevant);
    if (reserved !== undefined) return reserved;
    const key = canonicalLabels(relevant);
    const known = this.byKey.get(key);
    if (known !== undefined) return known;
    const inflight = this.pending.get(key);
    if (inflight) return inflight;
    const id = this.pickFreeId();
    this.inFlightIds.add(id);
    const record: IdentityRecord = { id, labels: relevant, createdAt: new Date(this.now()).toISOString() };
    const p = this.store.put(`${STORE_PREFIX}/${id}`, record).then(() => {
      this.byId.set(id, record);
      this.byKey.set(key, id);
      this.unheldSince.set(id, this.now());
      return id;
    }).finally(() => {
      this.inFlightIds.delete(id);
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
    if (!set) this.holders.set(id, (set = new Set()));
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
      if (!record) { this.unheldSince.delete(id); continue; }
      await this.store.delete(`${STORE_PREFIX}/${id}`);
      this.byId.delete(id);
      this.byKey.delete(canonicalLabels(record.labels));
      this.unheldSince.delete(id);
      gone.push(id);
    }
    return gone;
  }

  /** Label identities (held or not yet swept) plus the reserved ones. */
  list(): IdentityView[] {
    const out: IdentityView[] = (Object.keys(RESERVED) as ReservedName[]).map((n) => ({
      id: RESERVED[n], kind: 'reserved' as const, labels: reservedLabels(n), refs: 0,
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
    // Monotonic first, so a freed number is not handed out again soon (flows name identities).
    for (let id = this.nextHint; id <= this.lastId; id++) {
      if (free(id)) { this.nextHint = id + 1; return id; }
    }
    for (let id = FIRST_LABEL_IDENTITY; id < this.nextHint && id <= this.lastId; id++) {
      if (free(id)) { this.nextHint = id + 1; return id; }
    }
    throw new Error(`no security identity left (${this.lastId - FIRST_LABEL_IDENTITY + 1} label sets in use)`);
  }
}

/** Empty labels mean "not known yet" (init); a lone reserved label names that reserved identity. */
function reservedFor(labels: Labels): number | undefined {
  if (isInitLabels(labels)) return RESERVED.init;
  const keys = Object.keys(labels);
  if (keys.length === 1 && keys[0].startsWith('reserved:')) {
    const name = keys[0].slice('reserved:'.length) as ReservedName;
    if (name in RESERVED) return RESERVED[name];
  }
  return undefined;
}
