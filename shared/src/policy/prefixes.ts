// The prefixes the policies name (CIDR identities and their ipcache entries follow them). Worked out
// once per record set and, for the set after a change, from the set before it: only the records that
// changed are walked (one policy replaced among 100 does not walk 10,000 rules; one that changed one
// rule of 10,000 looks at that rule: rule-edits.ts), and the prefixes that
// came and went are handed to the CIDR table (identity/cidr.ts sync) as a delta. The set after a
// change takes over the set before it and edits it in place (no copy of 10,000 prefixes per change):
// asked for again, the set before is worked out from scratch. Each version of a set has its own
// token, which is what the CIDR table compares. Pure.
import { editsOf } from './rule-edits.ts';
import type { Policy, PolicyRecord, Rule } from './types.ts';

interface PrefixSet {
  set: Set<string>;
  /** How many times the records' rules name each prefix. */
  counts: Map<string, number>;
  /** Names this version of `set` (the object itself is edited by the next change). */
  token: object;
}

export interface PrefixDelta {
  /** The token of the set these changes apply to. */
  from: object;
  added: string[];
  removed: string[];
}

/** By record set (a set is never changed in place: a change makes a new array). */
const bySet = new WeakMap<PolicyRecord[], PrefixSet>();
/** Each policy's prefixes with how many times its rules name them, once. */
const byPolicy = new WeakMap<Policy, Map<string, number>>();

function prefixesOfRule(rule: Rule, out: Map<string, number>, by: number): void {
  if (rule.peers === 'all') return;
  for (const p of rule.peers) {
    if (p.kind !== 'cidr') continue;
    out.set(p.cidr, (out.get(p.cidr) ?? 0) + by);
    for (const e of p.except) out.set(e, (out.get(e) ?? 0) + by);
  }
}

function prefixesOfPolicy(policy: Policy): Map<string, number> {
  let out = byPolicy.get(policy);
  if (out) return out;
  out = new Map();
  for (const s of policy.specs) for (const rule of s.rules) prefixesOfRule(rule, out, 1);
  byPolicy.set(policy, out);
  return out;
}

/** How the prefix counts change from `then` to `now`: for a policy that changed a few rules of the
 *  one it replaced (rule-edits.ts), from those rules alone (one rule changed among 10,000 touches one
 *  or two prefixes and walks no other rule); otherwise the prefixes that differ between the two. */
function countChange(then: Policy, now: Policy): Map<string, number> {
  const out = new Map<string, number>();
  const edits = editsOf(now);
  if (edits?.from === then) {
    for (const { spec, rule } of edits.changed) {
      prefixesOfRule(then.specs[spec].rules[rule], out, -1);
      prefixesOfRule(now.specs[spec].rules[rule], out, 1);
    }
    return out;
  }
  const a = prefixesOfPolicy(then),
    b = prefixesOfPolicy(now);
  for (const [p, n] of b) if (a.get(p) !== n) out.set(p, n - (a.get(p) ?? 0));
  for (const [p, n] of a) if (!b.has(p)) out.set(p, -n);
  return out;
}

function whole(records: PolicyRecord[]): PrefixSet {
  const counts = new Map<string, number>();
  for (const r of records) for (const [p, n] of prefixesOfPolicy(r.policy)) counts.set(p, (counts.get(p) ?? 0) + n);
  return { set: new Set(counts.keys()), counts, token: {} };
}

/** Every prefix a policy names, including `except` ones (they need their own ipcache entry). A copy. */
export function prefixesOf(records: PolicyRecord[]): Set<string> {
  return new Set(prefixesFrom(records).set);
}

/** The prefixes of `records` (the set: do not change it; it is valid until the next call), from
 *  those of `prev` when they are known: then also what changed. */
export function prefixesFrom(
  records: PolicyRecord[],
  prev?: PolicyRecord[],
): { set: Set<string>; token: object; delta?: PrefixDelta } {
  const known = bySet.get(records);
  if (known) return { set: known.set, token: known.token };
  const base = prev && bySet.get(prev);
  if (!base) {
    const w = whole(records);
    bySet.set(records, w);
    return { set: w.set, token: w.token };
  }
  const was = new Set(prev),
    is = new Set(records);
  // Taken over: `prev` gives up its set (asked for again, it is worked out afresh).
  bySet.delete(prev);
  const { counts, set } = base;
  const before = new Map<string, number>();
  /** Additions first: a prefix that moves from one record to another never drops to zero. */
  const drops: [string, number][] = [];
  const change = (p: string, by: number) => {
    if (!by) return;
    if (by < 0) {
      drops.push([p, by]);
      return;
    }
    if (!before.has(p)) before.set(p, counts.get(p) ?? 0);
    counts.set(p, (counts.get(p) ?? 0) + by);
  };
  // A policy replaced (same number) counts only the prefixes that differ between its two versions.
  const gone = new Map<number, PolicyRecord>();
  for (const r of prev) if (!is.has(r)) gone.set(r.number, r);
  for (const r of records) {
    if (was.has(r)) continue;
    const old = gone.get(r.number);
    if (!old) {
      for (const [p, n] of prefixesOfPolicy(r.policy)) change(p, n);
      continue;
    }
    gone.delete(r.number);
    for (const [p, n] of countChange(old.policy, r.policy)) change(p, n);
  }
  for (const r of gone.values()) for (const [p, n] of prefixesOfPolicy(r.policy)) change(p, -n);
  for (const [p, by] of drops) {
    if (!before.has(p)) before.set(p, counts.get(p) ?? 0);
    const n = counts.get(p)! + by;
    if (n) counts.set(p, n);
    else counts.delete(p);
  }
  const added: string[] = [],
    removed: string[] = [];
  for (const [p, n] of before) {
    const had = n > 0;
    if (counts.has(p) && !had) {
      set.add(p);
      added.push(p);
    } else if (!counts.has(p) && had) {
      set.delete(p);
      removed.push(p);
    }
  }
  const token = {};
  bySet.set(records, { set, counts, token });
  return { set, token, delta: { from: base.token, added, removed } };
}
