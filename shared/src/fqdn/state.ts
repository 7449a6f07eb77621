// What the node knows from DNS and what it means for the datapath: the name cache, the toFQDNs
// selectors of the current policies, and for every learned address that some selector selects, its
// FQDN identity (identities.ts) and so its ipcache entry. The policy engine asks it for ipcache
// entries and compiler peers at every sync; the DNS proxy tells it what answers carried (learn), and
// the agent's upkeep what expired (expire). Pure: persistence and timers live in agent/dns.ts.
import { cidrContains, hostPrefix, normalizeIp, parseCidr, type Cidr } from '../net/index.ts';
import { NameCache, type EntryTuple } from './cache.ts';
import { FqdnIdentities, type FqdnIdentitiesSnapshot, type FqdnIdentity } from './identities.ts';
import { selectorKey, selectorMatcher, type FqdnSelector, type NameMatcher } from './selector.ts';

/** The name an address restored without its names is listed under (`fqdn cache list`). */
export const RESTORED_NAME = '(restored).';

export interface FqdnPersisted {
  entries: EntryTuple[];
  identities: FqdnIdentity[];
}

export interface LearnResult {
  /** ipcache prefixes whose FQDN identity changed (new, other, or none any more). */
  changed: string[];
  /** A new identity was made: the policy must be compiled for it. */
  newIdentity: boolean;
  /** New (name, address) pairs: what a restart must not forget. */
  newEntries: number;
}

/** What a policy change replaces: kept at its first change after checkpoint(). */
interface PolicySide {
  selectors: Map<string, NameMatcher>;
  selectorsKey: string;
  prefixes: Map<string, Cidr>;
  entries: Map<string, number>;
  identities: FqdnIdentitiesSnapshot;
}

export class FqdnState {
  readonly cache = new NameCache();
  readonly identities = new FqdnIdentities();
  private selectors = new Map<string, NameMatcher>();
  private selectorsKey = '';
  /** The policy prefixes as given last, parsed (compared as a set: no sort of 10,000 texts). */
  private prefixes = new Map<string, Cidr>();
  /** ipcache prefix -> FQDN identity, for addresses some selector selects. */
  private readonly entries = new Map<string, number>();
  /** Numbers found in the pinned ipcache at start: reused for the same addresses. */
  private readonly pinned = new Map<string, number>();
  /** Addresses restored without their names (see restore): the selectors their identity had. */
  private readonly orphanSelectors = new Map<string, string[]>();
  /** The records the policy side was last given (policy/desired.ts: an unchanged set is not walked
   *  again); taken back with it by undo(). */
  syncedTo: unknown;
  /** Since checkpoint(): the policy side before its first change, and syncedTo then. */
  private journal?: { saved?: PolicySide; syncedTo: unknown };

  constructor(readonly minTtl: number) {}

  /** The selectors and policy prefixes of the current policies. Recomputes every address when they changed. */
  setPolicy(selectors: FqdnSelector[], prefixes: string[]): void {
    const unique = new Set(prefixes);
    const removed = [...this.prefixes.keys()].filter((p) => !unique.has(p));
    this.changePolicy(
      selectors,
      [...unique].filter((p) => !this.prefixes.has(p)),
      removed,
    );
  }

  /** The same, given the prefixes that came and went since the last call (a change to one policy
   *  among 10,000 rules hands over one or two, not the 10,000). */
  changePolicy(selectors: FqdnSelector[], added: string[], removed: string[]): void {
    const keys = [...new Set(selectors.map(selectorKey))].sort();
    const sk = keys.join('\n');
    const samePrefixes = !removed.some((p) => this.prefixes.has(p)) && !added.some((p) => !this.prefixes.has(p));
    if (sk === this.selectorsKey && samePrefixes) return;
    this.save();
    for (const p of removed) this.prefixes.delete(p);
    for (const p of added) if (!this.prefixes.has(p)) this.prefixes.set(p, parseCidr(p));
    if (sk !== this.selectorsKey) this.selectors = new Map(selectors.map((s) => [selectorKey(s), selectorMatcher(s)]));
    this.selectorsKey = sk;
    this.entries.clear();
    for (const ip of this.cache.ips()) this.place(ip);
    this.retainUsed();
  }

  /** From here on, policy changes (setPolicy, changePolicy) can be taken back with undo() until
   *  keep(): a sync whose maps are refused must leave no identity of the refused policies behind
   *  (`identity list`, `policy trace`, the next DNS answer's ipcache entry). Spans one synchronous
   *  sync: learn and expire never run in between. Nothing is copied until the first change. */
  checkpoint(): void {
    this.journal = { syncedTo: this.syncedTo };
  }

  keep(): void {
    this.journal = undefined;
  }

  /** The policy side as it was at checkpoint(); the identity table under a new version. */
  undo(): void {
    const j = this.journal;
    if (!j) return;
    this.journal = undefined;
    this.syncedTo = j.syncedTo;
    const s = j.saved;
    if (!s) return;
    this.selectors = s.selectors;
    this.selectorsKey = s.selectorsKey;
    this.prefixes = s.prefixes;
    this.entries.clear();
    for (const [p, id] of s.entries) this.entries.set(p, id);
    this.identities.restore(s.identities);
  }

