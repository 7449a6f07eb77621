// The prefixes the policies name (CIDR identities and their ipcache entries follow them). Worked out
// once per record set and, for the set after a change, from the set before it: only the records that
// changed are walked (one policy replaced among 100 does not walk 10,000 rules), and the prefixes that
// came and went are handed to the CIDR table (identity/cidr.ts sync) as a delta. The set after a
// change takes over the set before it and edits it in place (no copy of 10,000 prefixes per change):
// asked for again, the set before is worked out from scratch. Each version of a set has its own
// token, which is what the CIDR table compares. Pure.
import type { PolicyRecord } from './types.ts';

interface PrefixSet {
  set: Set<string>;
  /** How many records name each prefix. */
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
/** Each record's prefixes, once. */
const byRecord = new WeakMap<PolicyRecord, Set<string>>();

function prefixesOfRecord(r: PolicyRecord): Set<string> {
  let out = byRecord.get(r);
  if (out) return out;
  out = new Set<string>();
  for (const s of r.policy.specs)
    for (const rule of s.rules) {
      if (rule.peers === 'all') continue;
      for (const p of rule.peers) {
        if (p.kind !== 'cidr') continue;
        out.add(p.cidr);
        for (const e of p.except) out.add(e);
      }
    }
  byRecord.set(r, out);
  return out;
}

function whole(records: PolicyRecord[]): PrefixSet {
  const counts = new Map<string, number>();
  for (const r of records) for (const p of prefixesOfRecord(r)) counts.set(p, (counts.get(p) ?? 0) + 1);
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
  const countBefore = (p: string) => {
    if (!before.has(p)) before.set(p, counts.get(p) ?? 0);
  };
  const touched = new Set<string>();
  const add = (p: string) => {
    countBefore(p);
    counts.set(p, (counts.get(p) ?? 0) + 1);
    touched.add(p);
  };
  const drop = (p: string) => {
    countBefore(p);
    const n = counts.get(p)! - 1;
    if (n) counts.set(p, n);
    else counts.delete(p);
    touched.add(p);
  };
  // A policy replaced (same number) counts only the prefixes that differ between its two versions:
  // one rule changed in a 10,000-rule policy touches one or two prefixes, not 20,000.
  const gone = new Map<number, PolicyRecord>();
  for (const r of prev) if (!is.has(r)) gone.set(r.number, r);
  const pairs: [Set<string>, Set<string>][] = [];
  // Additions first: a prefix that moves from one record to another never drops to zero.
  for (const r of records) {
    if (was.has(r)) continue;
    const old = gone.get(r.number);
    const now = prefixesOfRecord(r);
    if (!old) {
      for (const p of now) add(p);
      continue;
    }
    gone.delete(r.number);
    const then = prefixesOfRecord(old);
    pairs.push([then, now]);
    for (const p of now) if (!then.has(p)) add(p);
  }
  for (const [then, now] of pairs) for (const p of then) if (!now.has(p)) drop(p);
  for (const r of gone.values()) for (const p of prefixesOfRecord(r)) drop(p);
  const added: string[] = [],
    removed: string[] = [];
  for (const p of touched) {
    const had = before.get(p)! > 0;
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
