// Kubernetes-style label selectors (matchLabels + matchExpressions), source-aware. Pure.
import { canonicalLabels, valuesFor, type Labels } from '../identity/labels.ts';

/** InOrAbsent is Membrane's own and never comes from a document: the key has one of the values or is
 *  not there at all. The default namespace uses it, so endpoints without a namespace (Docker
 *  containers, endpoints created through the API) are in it. */
export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist' | 'InOrAbsent';

export interface SelectorRequirement {
  key: string;
  operator: SelectorOperator;
  values: string[];
}

export interface Selector {
  matchLabels: Labels;
  matchExpressions: SelectorRequirement[];
}

export function isEmptySelector(s: Selector): boolean {
  return Object.keys(s.matchLabels).length === 0 && s.matchExpressions.length === 0;
}

/** Does a label set satisfy every requirement? (An empty selector matches everything.) */
export function matches(s: Selector, labels: Labels): boolean {
  for (const [k, v] of Object.entries(s.matchLabels)) {
    if (!valuesFor(labels, k).includes(v)) return false;
  }
  for (const r of s.matchExpressions) {
    const have = valuesFor(labels, r.key);
    switch (r.operator) {
      case 'In':
        if (!have.some((v) => r.values.includes(v))) return false;
        break;
      case 'NotIn':
        if (have.some((v) => r.values.includes(v))) return false;
        break;
      case 'Exists':
        if (!have.length) return false;
        break;
      case 'DoesNotExist':
        if (have.length) return false;
        break;
      case 'InOrAbsent':
        if (have.length && !have.some((v) => r.values.includes(v))) return false;
        break;
    }
  }
  return true;
}

/** Does the selector constrain `key` (with or without a k8s:/any: source)? */
export function mentionsKey(s: Selector, key: string): boolean {
  const bare = (k: string) => k.replace(/^(k8s|any):/, '');
  return Object.keys(s.matchLabels).some((k) => bare(k) === key) || s.matchExpressions.some((r) => bare(r.key) === key);
}

/** Adds requirements (e.g. the policy's namespace) unless the selector already constrains the key. */
export function withRequirement(s: Selector, key: string, value: string): Selector {
  if (mentionsKey(s, key)) return s;
  return { matchLabels: { ...s.matchLabels, [key]: value }, matchExpressions: s.matchExpressions };
}

/** Stable text of a selector, used to cache its matches. */
export function selectorKey(s: Selector): string {
  const exprs = s.matchExpressions.map((r) => `${r.key} ${r.operator} ${[...r.values].sort().join('|')}`).sort();
  return `${canonicalLabels(s.matchLabels)}\u0000${exprs.join('\u0000')}`;
}
