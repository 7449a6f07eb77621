// Which rules differ between a policy and the one it replaced (same name), found by object identity:
// a re-import keeps the unchanged rules' objects (the worker's edit answer, its rule references, the
// inline rule memo), so one rule changed among 10,000 is found with 10,000 pointer comparisons and no
// hashing. What is worked out per policy from its rules (prefixes, peer dependencies, FQDN selectors,
// the compiler's rule uses) is then updated from the replaced policy's by these rules alone, instead
// of walking every rule again (issue 17: a change costs in proportion to the change). Pure.
import type { Policy, Rule } from './types.ts';

export interface RuleEdits {
  /** The policy this one replaced: same specs (subjects, default deny) and as many rules in each. */
  from: Policy;
  /** The rules that are other objects than `from`'s in the same place (content may still be equal). */
  changed: { spec: number; rule: number }[];
}

/** What each policy replaced, as the repository planned it. */
const replaced = new WeakMap<Policy, Policy>();
const found = new WeakMap<Policy, RuleEdits | null>();

/** `policy` replaces `from` (an import of a policy of the same name). */
export function noteReplaced(policy: Policy, from: Policy): void {
  if (policy !== from && !replaced.has(policy)) replaced.set(policy, from);
}

/** The rules `policy` changed from the one it replaced, when few of them did (more than an eighth,
 *  or another shape: undefined, and whoever asked walks the whole policy). */
export function editsOf(policy: Policy): RuleEdits | undefined {
  let e = found.get(policy);
  if (e === undefined) {
    const from = replaced.get(policy);
    e = from ? ruleEdits(from, policy) : null;
    found.set(policy, e);
  }
  return e ?? undefined;
}

function ruleEdits(from: Policy, to: Policy): RuleEdits | null {
  if (from.specs.length !== to.specs.length) return null;
  const changed: RuleEdits['changed'] = [];
  let total = 0;
  for (const [i, b] of to.specs.entries()) {
    const a = from.specs[i];
    if (a.rules.length !== b.rules.length) return null;
    const sameHead =
      a === b ||
      ((a.subject === b.subject || JSON.stringify(a.subject) === JSON.stringify(b.subject)) &&
        a.defaultDeny.ingress === b.defaultDeny.ingress &&
        a.defaultDeny.egress === b.defaultDeny.egress);
    if (!sameHead) return null;
    total += b.rules.length;
    for (let j = 0; j < b.rules.length; j++) if (a.rules[j] !== b.rules[j]) changed.push({ spec: i, rule: j });
  }
  return changed.length <= Math.max(16, total >> 3) ? { from, changed } : null;
}

/** Sums over a policy's rules (`size` of them, counted by `add` in one walk), worked out once per
 *  policy object; for a policy that changed a few rules of one whose sums are known, from those sums
 *  and those rules. `add` must depend on the rule's content alone. */
export class RuleTally {
  private readonly sums = new WeakMap<Policy, number[]>();

  constructor(
    private readonly size: number,
    private readonly add: (rule: Rule, into: number[], by: 1 | -1) => void,
  ) {}

  get(policy: Policy): number[] {
    let n = this.sums.get(policy);
    if (n !== undefined) return n;
    const e = editsOf(policy);
    const base = e && this.sums.get(e.from);
    if (e && base !== undefined) {
      n = base.slice();
      for (const { spec, rule } of e.changed) {
        this.add(policy.specs[spec].rules[rule], n, 1);
        this.add(e.from.specs[spec].rules[rule], n, -1);
      }
    } else {
      n = new Array<number>(this.size).fill(0);
      for (const s of policy.specs) for (const r of s.rules) this.add(r, n, 1);
    }
    this.sums.set(policy, n);
    return n;
  }
}
