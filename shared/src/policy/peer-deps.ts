// Which policies' peers depend on the CIDR and FQDN identities: after those change, these records are
// compiled again (their peers may stand for other identities), the others keep what they gave. Each
// answer is worked out once per policy object (policies are never changed in place), and for a policy
// that changed a few rules, from the one it replaced and those rules. Pure.
import type { FqdnIdentity } from '../fqdn/identities.ts';
import type { Cidr } from '../net/index.ts';
import { RuleTally } from './rule-edits.ts';
import type { PolicyRecord, Rule } from './types.ts';

/** Does a record name CIDR or FQDN peers (directly or as world, which includes every CIDR and FQDN
 *  identity)? FQDN identities carry the policy prefixes that contain their addresses, so both kinds
 *  of rule select them. */
export function namesCidrs(r: PolicyRecord): boolean {
  return deps.get(r.policy)[NAMING] > 0;
}

/** Records whose peers may stand for other identities once the CIDR identities changed: a CIDR
 *  wider than one address (a new prefix may fall inside it), one with exceptions, toFQDNs, world.
 *  A host prefix stands for its own identity only, which a sync never renumbers (one of the node's
 *  addresses has none: UniverseChange.hostPrefixes). */
export function dependsOnCidrs(rec: PolicyRecord): boolean {
  return deps.get(rec.policy)[WIDE] > 0;
}

/** Records naming any CIDR (an address DNS taught may fall inside even a host prefix). */
export function namesAnyCidr(rec: PolicyRecord): boolean {
  return deps.get(rec.policy)[CIDR] > 0;
}

/** The same questions for one rule: [its peers depend on the CIDR identities, on the FQDN ones,
 *  it names CIDR or FQDN peers, it names a CIDR]. */
const ruleDeps = new WeakMap<Rule, [boolean, boolean, boolean, boolean]>();
function depsOf(rule: Rule): [boolean, boolean, boolean, boolean] {
  let d = ruleDeps.get(rule);
  if (d === undefined) ruleDeps.set(rule, (d = depsNow(rule)));
  return d;
}

function depsNow(rule: Rule): [boolean, boolean, boolean, boolean] {
  let world = false,
    fqdn = false,
    cidr = false,
    wideCidr = false;
  if (rule.peers !== 'all')
    for (const p of rule.peers) {
      if (p.kind === 'cidr') {
        cidr = true;
        wideCidr ||= p.except.length > 0 || !isHostPrefix(p.cidr);
      } else if (p.kind === 'fqdn') fqdn = true;
      else if (p.kind === 'entity' && p.entity === 'world') world = true;
    }
  const wide = world || fqdn || wideCidr;
  return [wide, wide || cidr, world || fqdn || cidr, cidr];
}

// Counted per policy in one walk (rule-edits.ts): a policy that changed one rule of 10,000 looks at
// that rule. Not through depsOf: a first count walks every rule, and a cache entry per rule costs
// more than the answer (only rulePeersMoved asks per rule again).
const WIDE = 0,
  NAMING = 1,
  CIDR = 2;
const deps = new RuleTally(3, (rule, into, by) => {
  const [wide, , naming, cidr] = depsNow(rule);
  if (wide) into[WIDE] += by;
  if (naming) into[NAMING] += by;
  if (cidr) into[CIDR] += by;
});

/** Could this rule's peers stand for other identities after `moved` (as recordPeersMoved, per rule)? */
export function rulePeersMoved(rule: Rule, moved: UniverseChange): boolean {
  if (!moved.cidrs && !moved.fqdn) return false;
  const [cidrs, fqdn, , cidr] = depsOf(rule);
  return cidrs || (moved.fqdn && fqdn) || (!!moved.hostPrefixes && cidr);
}

function isHostPrefix(cidr: string): boolean {
  return cidr.includes(':') ? cidr.endsWith('/128') : cidr.endsWith('/32');
}

/** What changed in the peer universe since the compiler a derived one comes from. */
export interface UniverseChange {
  cidrs: boolean;
  fqdn: boolean;
  /** With cidrs: a host prefix's identity came or went with no rule changing (the node's addresses
   *  changed: identity/cidr.ts hide), so rules naming host prefixes resolve again too. */
  hostPrefixes?: boolean;
  /** With cidrs: the prefixes whose identities came or went, when known (cidr-moves.ts). */
  cidrChanges?: readonly Cidr[];
  /** With fqdn: the FQDN identities that came or went, when known (fqdn-moves.ts). */
  fqdnChanges?: readonly FqdnIdentity[];
}
