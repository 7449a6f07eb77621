// FQDN identities: the identity of an address learned from DNS is the set of toFQDNs selectors its
// names match, plus the policy prefixes (toCIDR/toCIDRSet, excepts included) that contain it. So
//  * many addresses share one identity: a new address of a known name costs one ipcache write, no
//    policy map change (the entries for the identity exist already);
//  * the address's /32 (/128) ipcache entry, which overrides the prefixes around it, still carries
//    what those prefixes stood for: a CIDR rule selects the identity when its prefix is in the set and
//    none of its excepts is, `world` selects every FQDN identity (addresses of endpoints, the host and
//    other nodes never get one: the ipcache keeps theirs).
// Numbers come from their own node-local range (identity/reserved.ts). They are kept across restarts
// through the pinned ipcache (the engine seeds them like CIDR identities) and the table persisted with
// the name cache (fqdn/state.ts). Pure.
import { FIRST_FQDN_IDENTITY, LAST_FQDN_IDENTITY } from '../identity/reserved.ts';
import type { Labels } from '../identity/labels.ts';

export interface FqdnIdentity {
  id: number;
  /** Selector keys (fqdn/selector.ts selectorKey), sorted. */
  selectors: string[];
  /** Normalized policy prefixes containing the addresses, sorted. */
  prefixes: string[];
}

/** What the policy compiler asks of FQDN identities (compile.ts Universe). */
export interface FqdnPeers {
  /** Bumped on every change: compiled policy is reused while it stays. */
  readonly version: number;
  /** Identities whose addresses a toFQDNs selector (by key) selects. */
  select(selectorKey: string): number[];
  /** Identities inside `outer` and inside none of `except` (normalized prefixes). */
  within(outer: string, except: string[]): number[];
  all(): number[];
}

export const keyOf = (selectors: string[], prefixes: string[]): string => `${selectors.join('\n')}\n|\n${prefixes.join('\n')}`;

/** `fqdn:api.example.com` per selector (its text, without the trailing dot), `cidr:P` per prefix, world. */
export function fqdnLabels(i: Pick<FqdnIdentity, 'selectors' | 'prefixes'>): Labels {
  const out: Labels = {};
  for (const s of i.selectors) {
    const v = s.slice(s.indexOf(':') + 1);
    out[`fqdn:${v.length > 1 && v.endsWith('.') ? v.slice(0, -1) : v}`] = '';
  }
  for (const p of i.prefixes) out[`cidr:${p}`] = '';
  out['reserved:world'] = '';
  return out;
}

/** The table as it was (FqdnState's checkpoint). */
export interface FqdnIdentitiesSnapshot {
  byKey: Map<string, FqdnIdentity>;
  byId: Map<number, FqdnIdentity>;
  bySelector: Map<string, Set<number>>;
  next: number;
}

const LOG_LIMIT = 4096;

export class FqdnIdentities implements FqdnPeers {
  private byKey = new Map<string, FqdnIdentity>();
  private byId = new Map<number, FqdnIdentity>();
  private bySelector = new Map<string, Set<number>>();
  private next = FIRST_FQDN_IDENTITY;
  version = 0;
  /** Identities that came or went, with the version each change made (a compile against an older
   *  version re-resolves only the rules they can move: policy/fqdn-moves.ts). Complete from version
   *  `logFrom` on; bounded (trimmed from the front). */
  private log: { version: number; identity: FqdnIdentity }[] = [];
  private logFrom = 0;

  constructor(
    private readonly first = FIRST_FQDN_IDENTITY,
    private readonly last = LAST_FQDN_IDENTITY,
  ) {
    this.next = first;
  }

  /** The identity of a selector set and prefix set (both sorted), allocated on first use. `prefer`:
   *  a number to reuse if free (the pinned ipcache's, after a restart). */
  ensure(selectors: string[], prefixes: string[], prefer?: number): { identity: FqdnIdentity; created: boolean } {
    const key = keyOf(selectors, prefixes);
    const known = this.byKey.get(key);
    if (known) return { identity: known, created: false };
    const id =
      prefer !== undefined && prefer >= this.first && prefer <= this.last && !this.byId.has(prefer) ? prefer : this.allocate();
    const identity = { id, selectors, prefixes };
    this.add(key, identity);
    return { identity, created: true };
  }

