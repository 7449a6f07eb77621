// Policies -> the policy map content for one label set, per direction. Pure. The table and its
// deny-correct closure are closure.ts's; this file decides which rules select a label set and which
// peers and ports they fill.
//
// Compiles are incremental at two levels: a change to some policies recompiles only the label sets
// their subjects select (derive), and such a label set is recompiled from its previous compile: rules
// are known by their policy number and content, so only the columns of the rules that were added,
// removed or whose peers now stand for other identities are rebuilt and closed again (one rule changed
// among 10,000 rebuilds two columns, not 10,000). What each policy gives a label set is record-use.ts's
// (for a policy that changed a few rules, worked out from those rules alone).
import { canonicalLabels, type Labels } from '../identity/labels.ts';
import { ANY_IDENTITY, RESERVED } from '../identity/reserved.ts';
import type { CidrIdentities } from '../identity/cidr.ts';
import type { FqdnPeers } from '../fqdn/identities.ts';
import { expandPorts } from './ports.ts';
import { l7ByCode } from './l7.ts';
import { encodeRuleId } from './rule-id.ts';
import { initDefaultDeny } from './selection.ts';
import { PeerResolver } from './peers.ts';
import {
  closeColumn,
  closeDenies,
  closeL7,
  closeL7Column,
  l4code,
  merge,
  type Column,
  type DirectionPolicy,
  type Entry,
} from './closure.ts';
import type { Direction, PolicyRecord } from './types.ts';
import type { UniverseChange } from './peer-deps.ts';
import { editedUse, movedUse, peersMoved, recordUse, type RecordUse, type RuleUse } from './record-use.ts';

export type { UniverseChange } from './peer-deps.ts';

export * from './closure.ts';

export interface LabelPolicy {
  ingress: DirectionPolicy;
  egress: DirectionPolicy;
  /** Names of the policies whose subject selects these labels, with the directions they enforce. */
  selectedBy: { policy: string; ingress: boolean; egress: boolean }[];
}

export interface Universe {
  /** Identities of endpoints (label identities, plus init and health): what endpoint selectors see. */
  identities: { id: number; labels: Labels }[];
  cidrs: CidrIdentities;
  /** Identities of addresses learned from DNS (toFQDNs); none: toFQDNs selects nothing yet. */
  fqdn?: FqdnPeers;
}

/** Cilium's default: the node may always reach its endpoints (health checks, kubelet probes). */
export const HOST_ALLOW_RULE_ID = 0;

/** A compiled label set and what recompiling it from here needs. */
interface Compiled {
  labels: Labels;
  policy: LabelPolicy;
  /** By policy number. */
  records: Map<number, RecordUse>;
  /** The rules filling each column ("ingress:peer"): a changed column is rebuilt from its own
   *  rules, not by walking every rule. The next patch takes it over and edits it in place (no copy
   *  of 10,000 columns' sets); undefined once taken (a compile from here then builds afresh). */
  fills?: Map<string, Set<RuleUse>>;
  /** Default deny and the selecting policies: when they change, the next compile starts over. */
  head: string;
}

const fillKey = (direction: Direction, peer: number) => `${direction}:${peer}`;

/** The columns a patch rebuilt, by direction: peer -> the column before (undefined: it had none). */
export type ColumnChanges = Record<Direction, Map<number, Column | undefined>>;

/** Tables made by a patch: the table they came from and the columns that differ from it. */
const patches = new WeakMap<LabelPolicy, { from: LabelPolicy; was: ColumnChanges }>();
/** Tables whose content a patch took over: they no longer hold what they held. */
const givenUp = new WeakSet<LabelPolicy>();

/** Did a patch take over `lp`'s tables (then only columnChanges tells what they held)? */
export function tablesGivenUp(lp: LabelPolicy): boolean {
  return givenUp.has(lp);
}

/** The columns of `lp` that differ from `from`, when `lp` was patched from it (then `from`'s tables
 *  are `lp`'s, edited: what they held before is here); undefined: unknown (compare every column).
 *  Any other column is the very same object in both. */
export function columnChanges(lp: LabelPolicy, from: LabelPolicy): ColumnChanges | undefined {
  const p = patches.get(lp);
  return p?.from === from ? p.was : undefined;
}

export class PolicyCompiler {
  private readonly cache = new Map<string, Compiled>();
  /** Label sets a change touched, as last compiled: their next compile starts from there. */
  private readonly bases = new Map<string, Compiled>();
  private peers: PeerResolver;
  /** Label sets this compiler compiled itself (not inherited through derive). */
  compiled = 0;
  /** Policy number -> place in `records` (worked out when a patch needs it). */
  private positions?: Map<number, number>;
  /** Set by derive: what changed in the universe since the bases were compiled. */
  private moved: UniverseChange = { cidrs: true, fqdn: true };
  /** Of those, compiled from their previous compile; and the columns that took rebuilding. */
  patched = 0;
  columnsRebuilt = 0;
  /** Of the records' uses, those updated from a few changed rules (editedUse), and those updated
   *  from the rules a change of CIDR or FQDN identities moved (movedUse). */
  edited = 0;
  cidrMoved = 0;

