// Kubernetes NetworkPolicy (networking.k8s.io/v1) turned into the normalized model.
//  * policyTypes defaults to [Ingress] plus Egress when spec.egress is present;
//  * a rule with no from/to (or an empty list) matches every peer; no ports = every port;
//    `ingress: [{}]` therefore allows everything (unlike Cilium's `- {}`);
//  * podSelector is confined to the policy's namespace (its own, else the import's -n, else
//    "default", which also holds endpoints without a namespace); a namespaceSelector selects
//    namespaces by name (kubernetes.io/metadata.name against the pod label io.kubernetes.pod.namespace).
//    Other namespace labels would need the Kubernetes API server: they are an error, not a selector
//    that silently matches nothing.
import { z } from 'zod';
import {
  checkRange,
  cidrWithExcept,
  endPort,
  fail,
  inNamespace,
  metadata,
  namespaceNameRequirements,
  namespaceOf,
  policyName,
  port,
  selector,
} from './schema-common.ts';
import type { Selector, SelectorRequirement } from './selector.ts';
import { MAX_RULES_PER_LIST } from './rule-id.ts';
import type { Direction, Peer, Policy, PortMatch, Rule } from './types.ts';

const TOO_MANY = { error: `at most ${MAX_RULES_PER_LIST} rules per list; split the policy` };

const k8sProtocol = z.unknown().transform((v, ctx) => {
  if (v === null) return 'TCP' as const;
  if (v === 'TCP' || v === 'UDP' || v === 'SCTP') return v;
  return fail(ctx, `protocol ${JSON.stringify(v)} is not one of TCP, UDP, SCTP`);
});

const k8sPort = z
  .object({ protocol: k8sProtocol.optional(), port: port.optional(), endPort: endPort.optional() })
  .strict()
  .superRefine((p, ctx) => {
    if (p.endPort !== undefined && p.port === undefined) fail(ctx, 'endPort needs port', ['endPort']);
    else checkRange({ port: p.port ?? 0, endPort: p.endPort }, ctx);
  })
  .transform(
    (p): PortMatch => ({
      proto: p.protocol ?? 'TCP',
      port: p.port ?? 0,
      ...(p.endPort !== undefined ? { endPort: p.endPort } : {}),
    }),
  );

const METADATA_NAME = 'kubernetes.io/metadata.name';

/** namespaceSelector -> requirements on the endpoint's namespace label. An empty one is every
 *  namespace: no requirement (endpoints without a namespace are in "default"). */
const namespaceSelector = selector.transform((ns, ctx): Selector => {
  const matchExpressions: SelectorRequirement[] = [];
  const add = (key: string, op: SelectorRequirement['operator'], values: string[], path: (string | number)[]) => {
    if (key !== METADATA_NAME) {
      fail(
        ctx,
        `namespace label "${key}": Membrane cannot know the labels of namespaces (there is no Kubernetes API server); select namespaces by name (${METADATA_NAME})`,
        path,
      );
      return;
    }
    const reqs = namespaceNameRequirements(op, values);
    if (!reqs) fail(ctx, `${METADATA_NAME} ${op}: every namespace has a name, so this would match nothing`, path);
    else matchExpressions.push(...reqs);
  };
  for (const [k, v] of Object.entries(ns.matchLabels)) add(k, 'In', [v], ['matchLabels', k]);
  for (const [i, r] of ns.matchExpressions.entries()) add(r.key, r.operator, r.values, ['matchExpressions', i, 'key']);
  return { matchLabels: {}, matchExpressions };
});

const peer = z
  .object({
    podSelector: selector.optional(),
    namespaceSelector: namespaceSelector.optional(),
    ipBlock: cidrWithExcept.optional(),
  })
  .strict()
  .superRefine((p, ctx) => {
    if (p.ipBlock && (p.podSelector || p.namespaceSelector))
      fail(ctx, 'ipBlock cannot be combined with podSelector or namespaceSelector', ['ipBlock']);
    if (!p.ipBlock && !p.podSelector && !p.namespaceSelector) fail(ctx, 'a peer needs podSelector, namespaceSelector or ipBlock');
  });

const rule = (dir: Direction) =>
  z
    .object({
      [dir === 'ingress' ? 'from' : 'to']: z.array(peer).nullish(),
      ports: z.array(k8sPort).nullish(),
    })
    .strict();

type RawPeer = z.infer<typeof peer>;

function toPeer(p: RawPeer, ns: string): Peer {
  if (p.ipBlock) return { kind: 'cidr', cidr: p.ipBlock.cidr, except: p.ipBlock.except ?? [] };
  const pods = p.podSelector ?? { matchLabels: {}, matchExpressions: [] };
  if (!p.namespaceSelector) return { kind: 'endpoints', selector: inNamespace(pods, ns) };
  return {
    kind: 'endpoints',
    selector: {
      matchLabels: pods.matchLabels,
      matchExpressions: [...pods.matchExpressions, ...p.namespaceSelector.matchExpressions],
    },
  };
}

const specSchema = z
  .object({
    podSelector: selector,
    policyTypes: z.array(z.enum(['Ingress', 'Egress'], { error: 'policyTypes entries are Ingress or Egress' })).optional(),
    ingress: z.array(rule('ingress')).max(MAX_RULES_PER_LIST, TOO_MANY).nullish(),
    egress: z.array(rule('egress')).max(MAX_RULES_PER_LIST, TOO_MANY).nullish(),
  })
  .strict();

export const networkPolicySchema = z
  .object({
    apiVersion: z.literal('networking.k8s.io/v1', { error: 'apiVersion must be networking.k8s.io/v1 for NetworkPolicy' }),
    kind: z.literal('NetworkPolicy'),
    metadata,
    spec: specSchema,
    status: z.unknown().optional(),
  })
  .strict()
  .transform((d): Policy => {
    const ns = namespaceOf(d.metadata.namespace);
    const types = d.spec.policyTypes ?? ['Ingress', ...(d.spec.egress ? ['Egress' as const] : [])];
    const rules: Rule[] = [];
    for (const dir of ['ingress', 'egress'] as const) {
      if (!types.includes(dir === 'ingress' ? 'Ingress' : 'Egress')) continue;
      for (const [i, r] of (d.spec[dir] ?? []).entries()) {
        const peers = (r[dir === 'ingress' ? 'from' : 'to'] ?? []) as RawPeer[];
        rules.push({
          direction: dir,
          action: 'allow',
          index: i,
          path: `spec.${dir}[${i}]`,
          peers: peers.length ? peers.map((p) => toPeer(p, ns)) : 'all',
          ports: (r.ports ?? []) as PortMatch[],
        });
      }
    }
    return {
      name: policyName(ns, d.metadata.name),
      kind: 'NetworkPolicy',
      namespace: ns,
      specs: [
        {
          subject: inNamespace(d.spec.podSelector, ns),
          defaultDeny: { ingress: types.includes('Ingress'), egress: types.includes('Egress') },
          rules,
        },
      ],
    };
  });
