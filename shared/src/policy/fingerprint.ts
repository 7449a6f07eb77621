// Fingerprints of parsed policies and rules: equal for equal content. They decide "unchanged" on
// import (repository.ts) and which rules a recompile can take over (compile.ts), and are worked out
// by the parser's worker thread so that the agent's event loop does not serialise 10,000 rules.
import crypto from 'node:crypto';
import type { Policy, Rule } from './types.ts';

export function fingerprint(value: Policy | Rule): string {
  const json = JSON.stringify(value);
  jsonLengths.set(value, json.length);
  return fingerprintText(json);
}

/** The length of each value's JSON text, as fingerprint() wrote it. */
const jsonLengths = new WeakMap<object, number>();

/** How long `value`'s JSON is, when fingerprint() wrote it (reparse.ts places rules in the policy's
 *  JSON by these lengths instead of scanning megabytes). */
export function jsonLength(value: Policy | Rule): number | undefined {
  return jsonLengths.get(value);
}

/** The fingerprint of a value given as its JSON text. */
export function fingerprintText(json: string): string {
  return crypto.createHash('sha256').update(json).digest('base64');
}

/** Fingerprints by object: parsed policies and rules are never changed in place. */
const known = new WeakMap<object, string>();

export function fingerprintOf(value: Policy | Rule, given?: string): string {
  let f = known.get(value);
  if (f === undefined) known.set(value, (f = given ?? later.get(value)?.() ?? fingerprint(value)));
  return f;
}

/** Policies an edit answer made (reparse.ts): their fingerprint worked out only if asked for (a
 *  SHA-256 of megabytes), and the policy each was edited from, which it is known to differ from. */
const later = new WeakMap<object, () => string>();
const editedFrom = new WeakMap<Policy, Policy>();

export function adoptEdited(policy: Policy, from: Policy, print: () => string): void {
  later.set(policy, print);
  editedFrom.set(policy, from);
}

/** Whether `a` and `b` have the same content: known without hashing for an edit and its base. */
export function samePolicy(a: Policy, b: Policy): boolean {
  if (a === b) return true;
  if (editedFrom.get(a) === b || editedFrom.get(b) === a) return false;
  return fingerprintOf(a) === fingerprintOf(b);
}

/** Every rule's fingerprint, by policy, spec and rule (what the worker sends along; a rule object the
 *  worker's memo gave again keeps the one worked out before). */
export function ruleFingerprints(policies: Policy[]): string[][][] {
  return policies.map((p) => p.specs.map((s) => s.rules.map((r) => fingerprintOf(r))));
}

/** Adopts fingerprints the worker worked out for these (cloned) policies. */
export function adoptFingerprints(policies: Policy[], policyPrints?: string[], rulePrints?: string[][][]): void {
  for (const [i, p] of policies.entries()) {
    if (policyPrints?.[i]) fingerprintOf(p, policyPrints[i]);
    for (const [j, s] of p.specs.entries()) {
      for (const [k, r] of s.rules.entries()) {
        const f = rulePrints?.[i]?.[j]?.[k];
        if (f) fingerprintOf(r, f);
      }
    }
  }
}
