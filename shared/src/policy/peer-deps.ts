// Which policies' peers depend on the CIDR and FQDN identities: after those change, these records are
// compiled again (their peers may stand for other identities), the others keep what they gave. Each
// answer is worked out once per record object (records are never changed in place). Pure.
import type { PolicyRecord, Rule } from './types.ts';

/** Does a record name CIDR or FQDN peers (directly or as world, which includes every CIDR and FQDN
 *  identity)? FQDN identities carry the policy prefixes that contain their addresses, so both kinds
 *  of rule select them. */
const namesCidrsOf = new WeakMap<PolicyRecord, boolean>();
export function namesCidrs(r: PolicyRecord): boolean {
  let v = namesCidrsOf.get(r);
  if (v === undefined) namesCidrsOf.set(r, (v = namesCidrsNow(r)));
  return v;
}
function namesCidrsNow(r: PolicyRecord): boolean {
  return r.policy.specs.some((s) =>
    s.rules.some(
      (rule) =>
        rule.peers !== 'all' &&
        rule.peers.some((p) => p.kind === 'cidr' || p.kind === 'fqdn' || (p.kind === 'entity' && p.entity === 'world')),
    ),
  );
}

/** Records whose peers may stand for other identities once the CIDR identities changed: a CIDR
 *  wider than one address (a new prefix may fall inside it), one with exceptions, toFQDNs, world.
 *  A host prefix stands for its own identity only, which a sync never renumbers. */
const cidrDependent = new WeakMap<PolicyRecord, boolean>();
export function dependsOnCidrs(rec: PolicyRecord): boolean {
  let d = cidrDependent.get(rec);
  if (d === undefined) {
    d = rec.policy.specs.some((s) =>
      s.rules.some(
        (r) =>
          r.peers !== 'all' &&
          r.peers.some(
            (p) =>
              (p.kind === 'cidr' && (p.except.length > 0 || !isHostPrefix(p.cidr))) ||
              p.kind === 'fqdn' ||
              (p.kind === 'entity' && p.entity === 'world'),
          ),
      ),
    );
    cidrDependent.set(rec, d);
  }
  return d;
}

/** Records naming any CIDR (an address DNS taught may fall inside even a host prefix). */
const namesCidr = new WeakMap<PolicyRecord, boolean>();
export function namesAnyCidr(rec: PolicyRecord): boolean {
  let d = namesCidr.get(rec);
  if (d === undefined) {
    d = rec.policy.specs.some((s) => s.rules.some((r) => r.peers !== 'all' && r.peers.some((p) => p.kind === 'cidr')));
    namesCidr.set(rec, d);
  }
  return d;
}

/** The same questions for one rule: [its peers depend on the CIDR identities, on the FQDN ones]. */
const ruleDeps = new WeakMap<Rule, [boolean, boolean]>();
function depsOf(rule: Rule): [boolean, boolean] {
  let d = ruleDeps.get(rule);
  if (d === undefined) {
    const peers = rule.peers === 'all' ? [] : rule.peers;
    const wide = peers.some(
      (p) =>
        (p.kind === 'cidr' && (p.except.length > 0 || !isHostPrefix(p.cidr))) ||
        p.kind === 'fqdn' ||
        (p.kind === 'entity' && p.entity === 'world'),
    );
    ruleDeps.set(rule, (d = [wide, wide || peers.some((p) => p.kind === 'cidr')]));
  }
  return d;
}

/** Could this rule's peers stand for other identities after `moved` (as recordPeersMoved, per rule)? */
export function rulePeersMoved(rule: Rule, moved: UniverseChange): boolean {
  if (!moved.cidrs && !moved.fqdn) return false;
  const [cidrs, fqdn] = depsOf(rule);
  return cidrs || (moved.fqdn && fqdn);
}

function isHostPrefix(cidr: string): boolean {
  return cidr.includes(':') ? cidr.endsWith('/128') : cidr.endsWith('/32');
}

/** What changed in the peer universe since the compiler a derived one comes from. */
export interface UniverseChange {
  cidrs: boolean;
  fqdn: boolean;
}
