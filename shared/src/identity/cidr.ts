// CIDR identities: one number per prefix that some policy names (or excepts), so the ipcache LPM trie
// can tell them apart. Not persisted in the store: the pinned ipcache already holds prefix -> number,
// and the agent seeds this table from it on start (numbers stay stable across restarts without an
// fsync per prefix when 10,000 CIDR rules are imported). Pure.
//
// The nodes' own addresses get none (hide()), nor the pods' that a policy names, nor the addresses
// DNS taught (toFQDNs) that one names: the ipcache holds them as the host, remote-node, the pod's or
// the FQDN identity whatever a policy says (an FQDN identity carries the policy prefixes holding its
// addresses, so the CIDR rule selects it instead), so a CIDR identity for one would reach no ipcache
// entry, and the restart's seed (which reads the ipcache) could not find its number again: every
// restart renumbered it and rewrote the policy entries of the rules naming it, and
// the world rule's, for entries no packet can match. As in Cilium, a CIDR rule does not select nodes
// or pods; `toEntities: [host]` and the pod's labels do.
import { cidrCovers, cidrLast, normalizeCidr, parseCidr, type Cidr } from '../net/index.ts';
import { FIRST_CIDR_IDENTITY, LAST_CIDR_IDENTITY } from './reserved.ts';

export interface CidrEntry {
  cidr: Cidr;
  text: string;
  id: number;
}

export class CidrIdentities {
  private readonly byText = new Map<string, CidrEntry>();
  private readonly byId = new Map<number, CidrEntry>();
  private next = FIRST_CIDR_IDENTITY;
  /** Sorted (family, base, prefix) index, rebuilt lazily after changes. */
  private sorted: CidrEntry[] | null = null;
  /** Bumped on every change (compiled policy is reused while it stays the same). */
  version = 0;
  /** The prefixes the last sync added or removed, and the versions it went from and to (a compile
   *  against `from` re-resolves only the rules these can move: policy/cidr-moves.ts). Any other
   *  change (a seed, an undo) leaves it naming older versions. */
  lastChange?: { from: number; to: number; cidrs: Cidr[] };
  /** What the table was last synced to (a Set, or the token naming a version of one): syncing to the
   *  very same again changes nothing. */
  private syncedTo?: unknown;

  /** Prefixes that get no identity (the nodes' and named pods' addresses, normalized), and their sorted text. */
  private hidden = new Set<string>();
  private hiddenKey = '';
  /** What hide() was last given, as given. */
  private hiddenFrom?: string[];
  /** Set by hide() until the next sync. */
  private hideChanged = false;
  /** The version a sync after hide() changed the table to: a host prefix's identity came or went
   *  with its rule unchanged, which cidr-moves.ts and peer-deps.ts take never to happen otherwise
   *  (compiles against an older version resolve every CIDR rule again: hiddenSince). */
  private hideVersion = -1;

  /** What the syncs since checkpoint() changed, to take back (a sync whose result is abandoned). */
  private journal?: {
    added: CidrEntry[];
    removed: CidrEntry[];
    next: number;
    syncedTo?: unknown;
    hidden: Set<string>;
    hiddenKey: string;
  };

  /** From here on, syncs can be taken back with undo() until keep(): a sync that may be abandoned
   *  works on the table itself, not on a copy of 10,000 prefixes. */
  checkpoint(): void {
    this.journal = {
      added: [],
      removed: [],
      next: this.next,
      syncedTo: this.syncedTo,
      hidden: this.hidden,
      hiddenKey: this.hiddenKey,
    };
  }

  keep(): void {
    this.journal = undefined;
  }