  constructor(
    private readonly records: PolicyRecord[],
    universe: Universe,
  ) {
    this.peers = new PeerResolver(universe);
  }

  forLabels(labels: Labels): LabelPolicy {
    const key = canonicalLabels(labels);
    let c = this.cache.get(key);
    if (!c) {
      this.compiled++;
      const base = this.bases.get(key);
      this.bases.delete(key);
      this.cache.set(key, (c = this.compile(labels, base)));
    }
    return c.policy;
  }

  /**
   * A compiler for other records over the same endpoint identities (the CIDR identities may differ):
   * label sets `touched` does not pick keep their compiled policy, the very same object, so a change
   * to one policy recompiles only what it can change. `touched` must pick every label set that a
   * changed record's subject selects, and those whose CIDR peers changed meaning.
   */
  derive(
    records: PolicyRecord[],
    universe: Universe,
    touched: (labels: Labels) => boolean,
    moved: UniverseChange = { cidrs: true, fqdn: true },
  ): PolicyCompiler {
    const next = new PolicyCompiler(records, universe);
    next.moved = moved;
    for (const [key, c] of this.cache) {
      if (!touched(c.labels)) next.cache.set(key, c);
      else next.bases.set(key, c);
    }
    next.peers = this.peers.withIdentities(universe); // endpoint selectors: same identities
    return next;
  }

  private compile(labels: Labels, base?: Compiled): Compiled {
    const init = initDefaultDeny(this.records, labels);
    const defaultDeny = { ingress: init, egress: init };
    const selectedBy: LabelPolicy['selectedBy'] = [];
    const records = new Map<number, RecordUse>();
    for (const rec of this.records) {
      const before = base?.records.get(rec.number);
      if (before?.givenUp) return this.compile(labels); // cannot happen: a base is compiled from once
      let ru = before && before.rec === rec && !peersMoved(rec, this.moved) ? before : undefined;
      if (!ru && before?.rec === rec) {
        ru = movedUse(rec, labels, this.peers, this.moved, before);
        if (ru) this.cidrMoved++;
      }
      if (!ru && before) {
        ru = editedUse(rec, labels, this.peers, this.moved, before);
        if (ru) this.edited++;
      }
      ru ??= recordUse(rec, labels, this.peers, this.moved, before);
      records.set(rec.number, ru);
      if (!ru.selected) continue;
      selectedBy.push({ policy: rec.name, ingress: ru.ingress, egress: ru.egress });
      defaultDeny.ingress ||= ru.ingress;
      defaultDeny.egress ||= ru.egress;
    }
    const head = JSON.stringify([defaultDeny, selectedBy]);
    const patched = base?.head === head && base.fills ? this.patch(base, base.fills, records) : undefined;
    return { labels, ...(patched ?? this.build(records, defaultDeny, selectedBy)), records, head };
  }

  /** The whole table from the rules. */
  private build(
    records: Map<number, RecordUse>,
    defaultDeny: { ingress: boolean; egress: boolean },
    selectedBy: LabelPolicy['selectedBy'],
  ): { policy: LabelPolicy; fills: Compiled['fills'] } {
    const out: LabelPolicy = {
      ingress: { defaultDeny: defaultDeny.ingress, columns: new Map() },
      egress: { defaultDeny: defaultDeny.egress, columns: new Map() },
      selectedBy,
    };
    const fills: Compiled['fills'] = new Map();
    for (const ru of records.values()) {
      const uses = ru.unordered ? [...ru.uses.values()].sort((a, b) => a.order - b.order) : ru.uses.values();
      for (const u of uses) {
        const dp = out[u.rule.direction];
        for (const peer of u.peers) {
          fill(column(dp, peer), u);
          const k = fillKey(u.rule.direction, peer);
          const set = fills.get(k);
          if (set) set.add(u);
          else fills.set(k, new Set([u]));
        }
      }
    }
    if (out.ingress.defaultDeny) hostAllowance(column(out.ingress, RESERVED.host));
    closeDenies(out.ingress);
    closeDenies(out.egress);
    closeL7(out.ingress);
    closeL7(out.egress);
    return { policy: out, fills };
  }

