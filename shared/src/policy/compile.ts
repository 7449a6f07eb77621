// Policies -> the policy map content for one label set, per direction. Pure.
//
// The datapath keys entries by {endpoint, peer identity, direction, proto, dport} and probes, for a
// new flow, in this order (bpf/lib/policy.h; `probe` below is the same sequence):
//   (peer, proto, dport) (peer, proto, *) (peer, *, *) (any, proto, dport) (any, proto, *) (any, *, *)
// and takes the first entry it finds. Deny must win over allow wherever both match, so the compiler
// closes the table over that order (see closeDenies): every entry a packet can stop at says "deny"
// whenever some deny rule matches that packet. Then six hash probes give the right answer, however
// many rules there are.
import { canonicalLabels, type Labels } from '../identity/labels.ts';
import { ANY_IDENTITY, RESERVED } from '../identity/reserved.ts';
import type { CidrIdentities } from '../identity/cidr.ts';
import type { FqdnPeers } from '../fqdn/identities.ts';
import { selectorKey as fqdnKey } from '../fqdn/selector.ts';
import { expandPorts, type L4Key } from './ports.ts';
import { l7ByCode, unionL7, type L7Set } from './l7.ts';
import { encodeRuleId } from './rule-id.ts';
import { initDefaultDeny } from './selection.ts';
import { isEmptySelector, matches, selectorKey, type Selector } from './selector.ts';
import type { Action, Peer, PolicyRecord, Rule } from './types.ts';

export interface Entry {
  action: Action;
  ruleId: number;
  /** Allow through the L7 proxy, for requests its rules match (l7.ts). */
  l7?: L7Set;
  /** The proxy's port, written to the datapath with the entry (set when the desired maps are built). */
  proxyPort?: number;
}
/** l4code(proto, dport) -> entry, for one peer identity. */
export type Column = Map<number, Entry>;

export interface DirectionPolicy {
  /** Some policy selects the endpoint in this direction with default deny. */
  defaultDeny: boolean;
  /** peer identity (0 = any) -> column. Empty and !defaultDeny: no lookup needed. */
  columns: Map<number, Column>;
}

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

export const l4code = (proto: number, dport: number): number => proto * 0x10000 + dport;
export const l4decode = (code: number): L4Key => ({ proto: Math.floor(code / 0x10000), dport: code % 0x10000 });

/** Cilium's default: the node may always reach its endpoints (health checks, kubelet probes). */
export const HOST_ALLOW_RULE_ID = 0;

export class PolicyCompiler {
  private readonly cache = new Map<string, { labels: Labels; policy: LabelPolicy }>();
  private readonly selectorCache = new Map<string, number[]>();
  /** Label sets this compiler compiled itself (not inherited through derive). */
  compiled = 0;

  constructor(private readonly records: PolicyRecord[], private readonly universe: Universe) {}

  forLabels(labels: Labels): LabelPolicy {
    const key = canonicalLabels(labels);
    let c = this.cache.get(key);
    if (!c) {
      this.compiled++;
      this.cache.set(key, (c = { labels, policy: this.compile(labels) }));
    }
    return c.policy;
  }

  /**
   * A compiler for other records over the same endpoint identities (the CIDR identities may differ):
   * label sets `touched` does not pick keep their compiled policy, the very same object, so a change
   * to one policy recompiles only what it can change. `touched` must pick every label set that a
   * changed record's subject selects, and those whose CIDR peers changed meaning.
   */
  derive(records: PolicyRecord[], universe: Universe, touched: (labels: Labels) => boolean): PolicyCompiler {
    const next = new PolicyCompiler(records, universe);
    for (const [key, c] of this.cache) if (!touched(c.labels)) next.cache.set(key, c);
    for (const [key, ids] of this.selectorCache) next.selectorCache.set(key, ids); // endpoint selectors: same identities
    return next;
  }

  private compile(labels: Labels): LabelPolicy {
    const init = initDefaultDeny(this.records, labels);
    const out: LabelPolicy = {
      ingress: { defaultDeny: init, columns: new Map() },
      egress: { defaultDeny: init, columns: new Map() },
      selectedBy: [],
    };
    for (const rec of this.records) {
      let ingress = false, egress = false, selected = false;
      for (const spec of rec.policy.specs) {
        if (!matches(spec.subject, labels)) continue;
        selected = true;
        ingress ||= spec.defaultDeny.ingress;
        egress ||= spec.defaultDeny.egress;
        for (const rule of spec.rules) this.addRule(out[rule.direction], rec, rule);
      }
      if (selected) out.selectedBy.push({ policy: rec.name, ingress, egress });
      out.ingress.defaultDeny ||= ingress;
      out.egress.defaultDeny ||= egress;
    }
    if (out.ingress.defaultDeny) {
      const host = column(out.ingress, RESERVED.host);
      if (!host.has(0)) host.set(0, { action: 'allow', ruleId: HOST_ALLOW_RULE_ID });
    }
    closeDenies(out.ingress);
    closeDenies(out.egress);
    closeL7(out.ingress);
    closeL7(out.egress);
    return out;
  }

