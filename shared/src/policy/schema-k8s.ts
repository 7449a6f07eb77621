// Kubernetes NetworkPolicy (networking.k8s.io/v1) turned into the normalized model.
//  * policyTypes defaults to [Ingress] plus Egress when spec.egress is present;
//  * a rule with no from/to (or an empty list) matches every peer; no ports = every port;
//    `ingress: [{}]` therefore allows everything (unlike Cilium's `- {}`);
//  * podSelector is confined to the policy's namespace (default "default"); a namespaceSelector
//    matches the pod label io.kubernetes.pod.namespace for kubernetes.io/metadata.name and Cilium's
//    io.cilium.k8s.namespace.labels.<key> copies for other namespace labels.
import { z } from 'zod';
import { NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX } from '../identity/labels.ts';
import { cidrCovers, parseCidr } from '../net/index.ts';
import { checkRange, cidr, endPort, fail, metadata, port, selector } from './schema-common.ts';
import { withRequirement, type Selector } from './selector.ts';
import { MAX_RULES_PER_LIST } from './rule-id.ts';
import type { Direction, Peer, Policy, PortMatch, Rule } from './types.ts';

const TOO_MANY = { error: `at most ${MAX_RULES_PER_LIST} rules per list; split the policy` };

const k8sProtocol = z.unknown().transform((v, ctx) => {
  if (v === null) return 'TCP' as const;
  if (v === 'TCP' || v === 'UDP' || v === 'SCTP') return v;
  return fail(ctx, `protocol ${JSON.stringify(v)} is not one of TCP, UDP, SCTP`);
});

const k8sPort = z.object({ protocol: k8sProtocol.optional(), port: port.optional(), endPort: endPort.optional() }).strict()
  .superRefine((p, ctx) => {
    if (p.endPort !== undefined && p.port === undefined) fail(ctx, 'endPort needs port', ['endPort']);
    else checkRange({ port: p.port ?? 0, endPort: p.endPort }, ctx);
  })
  .transform((p): PortMatch => ({ proto: p.protocol ?? 'TCP', port: p.port ?? 0, ...(p.endPort !== undefined ? { endPort: p.endPort } : {}) }));

const ipBlock = z.object({ cidr, except: z.array(cidr).optional() }).strict().superRefine((b, ctx) => {
  const outer = parseCidr(b.cidr);
  for (const [i, e] of (b.except ?? []).entries()) {
    const inner = parseCidr(e);
    if (inner.prefix <= outer.prefix || !cidrCovers(outer, inner)) fail(ctx, `except ${e} must be a smaller prefix inside ${b.cidr}`, ['except', i]);
  }
});

const peer = z.object({
  podSelector: selector.optional(),
  namespaceSelector: selector.optional(),
  ipBlock: ipBlock.optional(),
}).strict().superRefine((p, ctx) => {
  if (p.ipBlock && (p.podSelector || p.namespaceSelector)) fail(ctx, 'ipBlock cannot be combined with podSelector or namespaceSelector', ['ipBlock']);
  if (!p.ipBlock && !p.podSelector && !p.namespaceSelector) fail(ctx, 'a peer needs podSelector, namespaceSelector or ipBlock');
});

const rule = (dir: Direction) => z.object({
  [dir === 'ingress' ? 'from' : 'to']: z.array(peer).nullish(),
  ports: z.array(k8sPort).nullish(),
}).strict();

/** namespaceSelector -> requirements on the pod's namespace labels (see the header). */
function namespaceRequirements(ns: Selector): Selector {
  const key = (k: string) => (k === 'kubernetes.io/metadata.name' ? NAMESPACE_KEY : `${NAMESPACE_LABELS_PREFIX}${k}`);
  const matchLabels = Object.fromEntries(Object.entries(ns.matchLabels).map(([k, v]) => [key(k), v]));
  const matchExpressions = ns.matchExpressions.map((r) => ({ ...r, key: key(r.key) }));
  // An empty namespaceSelector means "every namespace": still only pods (which carry a namespace).
  if (!Object.keys(matchLabels).length && !matchExpressions.length) {
    matchExpressions.push({ key: NAMESPACE_KEY, operator: 'Exists', values: [] });
  }
  return { matchLabels, matchExpressions };
}

type RawPeer = z.infer<typeof peer>;

function toPeer(p: RawPeer, ns: string): Peer {
  if (p.ipBlock) return { kind: 'cidr', cidr: p.ipBlock.cidr, except: p.ipBlock.except ?? [] };
  const pods = p.podSelector ?? { matchLabels: {}, matchExpressions: [] };
  if (!p.namespaceSelector) return { kind: 'endpoints', selector: withRequirement(pods, NAMESPACE_KEY, ns) };
  const nsReq = namespaceRequirements(p.namespaceSelector);
  return {
    kind: 'endpoints',
    selector: { matchLabels: { ...pods.matchLabels, ...nsReq.matchLabels }, matchExpressions: [...pods.matchExpressions, ...nsReq.matchExpressions] },
  };
}

const specSchema = z.object({
  podSelector: selector,
  policyTypes: z.array(z.enum(['Ingress', 'Egress'], { error: 'policyTypes entries are Ingress or Egress' })).optional(),
  ingress: z.array(rule('ingress')).max(MAX_RULES_PER_LIST, TOO_MANY).nullish(),
  egress: z.array(rule('egress')).max(MAX_RULES_PER_LIST, TOO_MANY).nullish(),
}).strict();

export const networkPolicySchema = z.object({
  apiVersion: z.literal('networking.k8s.io/v1', { error: 'apiVersion must be networking.k8s.io/v1 for NetworkPolicy' }),
  kind: z.literal('NetworkPolicy'),
  metadata,
  spec: specSchema,
  status: z.unknown().optional(),
}).strict().transform((d): Policy => {
  const ns = d.metadata.namespace ?? 'default';
  const types = d.spec.policyTypes ?? ['Ingress', ...(d.spec.egress ? ['Egress' as const] : [])];
  const rules: Rule[] = [];
  for (const dir of ['ingress', 'egress'] as const) {
    if (!types.includes(dir === 'ingress' ? 'Ingress' : 'Egress')) continue;
    for (const [i, r] of (d.spec[dir] ?? []).entries()) {
      const peers = (r[dir === 'ingress' ? 'from' : 'to'] ?? []) as RawPeer[];
      rules.push({
        direction: dir, action: 'allow', index: i, path: `spec.${dir}[${i}]`,
        peers: peers.length ? peers.map((p) => toPeer(p, ns)) : 'all',
        ports: (r.ports ?? []) as PortMatch[],
      });
    }
  }
  return {
    name: `${ns}/${d.metadata.name}`,
    kind: 'NetworkPolicy',
    namespace: ns,
    specs: [{
      subject: withRequirement(d.spec.podSelector, NAMESPACE_KEY, ns),
      defaultDeny: { ingress: types.includes('Ingress'), egress: types.includes('Egress') },
      rules,
    }],
  };
});