  /** The table as it was at checkpoint(), under a new version (compiles against the abandoned
   *  content are not taken for compiles against this one). */
  undo(): void {
    const j = this.journal;
    if (!j) return;
    this.journal = undefined;
    for (const e of j.added) {
      if (this.byText.get(e.text) !== e) continue;
      this.byText.delete(e.text);
      this.byId.delete(e.id);
    }
    for (const e of j.removed) {
      this.byText.set(e.text, e);
      this.byId.set(e.id, e);
    }
    this.next = j.next;
    this.syncedTo = j.syncedTo;
    const unhid = this.hiddenKey !== j.hiddenKey;
    this.hidden = j.hidden;
    this.hiddenKey = j.hiddenKey;
    if (unhid) this.hiddenFrom = undefined; // the next hide() of the same addresses hides them again
    this.hideChanged = false;
    this.sorted = null;
    this.version++;
    if (unhid) this.hideVersion = this.version;
  }

  /** Adopt a number found in the pinned ipcache. Ignores conflicts (the table wins over the pin). */
  seed(prefix: string, id: number): void {
    const text = normalizeCidr(prefix);
    if (this.byText.has(text) || this.byId.has(id) || id < FIRST_CIDR_IDENTITY || id > LAST_CIDR_IDENTITY) return;
    const e = { cidr: parseCidr(text), text, id };
    this.byText.set(text, e);
    this.byId.set(id, e);
    this.next = Math.max(this.next, id + 1);
    this.sorted = null;
    this.syncedTo = undefined;
    this.version++;
  }

  /** The nodes' addresses and the named pods' and DNS-taught ones (bare or as prefixes): the next
   *  sync gives them no identity (drops the ones they have) and gives one back to a prefix that is no
   *  longer among them. True when that changes what is hidden. */
  hide(addresses: string[]): boolean {
    // The same addresses as last time (every sync hands them): no 1,000 nodes' addresses normalized again.
    const from = this.hiddenFrom;
    if (from && from.length === addresses.length && from.every((a, i) => a === addresses[i])) return false;
    this.hiddenFrom = [...addresses];
    const texts = addresses.map(normalizeCidr).sort();
    const key = texts.join();
    if (key === this.hiddenKey) return false;
    this.hidden = new Set(texts);
    this.hiddenKey = key;
    this.syncedTo = undefined; // the same prefixes now mean another table: a full sync
    this.hideChanged = true;
    return true;
  }

  /** Did a host prefix's identity come or go (hide()) since `version`? */
  hiddenSince(version: number): boolean {
    return this.hideVersion > version;
  }

  /** Whether hide() keeps `prefix` (normalized) out of the table. */
  hides(prefix: string): boolean {
    return this.hidden.has(prefix);
  }

  /** Those of `prefixes` (normalized) that hide() keeps out of the table. */
  hiddenAmong(prefixes: Set<string>): string[] {
    return [...this.hidden].filter((h) => prefixes.has(h));
  }

  /** Make the table hold exactly `prefixes` (but the hidden ones): keep known numbers, allocate new
   *  ones, drop the rest. `token` names this content (default: a Set passed names itself, and must not change afterwards):
   *  the same token again is taken as no change (an endpoint's sync does not walk 10,000 prefixes
   *  that the policies did not change); `delta.from` is the token of the content it starts from. */
  sync(
    prefixes: Iterable<string>,
    delta?: { from: unknown; added: string[]; removed: string[] },
    token: unknown = prefixes instanceof Set ? prefixes : undefined,
  ): { added: CidrEntry[]; removed: CidrEntry[] } {
    if (token !== undefined && token === this.syncedTo) return { added: [], removed: [] };
    if (delta && prefixes instanceof Set && delta.from === this.syncedTo) {
      const r = this.syncDelta(prefixes, delta, token);
      if (r) return r;
    }
    const want = new Set<string>();
    // Policies hold normalized text already: only unknown prefixes pay for normalization.
    for (const p of prefixes) want.add(this.byText.has(p) ? p : normalizeCidr(p));
    for (const h of this.hidden) want.delete(h);
    const removed: CidrEntry[] = [];
    for (const [text, e] of this.byText) {
      if (!want.has(text)) {
        this.byText.delete(text);
        this.byId.delete(e.id);
        removed.push(e);
      }
    }
    return this.settle(this.addNew(want), removed, token);
  }