  /** The table from the previous one: only the columns of changed rules are rebuilt and closed.
   *  undefined when a changed rule fills the any-peer column (every column is closed against it).
   *  Takes over `fills` and the tables from the base (the base is not compiled from again). */
  private patch(
    base: Compiled,
    fills: Map<string, Set<RuleUse>>,
    records: Map<number, RecordUse>,
  ): { policy: LabelPolicy; fills: Compiled['fills'] } | undefined {
    const changed: Record<Direction, Set<number>> = { ingress: new Set(), egress: new Set() };
    const added: RuleUse[] = [],
      removed: RuleUse[] = [];
    const mark = (u: RuleUse) => {
      for (const p of u.peers) changed[u.rule.direction].add(p);
    };
    const gone = (u: RuleUse) => {
      mark(u);
      removed.push(u);
    };
    for (const [n, ru] of records) {
      const before = base.records.get(n);
      if (before === ru) continue;
      if (ru.delta && ru.delta.from === before) {
        for (const u of ru.delta.removed) gone(u);
        for (const u of ru.delta.added) {
          mark(u);
          added.push(u);
        }
        continue;
      }
      for (const [key, u] of ru.uses) {
        const was = before?.uses.get(key);
        if (was === u) continue;
        if (was) gone(was);
        mark(u);
        added.push(u);
      }
      for (const [key, was] of before?.uses ?? []) if (!ru.uses.has(key)) gone(was);
    }
    for (const [n, before] of base.records) if (!records.has(n)) for (const u of before.uses.values()) gone(u);
    if (changed.ingress.has(ANY_IDENTITY) || changed.egress.has(ANY_IDENTITY)) return undefined;
    base.fills = undefined; // taken over: edited in place below
    const edit = (u: RuleUse, add: boolean) => {
      for (const p of u.peers) {
        const k = fillKey(u.rule.direction, p);
        let set = fills.get(k);
        if (!set) fills.set(k, (set = new Set()));
        if (add) set.add(u);
        else set.delete(u);
      }
    };
    for (const u of removed) edit(u, false);
    for (const u of added) edit(u, true);
    const prev = base.policy;
    // The tables are taken over too and their changed columns replaced in place (no copy of 10,000
    // columns): what the previous table had there is kept in `was` for whoever diffs against it.
    const out: LabelPolicy = { ingress: prev.ingress, egress: prev.egress, selectedBy: prev.selectedBy };
    const was: ColumnChanges = { ingress: new Map(), egress: new Map() };
    this.patched++;
    for (const direction of ['ingress', 'egress'] as const) {
      const dp = out[direction];
      for (const peer of changed[direction]) {
        this.columnsRebuilt++;
        was[direction].set(peer, dp.columns.get(peer));
        const k = fillKey(direction, peer);
        const uses = fills.get(k);
        if (uses && !uses.size) fills.delete(k);
        const col: Column = new Map();
        for (const u of this.inPolicyOrder(uses)) fill(col, u);
        if (direction === 'ingress' && peer === RESERVED.host && dp.defaultDeny) hostAllowance(col);
        if (!col.size) {
          dp.columns.delete(peer);
          continue;
        }
        dp.columns.set(peer, col);
        closeColumn(dp, peer, col);
        closeL7Column(dp, peer, col);
      }
    }
    patches.set(out, { from: prev, was });
    givenUp.add(prev);
    return { policy: out, fills };
  }

  /** A column's rules in the order a full build fills them (merging L7 rules keeps that order). */
  private inPolicyOrder(uses: Set<RuleUse> | undefined): Iterable<RuleUse> {
    if (!uses || uses.size < 2) return uses ?? [];
    if (!this.positions) this.positions = new Map(this.records.map((r, i) => [r.number, i]));
    const pos = this.positions;
    return [...uses].sort((a, b) => pos.get(a.rec.number)! - pos.get(b.rec.number)! || a.order - b.order);
  }
}

/** What a rule puts in each column of its peers: its ports, as plain or L7 allow or deny. */
function fill(col: Column, u: RuleUse): void {
  if (!u.entries) {
    const { rec, rule } = u;
    const l4 = rule.ports.length ? expandPorts(rule.ports) : [{ proto: 0, dport: 0 }];
    const entry: Entry = { action: rule.action, ruleId: encodeRuleId(rec.number, rule.direction, rule.action, rule.index) };
    const l7 = l7ByCode(rule, l4code, entry.ruleId);
    u.entries = l4.map((k) => {
      const code = l4code(k.proto, k.dport);
      const set = l7.get(code);
      return [code, set ? { ...entry, l7: set } : entry];
    });
  }
  for (const [code, e] of u.entries) merge(col, code, e);
}

/** Cilium's default: with ingress default deny, the host still reaches the endpoint. */
function hostAllowance(host: Column): void {
  if (!host.has(0)) host.set(0, { action: 'allow', ruleId: HOST_ALLOW_RULE_ID });
}

function column(dp: DirectionPolicy, peer: number): Column {
  let c = dp.columns.get(peer);
  if (!c) dp.columns.set(peer, (c = new Map()));
  return c;
}
