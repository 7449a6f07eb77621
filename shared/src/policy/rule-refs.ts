// Rules the agent holds already are not sent back by the parser's worker: a 10,000-rule policy with
// one rule changed comes back as one rule and 9,999 references (by fingerprint), so the agent's event
// loop parses what changed, not the whole policy again (issue 9). The worker remembers the rules of
// its last answer; the agent the rules it took from that answer. Answers arrive in order and a new
// worker starts with nothing remembered, so both sides agree; a reference the agent cannot resolve
// anyway makes it read the text itself (parse-offloop.ts).
import type { Policy, Rule } from './types.ts';

interface RuleRef {
  $rule: string;
}

const isRef = (r: unknown): r is RuleRef =>
  typeof r === 'object' && r !== null && typeof (r as Partial<RuleRef>).$rule === 'string';

/** Worker side: each policy with the rules whose fingerprint is in `known` as references; undefined
 *  for a policy with none (send it whole). `prints`: by policy, spec and rule. */
export function withRuleRefs(policies: Policy[], prints: string[][][], known: Set<string>): (object | undefined)[] {
  return policies.map((p, i) => {
    let refs = 0;
    const specs = p.specs.map((s, j) => ({
      ...s,
      rules: s.rules.map((r, k): Rule | RuleRef => {
        const f = prints[i]?.[j]?.[k];
        if (f === undefined || !known.has(f)) return r;
        refs++;
        return { $rule: f };
      }),
    }));
    return refs ? { ...p, specs } : undefined;
  });
}

/** Agent side: references replaced by the rules `known` holds (in place, on freshly parsed objects).
 *  false when one is not known (nothing to rely on then). */
export function resolveRuleRefs(policies: Policy[], known: Map<string, Rule>): boolean {
  for (const p of policies) {
    for (const s of p.specs) {
      const rules = s.rules as (Rule | RuleRef)[];
      for (let k = 0; k < rules.length; k++) {
        const r = rules[k];
        if (!isRef(r)) continue;
        const rule = known.get(r.$rule);
        if (!rule) return false;
        rules[k] = rule;
      }
    }
  }
  return true;
}

/** The rules of `policies` by fingerprint (what the next answer may refer to). */
export function rulesByPrint(policies: Policy[], prints: string[][][]): Map<string, Rule> {
  const out = new Map<string, Rule>();
  for (const [i, p] of policies.entries()) {
    for (const [j, s] of p.specs.entries()) {
      for (const [k, r] of s.rules.entries()) {
        const f = prints[i]?.[j]?.[k];
        if (f !== undefined) out.set(f, r);
      }
    }
  }
  return out;
}