  private save(): void {
    if (!this.journal || this.journal.saved) return;
    this.journal.saved = {
      selectors: this.selectors, // replaced by a change, never edited
      selectorsKey: this.selectorsKey,
      prefixes: new Map(this.prefixes),
      entries: new Map(this.entries),
      identities: this.identities.snapshot(),
    };
  }

  /** What an answer taught: `names` are the query name and its CNAME chain, all for these addresses. */
  learn(endpoint: number, names: string[], ips: { ip: string; ttl: number }[], now: number): LearnResult {
    const before = this.identities.version;
    const changed: string[] = [];
    const fresh = this.cache.learn(
      endpoint,
      names,
      ips.map((x) => ({ ip: normalizeIp(x.ip), ttl: x.ttl })),
      now,
      this.minTtl,
    );
    for (const ip of fresh) {
      const p = this.place(ip);
      if (p) changed.push(p);
    }
    return { changed, newIdentity: this.identities.version !== before, newEntries: fresh.length };
  }

  /** Removes expired entries whose address no connection uses (`inUse`: normalized addresses). */
  expire(now: number, inUse: (ip: string) => boolean): { changed: string[]; removed: number } {
    const touched = new Set<string>();
    let removed = 0;
    for (const e of this.cache.expired(now)) {
      if (inUse(e.ip)) continue;
      if (this.cache.remove(e.name, e.ip)) {
        touched.add(e.ip);
        removed++;
      }
      if (e.name === RESTORED_NAME) this.orphanSelectors.delete(e.ip);
    }
    const changed: string[] = [];
    for (const ip of touched) {
      const p = this.place(ip);
      if (p) changed.push(p);
    }
    if (changed.length) this.retainUsed();
    return { changed, removed };
  }

  /** Recomputes one address's identity; returns its prefix when its ipcache entry changed. */
  private place(ip: string): string | undefined {
    const prefix = hostPrefix(ip);
    const names = this.cache.namesOf(ip);
    const keys: string[] = [];
    for (const [k, m] of this.selectors) if (names.some((n) => m(n))) keys.push(k);
    for (const k of this.orphanSelectors.get(ip) ?? []) if (this.selectors.has(k) && !keys.includes(k)) keys.push(k);
    const before = this.entries.get(prefix);
    if (!keys.length) {
      this.entries.delete(prefix);
      return before !== undefined ? prefix : undefined;
    }
    keys.sort();
    const family = ip.includes(':') ? 6 : 4;
    const within = [...this.prefixes]
      .filter(([, cidr]) => cidr.family === family && cidrContains(cidr, ip))
      .map(([text]) => text)
      .sort();
    const { identity } = this.identities.ensure(keys, within, this.pinned.get(prefix));
    this.entries.set(prefix, identity.id);
    return before !== identity.id ? prefix : undefined;
  }

  private retainUsed(): void {
    this.identities.retain(new Set(this.entries.values()));
  }

  /** Keys of the current selectors that select a (canonical) name. */
  selectorsMatching(name: string): string[] {
    return [...this.selectors]
      .filter(([, m]) => m(name))
      .map(([k]) => k)
      .sort();
  }

  /** prefix -> identity for the ipcache. */
  ipcacheEntries(): Map<string, number> {
    return this.entries;
  }

  entryOf(prefix: string): number | undefined {
    return this.entries.get(prefix);
  }

  // ---- persistence and restart --------------------------------------------------------------------

  /** Before the first sync after a start: what was persisted, and the FQDN entries of the pinned ipcache
   *  (addresses learned after the last save keep their identity when it was saved; see restorePinned). */
  restore(
    saved: FqdnPersisted | undefined,
    pinnedIpcache: Map<string, number>,
    isFqdnId: (id: number) => boolean,
    now: number,
    graceMs: number,
  ): { entries: number; orphans: number } {
    for (const i of saved?.identities ?? []) this.identities.adopt(i);
    for (const t of saved?.entries ?? []) this.cache.restore(t);
    let orphans = 0;
    for (const [prefix, id] of pinnedIpcache) {
      if (!isFqdnId(id)) continue;
      this.pinned.set(prefix, id);
      const ip = prefix.slice(0, prefix.indexOf('/'));
      if (this.cache.namesOf(ip).length) continue;
      // Learned after the last save: its names are unknown, but its identity says which selectors
      // chose it. Kept under a placeholder name with those selectors until the grace period ends.
      const identity = this.identities.get(id);
      if (!identity) continue;
      orphans++;
      this.cache.restore([RESTORED_NAME, ip, 0, now, now + graceMs, []]);
      this.orphanSelectors.set(ip, identity.selectors);
    }
    return { entries: this.cache.size.entries, orphans };
  }

  persisted(): FqdnPersisted {
    return { entries: this.cache.dump(), identities: this.identities.list() };
  }
}