  private addRule(dp: DirectionPolicy, rec: PolicyRecord, rule: Rule): void {
    const peers = rule.peers === 'all' ? [ANY_IDENTITY] : this.peerIdentities(rule.peers);
    if (!peers.length) return;
    const l4 = rule.ports.length ? expandPorts(rule.ports) : [{ proto: 0, dport: 0 }];
    const entry: Entry = { action: rule.action, ruleId: encodeRuleId(rec.number, rule.direction, rule.action, rule.index) };
    const l7 = l7ByCode(rule, l4code, entry.ruleId);
    const l7Entries = new Map([...l7].map(([code, set]) => [code, { ...entry, l7: set }]));
    for (const peer of peers) {
      const col = column(dp, peer);
      for (const k of l4) {
        const code = l4code(k.proto, k.dport);
        merge(col, code, l7Entries.get(code) ?? entry);
      }
    }
  }

  /** Identities a rule's peers stand for; [ANY_IDENTITY] when one of them is "all". */
  peerIdentities(peers: Peer[]): number[] {
    const out = new Set<number>();
    for (const p of peers) {
      if (p.kind === 'entity' && p.entity === 'all') return [ANY_IDENTITY];
      for (const id of this.resolvePeer(p)) out.add(id);
    }
    return [...out];
  }

  private resolvePeer(p: Peer): number[] {
    switch (p.kind) {
      case 'endpoints': return this.selectEndpoints(p.selector);
      case 'cidr': {
        const fqdn = this.universe.fqdn?.within(p.cidr, p.except) ?? [];
        const ids = this.universe.cidrs.within(p.cidr, p.except);
        return fqdn.length ? [...ids, ...fqdn] : ids;
      }
      case 'fqdn': return this.universe.fqdn?.select(fqdnKey(p.selector)) ?? [];
      case 'entity':
        switch (p.entity) {
          case 'host': return [RESERVED.host];
          case 'remote-node': return [RESERVED['remote-node']];
          case 'world': return [RESERVED.world, ...this.universe.cidrs.entries().map((e) => e.id), ...(this.universe.fqdn?.all() ?? [])];
          case 'init': return [RESERVED.init];
          case 'health': return [RESERVED.health];
          case 'unmanaged': return [RESERVED.unmanaged];
          case 'cluster': return [RESERVED.host, RESERVED['remote-node'], RESERVED.init, RESERVED.health, ...this.universe.identities.map((i) => i.id)];
          case 'all': return [ANY_IDENTITY];
        }
    }
  }

  /** Endpoint identities a selector matches. Reserved identities only when it names a reserved label. */
  private selectEndpoints(s: Selector): number[] {
    const key = selectorKey(s);
    const cached = this.selectorCache.get(key);
    if (cached) return cached;
    const namesReserved = [...Object.keys(s.matchLabels), ...s.matchExpressions.map((r) => r.key)].some((k) => k.startsWith('reserved:'));
    const candidates = [...this.universe.identities];
    if (namesReserved) {
      for (const [name, id] of Object.entries(RESERVED)) candidates.push({ id, labels: { [`reserved:${name}`]: '' } });
    }
    const ids = isEmptySelector(s) ? candidates.map((c) => c.id) : candidates.filter((c) => matches(s, c.labels)).map((c) => c.id);
    const out = [...new Set(ids)];
    this.selectorCache.set(key, out);
    return out;
  }
}

function column(dp: DirectionPolicy, peer: number): Column {
  let c = dp.columns.get(peer);
  if (!c) dp.columns.set(peer, (c = new Map()));
  return c;
}

/** Deny beats allow, plain allow beats L7 allow (rules are additive), L7 sets of the same traffic
 *  are unioned; among equals the lowest rule id wins, so output does not depend on order. */
export function merge(col: Column, code: number, e: Entry): void {
  const cur = col.get(code);
  col.set(code, cur ? combine(cur, e) : e);
}

