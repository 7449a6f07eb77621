// Which rules of a policy a change of the FQDN identities can give other peers: a toFQDNs peer stands
// for the identities whose selectors hold its selector, a CIDR peer for those whose policy prefixes
// hold its prefix (fqdn/identities.ts select, within), and world for all of them. So when a DNS answer
// makes an identity (or one goes), only the rules naming one of its selectors or prefixes, or world,
// resolve again: found from an index per policy (by selector key and by prefix text), not by walking
// its rules. Pure; worked out once per policy object. The CIDR identities' counterpart: cidr-moves.ts.
import type { FqdnIdentity } from '../fqdn/identities.ts';
import { selectorKey } from '../fqdn/selector.ts';
import type { RulePlace } from './cidr-moves.ts';
import type { Policy } from './types.ts';

interface Index {
  world: RulePlace[];
  /** By toFQDNs selector key, and by CIDR peer (its prefix as written: what `within` compares). */
  bySelector: Map<string, RulePlace[]>;
  byCidr: Map<string, RulePlace[]>;
}

const indexes = new WeakMap<Policy, Index>();

function add(m: Map<string, RulePlace[]>, k: string, place: RulePlace): void {
  const at = m.get(k);
  if (at) at.push(place);
  else m.set(k, [place]);
}

function indexOf(policy: Policy): Index {
  let ix = indexes.get(policy);
  if (ix) return ix;
  ix = { world: [], bySelector: new Map(), byCidr: new Map() };
  for (const [i, spec] of policy.specs.entries()) {
    for (const [j, rule] of spec.rules.entries()) {
      if (rule.peers === 'all') continue;
      for (const p of rule.peers) {
        if (p.kind === 'entity' && p.entity === 'world') ix.world.push([i, j]);
        else if (p.kind === 'fqdn') add(ix.bySelector, selectorKey(p.selector), [i, j]);
        else if (p.kind === 'cidr') add(ix.byCidr, p.cidr, [i, j]);
      }
    }
  }
  indexes.set(policy, ix);
  return ix;
}

/** The rules of `policy` whose peers can stand for other identities once the FQDN identities
 *  `changed` came or went; each once, in no particular order. */
export function rulesMovedByFqdn(policy: Policy, changed: readonly FqdnIdentity[]): RulePlace[] {
  if (!changed.length) return [];
  const ix = indexOf(policy);
  const out = new Map<string, RulePlace>();
  const take = (places: RulePlace[] | undefined) => {
    for (const place of places ?? []) out.set(`${place[0]}:${place[1]}`, place);
  };
  take(ix.world);
  for (const identity of changed) {
    for (const s of identity.selectors) take(ix.bySelector.get(s));
    for (const p of identity.prefixes) take(ix.byCidr.get(p));
  }
  return [...out.values()];
}