  /** The same from the set synced last and what changed since (policy text holds normalized
   *  prefixes; anything else takes the full sync). undefined: not applicable. */
  private syncDelta(
    prefixes: Set<string>,
    delta: { added: string[]; removed: string[] },
    token: unknown,
  ): { added: CidrEntry[]; removed: CidrEntry[] } | undefined {
    if ([...delta.added, ...delta.removed].some((p) => normalizeCidr(p) !== p)) return undefined;
    const removed: CidrEntry[] = [];
    for (const text of delta.removed) {
      const e = this.byText.get(text);
      if (!e || prefixes.has(text)) continue;
      this.byText.delete(text);
      this.byId.delete(e.id);
      removed.push(e);
    }
    return this.settle(this.addNew(delta.added), removed, token);
  }

  /** Numbers for the normalized prefixes not in the table yet. */
  private addNew(texts: Iterable<string>): CidrEntry[] {
    const added: CidrEntry[] = [];
    for (const text of texts) {
      if (this.byText.has(text) || this.hidden.has(text)) continue;
      const e = { cidr: parseCidr(text), text, id: this.allocate() };
      this.byText.set(text, e);
      this.byId.set(e.id, e);
      added.push(e);
    }
    return added;
  }

  /** Ends a sync: a changed table gets a new version (and its sorted view is rebuilt when asked). */
  private settle(added: CidrEntry[], removed: CidrEntry[], syncedTo: unknown): { added: CidrEntry[]; removed: CidrEntry[] } {
    if (this.journal) {
      this.journal.added.push(...added);
      this.journal.removed.push(...removed);
    }
    if (added.length || removed.length) {
      this.sorted = null;
      const from = this.version++;
      if (this.hideChanged) this.hideVersion = this.version;
      else this.lastChange = { from, to: this.version, cidrs: [...added, ...removed].map((e) => e.cidr) };
    }
    this.hideChanged = false;
    this.syncedTo = syncedTo;
    return { added, removed };
  }

  idOf(prefix: string): number | undefined {
    return this.byText.get(normalizeCidr(prefix))?.id;
  }

  prefixOf(id: number): string | undefined {
    return this.byId.get(id)?.text;
  }

  entries(): CidrEntry[] {
    return [...this.byText.values()];
  }

  /** Identities of every known prefix inside `outer` and inside none of `except`. */
  within(outer: string, except: string[] = []): number[] {
    const known = this.byText.get(outer);
    // A host prefix contains only itself (the common case of thousands of /32 rules).
    if (known && known.cidr.prefix === known.cidr.bits) return except.length ? [] : [known.id];
    const o = known?.cidr ?? parseCidr(outer);
    const ex = except.map((e) => parseCidr(e));
    const index = this.index();
    const out: number[] = [];
    for (let i = lowerBound(index, o); i < index.length; i++) {
      const e = index[i];
      if (e.cidr.family !== o.family || e.cidr.base > cidrLast(o)) break;
      if (e.cidr.prefix < o.prefix) continue;
      if (ex.some((x) => cidrCovers(x, e.cidr))) continue;
      out.push(e.id);
    }
    return out;
  }

  private index(): CidrEntry[] {
    if (!this.sorted) this.sorted = [...this.byText.values()].sort(compare);
    return this.sorted;
  }

  private allocate(): number {
    for (let n = 0; n <= LAST_CIDR_IDENTITY - FIRST_CIDR_IDENTITY; n++) {
      const id = this.next > LAST_CIDR_IDENTITY ? FIRST_CIDR_IDENTITY : this.next;
      this.next = id + 1;
      if (!this.byId.has(id)) return id;
    }
    throw new Error('no CIDR identity left');
  }
}

function compare(a: CidrEntry, b: CidrEntry): number {
  if (a.cidr.family !== b.cidr.family) return a.cidr.family - b.cidr.family;
  if (a.cidr.base !== b.cidr.base) return a.cidr.base < b.cidr.base ? -1 : 1;
  return a.cidr.prefix - b.cidr.prefix;
}

function lowerBound(index: CidrEntry[], o: Cidr): number {
  let lo = 0,
    hi = index.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const e = index[mid].cidr;
    const before = e.family < o.family || (e.family === o.family && e.base < o.base);
    if (before) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