  /** Adopts a persisted identity (ignored when its number or key is taken). */
  adopt(i: FqdnIdentity): boolean {
    const key = keyOf(i.selectors, i.prefixes);
    if (this.byKey.has(key) || this.byId.has(i.id) || i.id < this.first || i.id > this.last) return false;
    this.add(key, { id: i.id, selectors: [...i.selectors], prefixes: [...i.prefixes] });
    this.next = Math.max(this.next, i.id + 1);
    return true;
  }

  private add(key: string, i: FqdnIdentity): void {
    this.byKey.set(key, i);
    this.byId.set(i.id, i);
    for (const s of i.selectors) {
      let set = this.bySelector.get(s);
      if (!set) this.bySelector.set(s, (set = new Set()));
      set.add(i.id);
    }
    this.version++;
    this.logged(i);
  }

  private logged(i: FqdnIdentity): void {
    this.log.push({ version: this.version, identity: i });
    if (this.log.length > LOG_LIMIT) {
      const cut = this.log.length - LOG_LIMIT / 2;
      this.logFrom = this.log[cut - 1].version;
      this.log = this.log.slice(cut);
    }
  }

  /** The identities that came or went after version `from` up to `to`; undefined when the log does
   *  not reach back that far (or an undo came in between): then everything may have moved. */
  changesBetween(from: number, to: number): FqdnIdentity[] | undefined {
    if (from < this.logFrom || to > this.version || from > to) return undefined;
    const out: FqdnIdentity[] = [];
    for (const e of this.log) if (e.version > from && e.version <= to) out.push(e.identity);
    return out;
  }

  /** Drops every identity not in `used`; returns the dropped ones. */
  retain(used: Set<number>): FqdnIdentity[] {
    const gone: FqdnIdentity[] = [];
    for (const [key, i] of this.byKey) {
      if (used.has(i.id)) continue;
      this.byKey.delete(key);
      this.byId.delete(i.id);
      for (const s of i.selectors) this.bySelector.get(s)?.delete(i.id);
      gone.push(i);
    }
    if (gone.length) {
      this.version++;
      for (const i of gone) this.logged(i);
    }
    return gone;
  }

  /** A copy of the table (identities are never mutated, so they are shared). */
  snapshot(): FqdnIdentitiesSnapshot {
    const bySelector = new Map<string, Set<number>>();
    for (const [k, ids] of this.bySelector) bySelector.set(k, new Set(ids));
    return { byKey: new Map(this.byKey), byId: new Map(this.byId), bySelector, next: this.next };
  }

  /** Back to a snapshot, under a new version: what was compiled against the abandoned content (its
   *  versions) is never taken for this one. */
  restore(s: FqdnIdentitiesSnapshot): void {
    this.byKey = s.byKey;
    this.byId = s.byId;
    this.bySelector = s.bySelector;
    this.next = s.next;
    this.version++;
    this.log = [];
    this.logFrom = this.version;
  }

  get(id: number): FqdnIdentity | undefined {
    return this.byId.get(id);
  }

  list(): FqdnIdentity[] {
    return [...this.byId.values()].sort((a, b) => a.id - b.id);
  }

  labelsOf(id: number): Labels | undefined {
    const i = this.byId.get(id);
    return i ? fqdnLabels(i) : undefined;
  }

  select(selectorKey: string): number[] {
    return [...(this.bySelector.get(selectorKey) ?? [])];
  }

  within(outer: string, except: string[]): number[] {
    const out: number[] = [];
    for (const i of this.byId.values()) {
      if (i.prefixes.includes(outer) && !except.some((e) => i.prefixes.includes(e))) out.push(i.id);
    }
    return out;
  }

  all(): number[] {
    return [...this.byId.keys()];
  }

  private allocate(): number {
    for (let n = 0; n <= this.last - this.first; n++) {
      const id = this.next > this.last ? this.first : this.next;
      this.next = id + 1;
      if (!this.byId.has(id)) return id;
    }
    throw new Error('no FQDN identity left');
  }
}
