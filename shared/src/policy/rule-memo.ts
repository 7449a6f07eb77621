// Rules the parser's worker read in its last parse are not validated again: a 10,000-rule policy with
// one rule changed costs one rule's schema check and normalisation, plus a JSON.stringify of each
// rule element to recognise it (issue 17: the API answers in proportion to the change). A rule is
// known by its list (ingress, egressDeny, ...), the parse's namespace and cluster, and its text as
// JSON.stringify writes it; the normalized Rule also by its place (index and path, which rule ids and
// messages use). Only what the last parse used is kept, so memory follows the last document.
// Without a memo (inline parses: the CLI, small imports) every rule is checked as before.
import type { Rule } from './types.ts';

/** Places kept per rule text. */
const MAX_PLACES = 64;

export class RuleMemo {
  private previous = new Map<string, object>();
  private current = new Map<string, object>();
  /** The normalized rules built from a validated element, by place: the same element text in several
   *  places (a rule repeated, in another spec) keeps each place's rule object, which is how the sync
   *  tells the rules that changed from those that did not (rule-edits.ts). */
  private readonly rules = new WeakMap<object, Map<string, Rule>>();

  /** The schema's output for this rule element, if an earlier parse validated the same text. */
  validated(key: string): object | undefined {
    if (!this.previous.size) return undefined; // a first parse: nothing to find
    let v = this.current.get(key);
    if (v === undefined) {
      v = this.previous.get(key);
      if (v !== undefined) this.current.set(key, v);
    }
    return v;
  }

  remember(key: string, value: object): void {
    this.current.set(key, value);
  }

  /** The rule `make` builds from `validated` at `place`; built again only when the place changed. */
  rule(validated: object, place: string, make: () => Rule): Rule {
    let known = this.rules.get(validated);
    const rule = known?.get(place);
    if (rule) return rule;
    // Places a moved element held before are dropped now and then (rules inserted above it).
    if (!known || known.size >= MAX_PLACES) this.rules.set(validated, (known = new Map()));
    const made = make();
    known.set(place, made);
    return made;
  }

  /** After each parse: what it did not use is forgotten. */
  turn(): void {
    this.previous = this.current;
    this.current = new Map();
  }
}

/** The key of a rule element of list `list` (e.g. "ingressDeny") under the parse's context. */
export function ruleKey(list: string, namespace: string | undefined, cluster: string | undefined, element: unknown): string {
  return `${list}\u0000${namespace ?? ''}\u0000${cluster ?? ''}\u0000${JSON.stringify(element)}`;
}
