// Which labels take part in a security identity (the agent's --label-filter). Pure.
//
// An endpoint keeps every label it has (endpoint get shows them all); its identity is the set of the
// identity-relevant ones only. Labels that are unique per pod or container (names, uids, hashes,
// replica numbers) would give every replica its own identity and mint a new one on every restart, so
// the default filter leaves them out, the way Cilium's default label filter does.
//
// A filter is a list of patterns, tried in order; the first that matches decides:
//   [source:]REGEX     keep the label          !REGEX / ![source:]REGEX   leave it out
// REGEX is matched from the start of the key (without its source); a pattern with a source matches
// labels of that source only. A label no pattern matches is kept. Reserved labels and the pod
// namespace are always kept: an identity without its namespace would merge namespaces.
import { NAMESPACE_KEY, SOURCE, splitKey, type Labels } from './sources.ts';

export interface LabelPattern {
  exclude: boolean;
  source: string | null;
  regex: RegExp;
  text: string;
}

export interface LabelFilter {
  patterns: LabelPattern[];
  /** The filter as given (for --help, status and logs). */
  text: string;
}

/** The default patterns (what `membrane-agent --help` shows). */
export const DEFAULT_LABEL_FILTER = [
  // app.kubernetes.io/* are chosen by the user and shared by replicas: keep them before the
  // kubernetes.io exclusion below would catch them.
  'app\\.kubernetes\\.io',
  // Kubernetes' per-pod bookkeeping: pod name and uid, hashes of the pod template, indexes.
  '!io\\.kubernetes\\.',
  '!kubernetes\\.io/',
  '!statefulset\\.kubernetes\\.io/pod-name',
  '!apps\\.kubernetes\\.io/pod-index',
  '!batch\\.kubernetes\\.io/',
  '!controller-uid',
  '!job-name',
  '!.*beta\\.kubernetes\\.io',
  '!k8s\\.io/',
  '!pod-template-generation$',
  '!pod-template-hash$',
  '!controller-revision-hash$',
  '!annotation\\.',
  // Docker Compose's per-container labels (the replica number, hashes of the configuration and image).
  '!com\\.docker\\.compose\\.(container-number|config-hash|image|replace)$',
  // Per-container labels older Membrane versions wrote for Docker endpoints.
  '!docker:container-(id|name)$',
  '!docker:network-name$',
].join(' ');

/** Parses a filter: patterns separated by spaces or commas. Throws RangeError naming a bad pattern. */
export function parseLabelFilter(text: string): LabelFilter {
  const patterns: LabelPattern[] = [];
  for (const raw of text.split(/[\s,]+/).filter(Boolean)) {
    const exclude = raw.startsWith('!');
    const body = exclude ? raw.slice(1) : raw;
    const { source, key } = splitKey(body);
    if (!key) throw new RangeError(`label filter pattern "${raw}" has no key pattern`);
    let regex: RegExp;
    try {
      regex = new RegExp(`^(?:${key})`);
    } catch (e) {
      throw new RangeError(`label filter pattern "${raw}" is not a valid regular expression: ${(e as Error).message}`);
    }
    patterns.push({ exclude, source, regex, text: raw });
  }
  return { patterns, text };
}

export const defaultLabelFilter: LabelFilter = parseLabelFilter(DEFAULT_LABEL_FILTER);

/** Is one label (its key with source) part of the identity? */
export function isIdentityRelevant(filter: LabelFilter, raw: string): boolean {
  const { source, key } = splitKey(raw);
  if (source === SOURCE.reserved || key === NAMESPACE_KEY) return true;
  for (const p of filter.patterns) {
    if (p.source !== null && p.source !== source) continue;
    if (p.regex.test(key)) return !p.exclude;
  }
  return true;
}

/** The identity-relevant labels of a set. */
export function identityLabels(labels: Labels, filter: LabelFilter = defaultLabelFilter): Labels {
  const out: Labels = {};
  for (const [k, v] of Object.entries(labels)) if (isIdentityRelevant(filter, k)) out[k] = v;
  return out;
}
