// "Did you mean ...?" for unknown fields: the field names of both document kinds. Pure.
const FIELDS = [
  'apiVersion', 'kind', 'metadata', 'name', 'namespace', 'labels', 'annotations', 'spec', 'specs', 'description',
  'endpointSelector', 'matchLabels', 'matchExpressions', 'key', 'operator', 'values',
  'ingress', 'ingressDeny', 'egress', 'egressDeny', 'enableDefaultDeny',
  'fromEndpoints', 'toEndpoints', 'fromCIDR', 'toCIDR', 'fromCIDRSet', 'toCIDRSet', 'cidr', 'except',
  'fromEntities', 'toEntities', 'toPorts', 'ports', 'port', 'endPort', 'protocol', 'icmps', 'fields', 'type', 'family',
  'podSelector', 'namespaceSelector', 'ipBlock', 'policyTypes', 'from', 'to',
  'rules', 'http', 'method', 'path', 'host', 'headers', 'headerMatches', 'mismatch', 'value',
];

/** Cilium fields Membrane does not implement: named as such instead of "unknown field". */
export const UNSUPPORTED: Record<string, string> = {
  kafka: 'Kafka rules (rules.kafka)', dns: 'DNS rules (rules.dns)', l7proto: 'generic L7 rules (rules.l7proto)',
  l7: 'generic L7 rules (rules.l7)', serverNames: 'serverNames', originatingTLS: 'originatingTLS',
  terminatingTLS: 'terminatingTLS', listener: 'listener', cidrGroupRef: 'cidrGroupRef', cidrGroupSelector: 'cidrGroupSelector',
  fromRequires: 'fromRequires', toRequires: 'toRequires', fromGroups: 'fromGroups', toGroups: 'toGroups',
  fromNodes: 'fromNodes', toNodes: 'toNodes', authentication: 'authentication', toServices: 'toServices',
  toFQDNs: 'toFQDNs', nodeSelector: 'nodeSelector (host policies)',
};

/** The known field within edit distance 2 (or a case-insensitive match), if any. */
export function closestField(name: string): string | undefined {
  const lower = name.toLowerCase();
  const exact = FIELDS.find((f) => f.toLowerCase() === lower);
  if (exact) return exact;
  let best: string | undefined;
  let bestDist = 3;
  for (const f of FIELDS) {
    if (Math.abs(f.length - name.length) >= bestDist) continue;
    const d = distance(lower, f.toLowerCase(), bestDist);
    if (d < bestDist) { best = f; bestDist = d; }
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
