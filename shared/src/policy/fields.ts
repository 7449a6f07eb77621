// "Did you mean ...?" for unknown fields: the field names of both document kinds. Pure.
/** Every field name of both document kinds (the parser's tests draw their random documents from it). */
export const FIELDS: readonly string[] = [
  'apiVersion',
  'kind',
  'metadata',
  'name',
  'namespace',
  'labels',
  'annotations',
  'spec',
  'specs',
  'description',
  'endpointSelector',
  'matchLabels',
  'matchExpressions',
  'key',
  'operator',
  'values',
  'ingress',
  'ingressDeny',
  'egress',
  'egressDeny',
  'enableDefaultDeny',
  'fromEndpoints',
  'toEndpoints',
  'fromCIDR',
  'toCIDR',
  'fromCIDRSet',
  'toCIDRSet',
  'cidr',
  'except',
  'fromEntities',
  'toEntities',
  'toPorts',
  'ports',
  'port',
  'endPort',
  'protocol',
  'icmps',
  'fields',
  'type',
  'family',
  'podSelector',
  'namespaceSelector',
  'ipBlock',
  'policyTypes',
  'from',
  'to',
  'rules',
  'http',
  'method',
  'path',
  'host',
  'headers',
  'headerMatches',
  'mismatch',
  'value',
  'toFQDNs',
  'matchName',
  'matchPattern',
  'dns',
];

/** Cilium fields Membrane does not implement: named as such instead of "unknown field". */
export const UNSUPPORTED: Record<string, string> = {
  kafka: 'Kafka rules (rules.kafka)',
  l7proto: 'generic L7 rules (rules.l7proto)',
  l7: 'generic L7 rules (rules.l7)',
  serverNames: 'serverNames',
  originatingTLS: 'originatingTLS',
  terminatingTLS: 'terminatingTLS',
  listener: 'listener',
  cidrGroupRef: 'cidrGroupRef',
  cidrGroupSelector: 'cidrGroupSelector',
  fromRequires: 'fromRequires',
  toRequires: 'toRequires',
  fromGroups: 'fromGroups',
  toGroups: 'toGroups',
  fromNodes: 'fromNodes',
  toNodes: 'toNodes',
  authentication: 'authentication',
  toServices: 'toServices',
  nodeSelector: 'nodeSelector (host policies)',
};

/** Where a field that is known, but was found in the wrong place, goes. */
const PLACES: Record<string, string> = {
  description: 'in spec (or at the top level of a CiliumNetworkPolicy, or of a rule)',
  endpointSelector: 'in spec',
  ingress: 'in spec',
  ingressDeny: 'in spec',
  egress: 'in spec',
  egressDeny: 'in spec',
  enableDefaultDeny: 'in spec',
  podSelector: 'in a NetworkPolicy spec or an ingress/egress peer',
  policyTypes: 'in a NetworkPolicy spec',
  toPorts: 'in an ingress/egress rule',
  icmps: 'in an ingress/egress rule',
  ports: 'in a toPorts entry (Cilium) or a rule (NetworkPolicy)',
  port: 'in a ports entry',
  endPort: 'in a ports entry',
  protocol: 'in a ports entry',
  matchLabels: 'in a selector',
  matchExpressions: 'in a selector',
  name: 'in metadata',
  toFQDNs: 'in an egress rule',
  matchName: 'in a toFQDNs selector or a DNS rule',
  matchPattern: 'in a toFQDNs selector or a DNS rule',
  dns: 'in toPorts[].rules',
  namespace: 'in metadata',
  annotations: 'in metadata',
  http: 'in toPorts[].rules',
  fromEndpoints: 'in an ingress rule',
  toEndpoints: 'in an egress rule',
  fromCIDR: 'in an ingress rule',
  toCIDR: 'in an egress rule',
  fromCIDRSet: 'in an ingress rule',
  toCIDRSet: 'in an egress rule',
  fromEntities: 'in an ingress rule',
  toEntities: 'in an egress rule',
};

export function isField(name: string): boolean {
  return FIELDS.includes(name);
}

export function placeOf(name: string): string | undefined {
  return PLACES[name];
}

/** A known field within edit distance 2 (or differing only in case) that is not the name itself:
 *  "did you mean" never suggests the word that was written. */
export function closestField(name: string): string | undefined {
  const lower = name.toLowerCase();
  const exact = FIELDS.find((f) => f.toLowerCase() === lower && f !== name);
  if (exact) return exact;
  let best: string | undefined;
  let bestDist = 3;
  for (const f of FIELDS) {
    if (f === name || Math.abs(f.length - name.length) >= bestDist) continue;
    const d = distance(lower, f.toLowerCase(), bestDist);
    if (d < bestDist) {
      best = f;
      bestDist = d;
    }
  }
  return best;
}

/** Levenshtein distance, giving up (returning `cap`) once it cannot be below `cap`. */
function distance(a: string, b: string, cap: number): number {
  if (a.length > 64 || b.length > 64) return cap;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      rowMin = Math.min(rowMin, cur[j]);
    }
    if (rowMin >= cap) return cap;
    prev = cur;
  }
  return prev[b.length];
}