function combine(cur: Entry, e: Entry): Entry {
  if (e.action !== cur.action) return e.action === 'deny' ? e : cur;
  if (e.action === 'allow' && (!!e.l7 !== !!cur.l7)) return e.l7 ? cur : e;
  // Two kinds of L7 rules for the same traffic (HTTP and DNS on one port): no proxy can enforce both.
  if (e.l7 && cur.l7 && e.l7.kind !== cur.l7.kind) return { action: 'deny', ruleId: Math.min(e.ruleId, cur.ruleId) };
  if (e.l7 && cur.l7) return { ...(e.ruleId < cur.ruleId ? e : cur), l7: unionL7(cur.l7, e.l7) };
  return e.ruleId < cur.ruleId ? e : cur;
}

/** The entries a packet (peer, proto, dport) may hit, in the datapath's probe order. */
export function probeOrder(peer: number, proto: number, dport: number): [number, number][] {
  const out: [number, number][] = [];
  const peers = peer === ANY_IDENTITY ? [ANY_IDENTITY] : [peer, ANY_IDENTITY];
  for (const p of peers) {
    if (dport) out.push([p, l4code(proto, dport)]);
    if (proto) out.push([p, l4code(proto, 0)]);
    out.push([p, 0]);
  }
  return out;
}

/** What the datapath finds for a new flow: the first entry in probe order, if any. */
export function probe(dp: DirectionPolicy, peer: number, proto: number, dport: number): { peer: number; code: number; entry: Entry } | undefined {
  for (const [p, code] of probeOrder(peer, proto, dport)) {
    const entry = dp.columns.get(p)?.get(code);
    if (entry) return { peer: p, code, entry };
  }
  return undefined;
}

/** Generalizations of (proto, dport) within a column, most specific first, excluding itself. */
function wider(code: number): number[] {
  const { proto, dport } = l4decode(code);
  const out: number[] = [];
  if (dport) out.push(l4code(proto, 0));
  if (proto) out.push(0);
  return out;
}

/** The entries that also match whatever stops at (peer, code): wider ports, then the any-peer column. */
function generalizations(dp: DirectionPolicy, peer: number, code: number): Entry[] {
  const out: Entry[] = [];
  const col = dp.columns.get(peer);
  const any = dp.columns.get(ANY_IDENTITY);
  for (const w of wider(code)) { const e = col?.get(w); if (e) out.push(e); }
  if (peer !== ANY_IDENTITY && any) for (const c of [code, ...wider(code)]) { const e = any.get(c); if (e) out.push(e); }
  return out;
}

/** After closeDenies: each L7 entry takes in the allow entries that also cover its traffic (l7.ts). */
export function closeL7(dp: DirectionPolicy): void {
  for (const [peer, col] of dp.columns) {
    for (const [code, e] of col) {
      if (e.action !== 'allow' || !e.l7) continue;
      let cur = e;
      for (const g of generalizations(dp, peer, code)) {
        if (g.action !== 'allow') continue;
        cur = combine(cur, g);
        if (!cur.l7) break;
      }
      if (cur !== e) col.set(code, cur);
    }
  }
}

/**
 * Make the probe order deny-correct:
 *  1. an allow entry becomes deny when a deny exists at one of its generalizations (same peer with
 *     wider ports, or the any-peer column at the same or wider ports);
 *  2. an any-peer deny (proto, dport) is copied into each peer column whose wider allow entry would
 *     otherwise stop the probe before reaching it.
 */
export function closeDenies(dp: DirectionPolicy): void {
  const any = dp.columns.get(ANY_IDENTITY);
  const denyAt = (col: Column | undefined, code: number) => {
    const e = col?.get(code);
    return e?.action === 'deny' ? e : undefined;
  };
  for (const [peer, col] of dp.columns) {
    for (const [code, e] of col) {
      if (e.action === 'deny') continue;
      const gens: [Column | undefined, number][] = wider(code).map((c) => [col, c]);
      if (peer !== ANY_IDENTITY) gens.push([any, code], ...wider(code).map((c): [Column | undefined, number] => [any, c]));
      for (const [gc, gcode] of gens) {
        const d = denyAt(gc, gcode);
        if (d) { col.set(code, d); break; }
      }
    }
  }
  if (!any) return;
  for (const [code, d] of any) {
    if (d.action !== 'deny' || code === 0) continue;
    for (const [peer, col] of dp.columns) {
      if (peer === ANY_IDENTITY || col.has(code)) continue;
      const shadowed = wider(code).some((w) => col.get(w)?.action === 'allow');
      if (shadowed) col.set(code, d);
    }
  }
}
