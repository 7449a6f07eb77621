// Where a label comes from, and which labels a caller may set. Pure (membrane-cni bundles nothing
// from here; the agent and the CLI do).
//
// Every label an endpoint carries is written "source:key" the way Cilium writes it:
//   k8s:        derived from Kubernetes: the pod's namespace (CNI's K8S_POD_NAMESPACE, nothing else)
//               and the pod's labels as the container runtime holds them (containerd's CRI sandbox)
//   container:  a Docker container's labels (image labels under container labels)
//   cni:        labels a CNI caller passes (the network config's "labels", args.cni.labels)
//   api:        labels an agent API caller passes (POST /v1/endpoints, PUT .../labels)
//   reserved:   only ever set by the agent itself (reserved identities)
// A caller (cni, api) can set labels of its own source only. Keys that decide security on their own
// are the runtime's and the agent's: reserved:*, the pod namespace and Cilium's derived labels
// (io.cilium.k8s.policy.*, io.cilium.k8s.namespace.labels.*). A caller that names one of them is
// refused with an error naming the label (a pod must never be able to claim another namespace); a
// runtime source that carries one (a Docker image label, a pod label) has it dropped with a warning.

export type Labels = Record<string, string>;

export const SOURCE = {
  k8s: 'k8s',
  container: 'container',
  cni: 'cni',
  api: 'api',
  reserved: 'reserved',
  cidr: 'cidr',
  any: 'any',
  unspec: 'unspec',
} as const;
export type LabelSource = (typeof SOURCE)[keyof typeof SOURCE];

/** Prefixes read as a source; anything else before a ':' is part of the key. "docker" is how labels
 *  of Docker endpoints were written before "container" (stored endpoints may still carry it). */
export const KNOWN_SOURCES: ReadonlySet<string> = new Set([...Object.values(SOURCE), 'docker']);

/** The sources a caller of the agent can write labels in. */
export type CallerSource = 'cni' | 'api';

export const NAMESPACE_KEY = 'io.kubernetes.pod.namespace';
/** Cilium's convention for a namespace's own labels, copied onto its pods. */
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';
/** Cilium's derived per-pod labels (service account, cluster). */
export const POLICY_LABELS_PREFIX = 'io.cilium.k8s.policy.';
export const SERVICE_ACCOUNT_KEY = 'io.cilium.k8s.policy.serviceaccount';

export interface LabelKey {
  /** null when the key has no recognised source prefix. */
  source: string | null;
  key: string;
}

export function splitKey(raw: string): LabelKey {
  const colon = raw.indexOf(':');
  if (colon > 0) {
    const source = raw.slice(0, colon);
    if (KNOWN_SOURCES.has(source)) return { source, key: raw.slice(colon + 1) };
  }
  return { source: null, key: raw };
}

/** Keys (without source) only the runtime's pod metadata and the agent may set. */
export function isProtectedKey(key: string): boolean {
  return key === NAMESPACE_KEY || key.startsWith(NAMESPACE_LABELS_PREFIX) || key.startsWith(POLICY_LABELS_PREFIX);
}

/** Why a label may not come from a caller or a runtime's free-form labels; undefined when it may. */
export function protectedLabelProblem(raw: string): string | undefined {
  const { source, key } = splitKey(raw);
  if (source === SOURCE.reserved) return `"${raw}": reserved labels are set by the agent only`;
  if (key === NAMESPACE_KEY) return `"${raw}": the namespace comes only from the runtime (CNI_ARGS K8S_POD_NAMESPACE)`;
  if (isProtectedKey(key))
    return `"${raw}": ${key.startsWith(NAMESPACE_LABELS_PREFIX) ? 'namespace labels' : "Cilium's derived policy labels"} are set by the agent only`;
  return undefined;
}

export interface SourcedLabels {
  labels: Labels;
  /** One text per label that was refused (empty when all are fine). */
  problems: { key: string; message: string }[];
}

/**
 * A caller's labels in its own source: "app" becomes "cni:app"; a key already in the caller's source
 * stays; protected keys and keys in another source (k8s:app, container:app) are problems.
 */
export function callerLabels(labels: Labels | undefined, source: CallerSource): SourcedLabels {
  const out: SourcedLabels = { labels: {}, problems: [] };
  for (const [raw, value] of Object.entries(labels ?? {})) {
    const problem = protectedLabelProblem(raw);
    if (problem) {
      out.problems.push({ key: raw, message: problem });
      continue;
    }
    const { source: s, key } = splitKey(raw);
    if (s !== null && s !== source) {
      out.problems.push({
        key: raw,
        message: `"${raw}": a ${source === 'cni' ? 'CNI' : 'API'} caller sets ${source}: labels only (${s}: labels come from ${originOf(s)})`,
      });
      continue;
    }
    out.labels[`${source}:${key}`] = value;
  }
  return out;
}

/** A runtime's free-form labels (Docker container labels, a pod's labels) in `source`; protected
 *  keys are dropped and reported. */
export function runtimeLabels(
  labels: Labels | null | undefined,
  source: 'k8s' | 'container',
): { labels: Labels; dropped: string[] } {
  const out: Labels = {};
  const dropped: string[] = [];
  for (const [key, value] of Object.entries(labels ?? {})) {
    if (typeof value !== 'string' || !key) continue;
    if (isProtectedKey(key) || key.startsWith('reserved:')) {
      dropped.push(key);
      continue;
    }
    out[`${source}:${key}`] = value;
  }
  return { labels: out, dropped };
}

function originOf(source: string): string {
  switch (source) {
    case SOURCE.k8s:
      return "the runtime's pod (K8S_POD_NAMESPACE, the CRI sandbox)";
    case SOURCE.container:
    case 'docker':
      return 'the Docker container';
    case SOURCE.reserved:
      return 'the agent';
    default:
      return 'their own caller';
  }
}

/** Labels of `source` in a set. */
export function ofSource(labels: Labels, source: string): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels)) if (splitKey(k).source === source) out[k] = v;
  return out;
}
