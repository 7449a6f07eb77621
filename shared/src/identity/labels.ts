// Labels as security identities and selectors see them. Pure.
//
// A label key carries its source the way Cilium writes it ("k8s:app", "container:app",
// "reserved:host"; labels/sources.ts says which source is whose). Selectors match with Cilium's
// semantics: a key without a source (or with "any:") matches the key in every source, so a policy
// written for Kubernetes ("app: web") selects a pod labelled "k8s:app=web" and a Docker container
// labelled "container:app=web" alike; a key with a source ("k8s:app") matches that source only.
// The namespace and Cilium's derived labels count only in the k8s source, whatever the selector says:
// no other source can put an endpoint into a namespace.

import { isProtectedKey, SOURCE, splitKey, type Labels } from '../labels/sources.ts';
import { identityLabels } from '../labels/filter.ts';

export type { Labels } from '../labels/sources.ts';
export { NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX, splitKey } from '../labels/sources.ts';

/** The labels that define an identity under the default label filter (labels/filter.ts). */
export function identityRelevant(labels: Labels): Labels {
  return identityLabels(labels);
}

/** A stable text for a label set: sorted "key=value" pairs. Two equal sets give the same text. */
export function canonicalLabels(labels: Labels): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join('\n');
}

export function sameLabels(a: Labels, b: Labels): boolean {
  return canonicalLabels(a) === canonicalLabels(b);
}

/**
 * Values of `labels` for a selector key. A selector key without source (or "any:") matches the key
 * under every source; with a source, that source only. Protected keys (the namespace, Cilium's
 * derived labels) match only labels of the k8s source.
 */
export function valuesFor(labels: Labels, selectorKey: string): string[] {
  const want = splitKey(selectorKey);
  const anySource = want.source === null || want.source === SOURCE.any;
  const k8sOnly = isProtectedKey(want.key);
  const out: string[] = [];
  for (const [k, v] of Object.entries(labels)) {
    const have = splitKey(k);
    if (have.key !== want.key) continue;
    if (k8sOnly && have.source !== SOURCE.k8s) continue;
    if (anySource || have.source === want.source) out.push(v);
  }
  return out;
}

/** "k=v" / "k" / "k=" texts (CLI, trace) -> labels. */
export function parseLabelArgs(args: string[]): Labels {
  const out: Labels = {};
  for (const arg of args) {
    for (const part of arg
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)) {
      const eq = part.indexOf('=');
      const key = eq < 0 ? part : part.slice(0, eq);
      if (!key) throw new RangeError(`label "${part}" has no key (expected key=value)`);
      out[key] = eq < 0 ? '' : part.slice(eq + 1);
    }
  }
  return out;
}

export function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels).sort();
  return keys.length ? keys.map((k) => (labels[k] === '' ? k : `${k}=${labels[k]}`)).join(',') : '-';
}
