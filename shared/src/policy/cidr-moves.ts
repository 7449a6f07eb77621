// Which rules of a policy a change of the CIDR identities can give other peers: a CIDR peer stands
// for the identities of the known prefixes inside it (identity/cidr.ts within), and world for every
// CIDR identity, so when prefixes come or go only the rules naming world or a CIDR that holds one of
// them resolve again. Found from an index per policy (its wide CIDR peers by prefix length and
// network), not by walking its rules: a 1-rule policy of another pod that adds a /32 next to 10,000
// /24 rules looks up the /32's 33 enclosing networks (fewer: only the lengths the policy uses) and
// re-resolves the one /24 that holds it. Pure; worked out once per policy object.
import { parseCidr, prefixMask, type Cidr } from '../net/index.ts';
import type { Policy } from './types.ts';

/** A rule's place: spec, rule. */
export type RulePlace = readonly [number, number];

interface Index {
  /** Rules naming world: every CIDR identity. */
  world: RulePlace[];
  /** Rules naming a CIDR peer wider than one address (or with exceptions), by "family/length",
   *  then network address. Host prefixes stand for their own identity only (never renumbered). */
  wide: Map<string, { family: Cidr['family']; prefix: number; bits: 32 | 128; byBase: Map<bigint, RulePlace[]> }>;
}

const indexes = new WeakMap<Policy, Index>();

function indexOf(policy: Policy): Index {
  let ix = indexes.get(policy);
  if (ix) return ix;
  ix = { world: [], wide: new Map() };
  for (const [i, spec] of policy.specs.entries()) {
    for (const [j, rule] of spec.rules.entries()) {
      if (rule.peers === 'all') continue;
      for (const p of rule.peers) {
        if (p.kind === 'entity' && p.entity === 'world') ix.world.push([i, j]);
        if (p.kind !== 'cidr') continue;
        const c = parseCidr(p.cidr);
        if (c.prefix === c.bits && !p.except.length) continue;
        const k = `${c.family}/${c.prefix}`;
        let byLen = ix.wide.get(k);
        if (!byLen) ix.wide.set(k, (byLen = { family: c.family, prefix: c.prefix, bits: c.bits, byBase: new Map() }));
        const at = byLen.byBase.get(c.base);
        if (at) at.push([i, j]);
        else byLen.byBase.set(c.base, [[i, j]]);
      }
    }
  }
  indexes.set(policy, ix);
  return ix;
}

/** The rules of `policy` whose peers can stand for other identities once the identities of
 *  `changed` (prefixes that came or went) did; each once, in no particular order. */
export function rulesMovedBy(policy: Policy, changed: readonly Cidr[]): RulePlace[] {
  const ix = indexOf(policy);
  if (!changed.length) return [];
  const out = new Map<string, RulePlace>();
  for (const place of ix.world) out.set(`${place[0]}:${place[1]}`, place);
  for (const byLen of ix.wide.values()) {
    for (const c of changed) {
      if (c.family !== byLen.family || c.prefix < byLen.prefix) continue;
      const at = byLen.byBase.get(c.base & prefixMask(byLen.prefix, byLen.bits));
      for (const place of at ?? []) out.set(`${place[0]}:${place[1]}`, place);
    }
  }
  return [...out.values()];
}
