// The prefixes the policies name (CIDR identities and their ipcache entries follow them). Worked out
// once per record set and, for the set after a change, from the set before it: only the records that
// changed are walked (one policy replaced among 100 does not walk 10,000 rules), and the prefixes that
// came and went are handed to the CIDR table (identity/cidr.ts sync) as a delta. Pure.
import type { PolicyRecord } from './types.ts';

interface PrefixSet {
  set: Set<string>;
  /** How many records name each prefix. */
  counts: Map<string, number>;
}

export interface PrefixDelta {
  /** The set these changes apply to. */
  from: Set<string>;
  added: string[];
  removed: string[];
}

/** By record set (a set is never changed in place: a change makes a new array). */
const bySet = new WeakMap<PolicyRecord[], PrefixSet>();
/** Each record's prefixes, once. */
const byRecord = new WeakMap<PolicyRecord, string[]>();

function prefixesOfRecord(r: PolicyRecord): string[] {
  let out = byRecord.get(r);
  if (out) return out;
  const set = new Set<string>();
  for (const s of r.policy.specs)
    for (const rule of s.rules) {
      if (rule.peers === 'all') continue;
      for (const p of rule.peers) {
        if (p.kind !== 'cidr') continue;
        set.add(p.cidr);
        for (const e of p.except) set.add(e);
      }
    }
  byRecord.set(r, (out = [...set]));
  return out;
}

function whole(records: PolicyRecord[]): PrefixSet {
  const counts = new Map<string, number>();
  for (const r of records) for (const p of prefixesOfRecord(r)) counts.set(p, (counts.get(p) ?? 0) + 1);
  return { set: new Set(counts.keys()), counts };
}

/** Every prefix a policy names, including `except` ones (they need their own ipcache entry). The
 *  same Set for the same records array (do not change it). */
export function prefixesOf(records: PolicyRecord[]): Set<string> {
  return prefixesFrom(records).set;
}

/** The prefixes of `records`, from those of `prev` when they are known: then also what changed. */
export function prefixesFrom(records: PolicyRecord[], prev?: PolicyRecord[]): { set: Set<string>; delta?: PrefixDelta } {
  const known = bySet.get(records);
  if (known) return { set: known.set };
  const base = prev && bySet.get(prev);
  if (!base) {
    const w = whole(records);
    bySet.set(records, w);
    return { set: w.set };
  }
  const was = new Set(prev),
    is = new Set(records);
  const counts = new Map(base.counts);
  const touched = new Set<string>();
  // Additions first: a prefix that moves from one record to another never drops to zero.
  for (const r of records)
    if (!was.has(r))
      for (const p of prefixesOfRecord(r)) {
        counts.set(p, (counts.get(p) ?? 0) + 1);
        touched.add(p);
      }
  for (const r of prev)
    if (!is.has(r))
      for (const p of prefixesOfRecord(r)) {
        const n = counts.get(p)! - 1;
        if (n) counts.set(p, n);
        else counts.delete(p);
        touched.add(p);
      }
  const set = new Set(base.set);
  const added: string[] = [],
    removed: string[] = [];
  for (const p of touched) {
    if (counts.has(p) && !base.counts.has(p)) {
      set.add(p);
      added.push(p);
    } else if (!counts.has(p) && base.counts.has(p)) {
      set.delete(p);
      removed.push(p);
    }
  }
  bySet.set(records, { set, counts });
  return { set, delta: { from: base.set, added, removed } };
}
