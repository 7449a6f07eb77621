// What one policy gives one label set's compile (compile.ts): whether it selects the labels, and the
// rules it uses there with the peers they resolved to. Worked out by walking the policy's rules
// (keeping the uses of rules that did not change), or, for a policy that changed a few rules of the
// one it replaced (rule-edits.ts), from that one's uses and those rules alone. Pure.
import { ANY_IDENTITY } from '../identity/reserved.ts';
import type { Labels } from '../identity/labels.ts';
import type { Entry } from './closure.ts';
import { fingerprintOf } from './fingerprint.ts';
import { rulesMovedBy, type RulePlace } from './cidr-moves.ts';
import { rulesMovedByFqdn } from './fqdn-moves.ts';
import { dependsOnCidrs, namesAnyCidr, rulePeersMoved, type UniverseChange } from './peer-deps.ts';
import type { PeerResolver } from './peers.ts';
import { editsOf } from './rule-edits.ts';
import { matches } from './selector.ts';
import type { PolicyRecord, Rule } from './types.ts';

/** One rule as a label set's compile used it: the peers it resolved to, and (worked out once) the
 *  entries it puts in each of their columns. */
export interface RuleUse {
  rec: PolicyRecord;
  rule: Rule;
  peers: number[];
  /** Its place in the policy (spec, then rule): columns fill in policy order, then this order. */
  order: number;
  entries?: [number, Entry][];
}

/** What one policy gives a label set: whether it selects it, the directions it makes default-deny,
 *  and the rules it uses there (by rule key). Kept while the record is the same object and its
 *  peers cannot have changed meaning, so a change to one policy among many looks at that one. */
export interface RecordUse {
  rec: PolicyRecord;
  selected: boolean;
  ingress: boolean;
  egress: boolean;
  uses: Map<string, RuleUse>;
  /** Two used rules share a key (same content): `uses` holds one of them, so edits walk it whole. */
  dup?: boolean;
  /** Made from `from` by replacing a few rules (editedUse): `uses` is `from`'s map, edited in place
   *  (`from` is then given up). Dropped when the next edit takes this one over. */
  delta?: { from: RecordUse; removed: RuleUse[]; added: RuleUse[] };
  /** `uses` is not in policy order (an edit appended its rules). */
  unordered?: boolean;
  givenUp?: boolean;
}

/** Each rule object's key, once (the same string again: a re-import keeps 10,000 rule objects). */
const ruleKeys = new WeakMap<Rule, { n: number; key: string }>();

/** A rule by its policy's number (its rule ids) and content. */
export function ruleKey(rec: PolicyRecord, rule: Rule): string {
  const known = ruleKeys.get(rule);
  if (known?.n === rec.number) return known.key;
  const key = `${rec.number}:${fingerprintOf(rule)}`;
  ruleKeys.set(rule, { n: rec.number, key });
  return key;
}

/** Could `rec`'s peers stand for other identities than when the base was compiled? */
export function peersMoved(rec: PolicyRecord, moved: UniverseChange): boolean {
  const { cidrs, fqdn, hostPrefixes } = moved;
  return ((cidrs || fqdn) && dependsOnCidrs(rec)) || ((fqdn || !!hostPrefixes) && namesAnyCidr(rec));
}

/** What `rec` gives `labels`; rules whose use is unchanged from `before` keep that very object. */
export function recordUse(
  rec: PolicyRecord,
  labels: Labels,
  resolver: PeerResolver,
  moved: UniverseChange,
  before?: RecordUse,
): RecordUse {
  const ru: RecordUse = { rec, selected: false, ingress: false, egress: false, uses: new Map() };
  for (const [i, spec] of rec.policy.specs.entries()) {
    if (!matches(spec.subject, labels)) continue;
    ru.selected = true;
    ru.ingress ||= spec.defaultDeny.ingress;
    ru.egress ||= spec.defaultDeny.egress;
    for (const [j, rule] of spec.rules.entries()) {
      const key = ruleKey(rec, rule);
      const order = i * 65536 + j;
      const was = before?.uses.get(key);
      // The same rule object in the same place whose peers cannot mean other identities now (a
      // re-imported 10,000-rule policy keeps its unchanged rules' objects): not resolved again.
      if (was && was.rule === rule && was.order === order && !rulePeersMoved(rule, moved)) {
        if (ru.uses.has(key)) ru.dup = true;
        ru.uses.set(key, was);
        continue;
      }
      const peers = peersOf(rule, resolver);
      if (!peers.length) continue;
      const same = was && was.order === order && samePeers(was.peers, peers);
      if (ru.uses.has(key)) ru.dup = true;
      ru.uses.set(key, same ? was : { rec, rule, peers, order, entries: was?.entries });
    }
  }
  return ru;
}

/** What `rec` gives `labels` when it changed a few rules of `before`'s record (rule-edits.ts) and
 *  no rule of it can stand for other identities now: `before`'s uses with those rules' replaced,
 *  taken over and edited in place (one rule changed among 10,000 walks one rule, not 10,000).
 *  undefined: not such a change (then recordUse walks the record). */
