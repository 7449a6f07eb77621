// Labels as security identities see them. Pure.
//
// A label key may carry a source prefix the way Cilium writes it ("k8s:app", "docker:container-name",
// "reserved:host"). Selectors without a source (or with "any:") match a label from any source, so a
// policy written for Kubernetes ("app: web") selects a CNI pod labelled "k8s:app=web" and a Docker
// container labelled "app=web" alike.

export type Labels = Record<string, string>;

/** Prefixes recognised as a label source; anything else before a ':' is part of the key. */
export const LABEL_SOURCES = new Set(['k8s', 'docker', 'container', 'reserved', 'cidr', 'any', 'unspec', 'cni', 'membrane']);

export const NAMESPACE_KEY = 'io.kubernetes.pod.namespace';
/** Cilium's convention for a namespace's own labels, copied onto its pods. */
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';

/**
 * Labels that never take part in an identity: they are unique per container (or per rollout), so
 * keeping them would give every container its own identity and churn policy on every restart.
 */
const IRRELEVANT_KEYS = new Set([
  'docker:container-id', 'k8s:io.kubernetes.pod.uid', 'k8s:io.kubernetes.pod.name',
  'pod-template-hash', 'controller-revision-hash', 'pod-template-generation', 'statefulset.kubernetes.io/pod-name',
]);

export interface LabelKey {
  /** null when the key has no recognised source prefix. */
  source: string | null;
  key: string;
}

export function splitKey(raw: string): LabelKey {
  const colon = raw.indexOf(':');
  if (colon > 0) {
    const source = raw.slice(0, colon);
    if (LABEL_SOURCES.has(source)) return { source, key: raw.slice(colon + 1) };
  }
  return { source: null, key: raw };
}

/** The labels that define an identity (see IRRELEVANT_KEYS). */
export function identityRelevant(labels: Labels): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels)) {
    const { key } = splitKey(k);
    if (IRRELEVANT_KEYS.has(k) || IRRELEVANT_KEYS.has(key) || IRRELEVANT_KEYS.has(`k8s:${key}`)) continue;
    out[k] = v;
  }
  return out;
}

/** A stable text for a label set: sorted "key=value" pairs. Two equal sets give the same text. */
export function canonicalLabels(labels: Labels): string {
  return Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join('\n');
}

export function sameLabels(a: Labels, b: Labels): boolean {
  return canonicalLabels(a) === canonicalLabels(b);
}

/**
 * Values of `labels` for a selector key. A selector key without source (or "any:") matches the key
 * under every source; with a source it matches that source and labels that have none.
 */
export function valuesFor(labels: Labels, selectorKey: string): string[] {
  const want = splitKey(selectorKey);
  const anySource = want.source === null || want.source === 'any';
  const out: string[] = [];
  for (const [k, v] of Object.entries(labels)) {
    const have = splitKey(k);
    if (have.key !== want.key) continue;
    if (anySource || have.source === null || have.source === want.source) out.push(v);
  }
  return out;
}

/** "k=v" / "k" / "k=" texts (CLI, trace) -> labels. */
export function parseLabelArgs(args: string[]): Labels {
  const out: Labels = {};
  for (const arg of args) {
    for (const part of arg.split(',').map((s) => s.trim()).filter(Boolean)) {
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