export function editedUse(
  rec: PolicyRecord,
  labels: Labels,
  resolver: PeerResolver,
  moved: UniverseChange,
  before: RecordUse,
): RecordUse | undefined {
  const edits = editsOf(rec.policy);
  if (!edits || edits.from !== before.rec.policy || before.dup || peersMoved(rec, moved)) return undefined;
  const removed: RuleUse[] = [],
    added: [string, RuleUse][] = [];
  const gone = new Set<string>();
  for (const { spec: i, rule: j } of edits.changed) {
    if (!matches(rec.policy.specs[i].subject, labels)) continue; // the same subject before
    const order = i * 65536 + j;
    const oldKey = ruleKey(before.rec, edits.from.specs[i].rules[j]);
    const was = before.uses.get(oldKey);
    if (was && was.order !== order) return undefined;
    if (was) {
      removed.push(was);
      gone.add(oldKey);
    }
    const rule = rec.policy.specs[i].rules[j];
    const peers = peersOf(rule, resolver);
    if (peers.length) added.push([ruleKey(rec, rule), { rec, rule, peers, order }]);
  }
  const keys = new Set<string>();
  for (const [key] of added) {
    // Another rule of the same content (one key for both): walked whole, as it always was.
    if ((before.uses.has(key) && !gone.has(key)) || keys.has(key)) return undefined;
    keys.add(key);
  }
  return takeOver(rec, before, gone, removed, added);
}

/** What the same record gives `labels` after CIDR or FQDN identities came or went
 *  (`moved.cidrChanges`, `moved.fqdnChanges`): `before`'s uses with those of the rules the change can
 *  move resolved again (cidr-moves.ts, fqdn-moves.ts; a prefix added next to 10,000 wide rules, or a
 *  DNS answer's new identity, re-resolves the rules that can select it, not 10,000), taken over and
 *  edited in place; `before` itself when none resolved to other peers. undefined: a change whose
 *  identities are not known (then recordUse walks the record). */
export function movedUse(
  rec: PolicyRecord,
  labels: Labels,
  resolver: PeerResolver,
  moved: UniverseChange,
  before: RecordUse,
): RecordUse | undefined {
  if (before.rec !== rec || before.dup) return undefined;
  if ((moved.cidrs && !moved.cidrChanges) || (moved.fqdn && !moved.fqdnChanges)) return undefined;
  const places: RulePlace[] = moved.cidrs && moved.cidrChanges ? rulesMovedBy(rec.policy, moved.cidrChanges) : [];
  if (moved.fqdn && moved.fqdnChanges) {
    const seen = new Set(places.map(([i, j]) => i * 65536 + j));
    for (const place of rulesMovedByFqdn(rec.policy, moved.fqdnChanges))
      if (!seen.has(place[0] * 65536 + place[1])) places.push(place);
  }
  const removed: RuleUse[] = [],
    added: [string, RuleUse][] = [];
  for (const [i, j] of places) {
    if (!matches(rec.policy.specs[i].subject, labels)) continue;
    const rule = rec.policy.specs[i].rules[j];
    const key = ruleKey(rec, rule);
    const order = i * 65536 + j;
    const was = before.uses.get(key);
    if (was && (was.rule !== rule || was.order !== order)) return undefined;
    const peers = peersOf(rule, resolver);
    if (was && samePeers(was.peers, peers)) continue;
    if (was) removed.push(was);
    if (peers.length) added.push([key, { rec, rule, peers, order, entries: was?.entries }]);
  }
  if (!removed.length && !added.length) return before;
  return takeOver(
    rec,
    before,
    removed.map((u) => ruleKey(rec, u.rule)),
    removed,
    added,
  );
}

/** `rec`'s use made from `before`'s, edited in place: the `gone` keys removed and `added` set, the
 *  change kept as the delta the apply writes. `before` is given up, so it can no longer be read as
 *  the earlier version, and no chain of earlier versions stays reachable. */
function takeOver(
  rec: PolicyRecord,
  before: RecordUse,
  gone: Iterable<string>,
  removed: RuleUse[],
  added: [string, RuleUse][],
): RecordUse {
  const uses = before.uses;
  before.givenUp = true;
  before.delta = undefined;
  for (const key of gone) uses.delete(key);
  for (const [key, u] of added) uses.set(key, u);
  const { selected, ingress, egress } = before;
  const delta = { from: before, removed, added: added.map(([, u]) => u) };
  return { rec, selected, ingress, egress, uses, delta, unordered: true };
}

/** The identities a rule allows or denies now ('all': any identity). */
function peersOf(rule: RuleUse['rule'], resolver: PeerResolver): number[] {
  return rule.peers === 'all' ? [ANY_IDENTITY] : resolver.identities(rule.peers);
}

function samePeers(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((p, i) => p === b[i]);
}
