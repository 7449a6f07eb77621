// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2), the L3/L4 subset, turned into
// the normalized model. Semantics follow Cilium:
//  * an endpoint selected by a spec with ingress/ingressDeny (egress/egressDeny) rules is default-deny
//    in that direction, unless enableDefaultDeny says otherwise;
//  * a rule with no L3 field but toPorts/icmps applies to every peer; a rule with neither (`- {}`)
//    allows nothing (Cilium's "deny all ingress" idiom);
//  * in a namespaced policy, the subject and every endpoint selector are confined to the policy's
//    namespace unless the selector names the namespace label itself; a CiliumNetworkPolicy without a
//    namespace is in the import's (-n) or the default one (schema-common.ts DEFAULT_NAMESPACE);
//  * a `toPorts` port without a number is every port of its protocol;
//  * a bare rule (the JSON rule arrays `cilium-dbg policy import` takes) is named by its `name` (or
//    io.cilium.k8s.policy.name) label and, like cilium-dbg's, applies cluster-wide unless it carries
//    io.cilium.k8s.policy.namespace or the import names a namespace.
import { z } from 'zod';
import { ICMP_TYPE_NAMES } from './ports.ts';
import { MAX_RULES_PER_LIST } from './rule-id.ts';
import { ruleKey as memoKey } from './rule-memo.ts';
import type { Selector } from './selector.ts';
import {
  checkRange,
  cidr,
  cidrWithExcept,
  endPort,
  fail,
  inNamespace,
  metadata,
  namespaceOf,
  parseContext,
  POLICY_NAME,
  policyName,
  port,
  protocol,
  selector,
} from './schema-common.ts';
import { checkL7Ports, l7Rules, type RawL7Rules } from './schema-l7.ts';
import { checkDnsPorts, fqdnSelector } from './schema-fqdn.ts';
import type { FqdnSelector } from '../fqdn/selector.ts';
import {
  ENTITIES,
  type Direction,
  type Entity,
  type L7PortRule,
  type Peer,
  type Policy,
  type PolicySpec,
  type PortMatch,
  type Rule,
} from './types.ts';

const TOO_MANY = { error: `at most ${MAX_RULES_PER_LIST} rules per list; split the policy` };

const icmpField = z
  .object({
    type: z.unknown(),
    family: z.enum(['IPv4', 'IPv6'], { error: 'family must be IPv4 or IPv6' }).optional(),
  })
  .strict()
  .transform((f, ctx): PortMatch => {
    const fam = f.family === 'IPv6' ? 'ICMPv6' : 'ICMP';
    if (typeof f.type === 'number' && Number.isInteger(f.type) && f.type >= 0 && f.type <= 255)
      return { proto: fam, type: f.type };
    if (typeof f.type === 'string' && /^\d{1,3}$/.test(f.type) && Number(f.type) <= 255)
      return { proto: fam, type: Number(f.type) };
    if (typeof f.type === 'string' && f.type in ICMP_TYPE_NAMES[fam]) return { proto: fam, type: ICMP_TYPE_NAMES[fam][f.type] };
    return fail(
      ctx,
      `ICMP type ${JSON.stringify(f.type)} is not a number 0-255 or a known ${fam} type name (e.g. ${Object.keys(ICMP_TYPE_NAMES[fam]).slice(0, 3).join(', ')})`,
      ['type'],
    );
  });

const icmps = z.array(z.object({ fields: z.array(icmpField).min(1, { error: 'fields needs at least one ICMP type' }) }).strict());

// No port: every port of the protocol (Cilium's reading of a port-less entry).
const portProtocol = z
  .object({ port: port.optional(), endPort: endPort.optional(), protocol: protocol.optional() })
  .strict()
  .superRefine((p, ctx) => checkRange({ port: p.port ?? 0, endPort: p.endPort }, ctx))
  .transform(
    (p): PortMatch => ({
      proto: p.protocol ?? 'ANY',
      port: p.port ?? 0,
      ...(p.endPort !== undefined ? { endPort: p.endPort } : {}),
    }),
  );

// Cilium fields Membrane does not implement (FQDN, groups, TLS, ...) are left out of the schemas:
// they come back as unknown keys, which parse.ts words as "not supported" (fields.ts UNSUPPORTED).
// DNS rules are egress only (which names a pod may look up), as in Cilium.
const portRule = (dir: Direction) =>
  z
    .object({ ports: z.array(portProtocol).nullish(), rules: l7Rules.nullish() })
    .strict()
    .superRefine((r, ctx) => {
      if (r.rules?.http?.length) checkL7Ports(r.ports, ctx, ['ports']);
      if (r.rules?.dns) {
        if (dir === 'ingress')
          fail(ctx, 'DNS rules are not allowed on ingress: they say which names an endpoint may look up (egress)', [
            'rules',
            'dns',
          ]);
        else checkDnsPorts(r.ports, ctx, ['ports']);
      }
    });

// Deny rules are L3/L4 only (as in Cilium, whose deny port rules have no `rules` field).
const portDenyRule = z
  .object({ ports: z.array(portProtocol).nullish(), rules: z.unknown().optional() })
  .strict()
  .superRefine((r, ctx) => {
    if (r.rules !== undefined && r.rules !== null)
      fail(
        ctx,
        'L7 rules cannot deny: ingressDeny/egressDeny are L3/L4 only (an L7 allow rule denies every request it does not match)',
        ['rules'],
      );
  });

const entity = z.string().transform((e, ctx): Entity => {
  if ((ENTITIES as readonly string[]).includes(e)) return e as Entity;
  return fail(ctx, `entity "${e}" is not one of ${ENTITIES.join(', ')}`);
});

function l3Fields(dir: Direction) {
  const p = dir === 'ingress' ? 'from' : 'to';
  return {
    [`${p}Endpoints`]: z.array(selector).nullish(),
    [`${p}CIDR`]: z.array(cidr).nullish(),
    [`${p}CIDRSet`]: z.array(cidrWithExcept).nullish(),
    [`${p}Entities`]: z.array(entity).nullish(),
    ...(dir === 'egress' ? { toFQDNs: z.array(fqdnSelector).nullish() } : {}),
  };
}

const L3_FIELDS = {
  ingress: ['fromEndpoints', 'fromCIDR', 'fromCIDRSet', 'fromEntities'],
  egress: ['toEndpoints', 'toCIDR', 'toCIDRSet', 'toEntities', 'toFQDNs'],
};

/** As in Cilium, toFQDNs stands alone among a rule's L3 fields (its peers are addresses DNS taught). */
function checkFqdnAlone(r: Record<string, unknown>, ctx: z.RefinementCtx): void {
  if (!r.toFQDNs) return;
  const other = L3_FIELDS.egress.find((f) => f !== 'toFQDNs' && r[f] !== undefined && r[f] !== null);
  if (other) fail(ctx, `combining toFQDNs and ${other} in one rule is not supported: write two rules`, ['toFQDNs']);
}

type RawRule = Record<string, unknown> & {
  toPorts?: { ports?: PortMatch[] | null; rules?: RawL7Rules | null }[] | null;
  icmps?: { fields: PortMatch[] }[];
};

function ruleSchema(dir: Direction, deny = false) {
  return z
    .object({ ...l3Fields(dir), toPorts: z.array(deny ? portDenyRule : portRule(dir)).nullish(), icmps: icmps.nullish() })
    .strict()
    .superRefine((r, ctx) => checkFqdnAlone(r, ctx));
}

/** A rule list, each element checked by ruleSchema. */
function plainRuleList(_list: string, dir: Direction, deny = false) {
  return z.array(ruleSchema(dir, deny)).max(MAX_RULES_PER_LIST, TOO_MANY);
}

/** The same for the parser's worker: an element whose text the parse's memo (rule-memo.ts) validated
 *  before is not checked again. On a bad element its issues are added roughly as zod would; parse.ts
 *  reads a refused document again without the memo, so users see exactly the plain schema's issues. */
function memoRuleList(list: string, dir: Direction, deny = false) {
  const one = ruleSchema(dir, deny);
  return z
    .array(z.unknown())
    .max(MAX_RULES_PER_LIST, TOO_MANY)
    .transform((items, ctx) => {
      const { memo, namespace, cluster } = parseContext();
      return items.map((item, i) => {
        const key = memo ? memoKey(list, namespace, cluster, item) : '';
        const known = memo?.validated(key);
        if (known) return known;
        const r = one.safeParse(item);
        if (!r.success) {
          for (const issue of r.error.issues)
            ctx.addIssue({ ...issue, path: [i, ...issue.path] } as Parameters<typeof ctx.addIssue>[0]);
          return {}; // a harmless rule for the document's transform, should it still run
        }
        memo?.remember(key, r.data);
        return r.data;
      });
    });
}

/** The toPorts elements with HTTP or DNS rules. `http: []` (or no rules) is plain L4; `dns: []` too
 *  (Cilium: an empty DNS rule list is no DNS rule). */
function l7Of(raw: RawRule, path: string): L7PortRule[] {
  const out: L7PortRule[] = [];
  for (const [i, tp] of (raw.toPorts ?? []).entries()) {
    const http = tp.rules?.http;
    const dns = tp.rules?.dns;
    if (http?.length) out.push({ ports: tp.ports ?? [], http, path: `${path}.toPorts[${i}].rules.http` });
    if (dns?.length) out.push({ ports: tp.ports ?? [], http: [], dns, path: `${path}.toPorts[${i}].rules.dns` });
  }
  return out;
}

/** One Cilium rule element -> peers and ports of the normalized model. */
function toRule(raw: RawRule, dir: Direction, deny: boolean, index: number, path: string, ns: string | undefined): Rule {
  const p = dir === 'ingress' ? 'from' : 'to';
  const selectors = raw[`${p}Endpoints`] as Selector[] | null | undefined;
  const cidrs = raw[`${p}CIDR`] as string[] | null | undefined;
  const sets = raw[`${p}CIDRSet`] as { cidr: string; except?: string[] }[] | null | undefined;
  const entities = raw[`${p}Entities`] as Entity[] | null | undefined;
  const fqdns = dir === 'egress' ? (raw.toFQDNs as FqdnSelector[] | null | undefined) : undefined;
  const hasL3 = [selectors, cidrs, sets, entities, fqdns].some((x) => x !== undefined && x !== null);
  const ports: PortMatch[] = [
    ...(raw.toPorts ?? []).flatMap((tp) => tp.ports ?? []),
    ...(raw.icmps ?? []).flatMap((i) => i.fields),
  ];
  const hasL4 = (raw.toPorts?.length ?? 0) > 0 || (raw.icmps?.length ?? 0) > 0;
  let peers: Peer[] | 'all';
  if (hasL3) {
    peers = [
      ...(selectors ?? []).map((s): Peer => ({ kind: 'endpoints', selector: ns ? inNamespace(s, ns) : s })),
      ...(cidrs ?? []).map((c): Peer => ({ kind: 'cidr', cidr: c, except: [] })),
      ...(sets ?? []).map((s): Peer => ({ kind: 'cidr', cidr: s.cidr, except: s.except ?? [] })),
      ...(entities ?? []).map((e): Peer => ({ kind: 'entity', entity: e })),
      ...(fqdns ?? []).map((selector): Peer => ({ kind: 'fqdn', selector })),
    ];
  } else {
    peers = hasL4 ? 'all' : [];
  }
  const l7 = deny ? [] : l7Of(raw, path);
  return { direction: dir, action: deny ? 'deny' : 'allow', index, path, peers, ports, ...(l7.length ? { l7 } : {}) };
}

/** A rule label: {key, value, source} as Cilium writes them, or "source:key=value". */
const ruleLabel = z
  .union(
    [
      z.object({ key: z.string().min(1), value: z.string().optional(), source: z.string().optional() }).strict(),
      z.string().min(1),
    ],
    { error: 'a rule label is {key, value, source} or "source:key=value"' },
  )
  .transform((l) => {
    if (typeof l !== 'string') return { key: l.key.replace(/^(k8s|unspec|any):/, ''), value: l.value ?? '' };
    const eq = l.indexOf('=');
    const key = (eq >= 0 ? l.slice(0, eq) : l).replace(/^(k8s|unspec|any):/, '');
    return { key, value: eq >= 0 ? l.slice(eq + 1) : '' };
  });

function specSchemaOf(ruleList: typeof plainRuleList) {
  return z
    .object({
      endpointSelector: selector.optional(),
      ingress: ruleList('ingress', 'ingress').nullish(),
      ingressDeny: ruleList('ingressDeny', 'ingress', true).nullish(),
      egress: ruleList('egress', 'egress').nullish(),
      egressDeny: ruleList('egressDeny', 'egress', true).nullish(),
      enableDefaultDeny: z.object({ ingress: z.boolean().optional(), egress: z.boolean().optional() }).strict().optional(),
      labels: z.array(ruleLabel).optional(),
      description: z.string().optional(),
    })
    .strict()
    .superRefine((s, ctx) => {
      if (!s.endpointSelector) fail(ctx, 'endpointSelector is required (use {} to select every endpoint)', ['endpointSelector']);
    });
}

const specSchema = specSchemaOf(plainRuleList);
/** The worker's (parse.ts picks it when the parse has a memo). */
const memoSpecSchema = specSchemaOf(memoRuleList as unknown as typeof plainRuleList);

type RawSpec = z.infer<typeof specSchema>;
export const LISTS = [
  ['ingress', 'ingress', false],
  ['ingressDeny', 'ingress', true],
  ['egress', 'egress', false],
  ['egressDeny', 'egress', true],
] as const;

/** `bare`: a rule of a rule array, whose rules' paths start at the rule ("ingress[0]"). */
function toSpecs(raw: { spec?: RawSpec; specs?: RawSpec[] }, ns: string | undefined, bare = false): PolicySpec[] {
  const entries: [RawSpec, string][] = [
    ...(raw.spec ? [[raw.spec, bare ? '' : 'spec'] as [RawSpec, string]] : []),
    ...(raw.specs ?? []).map((s, i) => [s, `specs[${i}]`] as [RawSpec, string]),
  ];
  const ordinal: Record<string, number> = {};
  const { memo } = parseContext();
  return entries.map(([s, where]) => {
    const rules: Rule[] = [];
    for (const [field, dir, deny] of LISTS) {
      for (const [i, r] of (s[field] ?? []).entries()) {
        const index = (ordinal[field] = (ordinal[field] ?? -1) + 1);
        const path = `${where ? `${where}.` : ''}${field}[${i}]`;
        const make = () => toRule(r as RawRule, dir, deny, index, path, ns);
        rules.push(memo ? memo.rule(r as object, `${field}\u0000${index}\u0000${path}\u0000${ns ?? ''}`, make) : make());
      }
    }
    const has = (a?: unknown[] | null, b?: unknown[] | null) => (a?.length ?? 0) + (b?.length ?? 0) > 0;
    const subject = s.endpointSelector!;
    return {
      subject: ns ? inNamespace(subject, ns) : subject,
      defaultDeny: {
        ingress: s.enableDefaultDeny?.ingress ?? has(s.ingress, s.ingressDeny),
        egress: s.enableDefaultDeny?.egress ?? has(s.egress, s.egressDeny),
      },
      rules,
    };
  });
}

/** The schema of one element of each rule list, built when first asked for (reparse.ts). */
const elementSchemas = new Map<string, ReturnType<typeof ruleSchema>>();

/** One element of `list` read alone, as a parse of the whole document reads spec.<list>[i] of a policy
 *  with one spec (reparse.ts); undefined when the schema refuses it (the caller then reads it all). */
export function specRuleOf(list: string, item: unknown, i: number, ns: string | undefined): Rule | undefined {
  const entry = LISTS.find(([field]) => field === list);
  if (!entry) return undefined;
  const [, dir, deny] = entry;
  let schema = elementSchemas.get(list);
  if (!schema) elementSchemas.set(list, (schema = ruleSchema(dir, deny)));
  const r = schema.safeParse(item);
  return r.success ? toRule(r.data as RawRule, dir, deny, i, `spec.${list}[${i}]`, ns) : undefined;
}

function policySchemaOf(spec: typeof specSchema) {
  return z
    .object({
      apiVersion: z.literal('cilium.io/v2', { error: 'apiVersion must be cilium.io/v2 for this kind' }),
      kind: z.enum(['CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy']),
      metadata,
      spec: spec.optional(),
      specs: z.array(spec).optional(),
      status: z.unknown().optional(),
      // Outside spec, as in Cilium's own example l7/http/simple/l7.yaml; Cilium's reader ignores it.
      description: z.string().optional(),
    })
    .strict()
    .superRefine((d, ctx) => {
      if (!d.spec && !d.specs?.length) fail(ctx, 'a policy needs "spec" or "specs"', ['spec']);
      if (d.kind === 'CiliumClusterwideNetworkPolicy' && d.metadata.namespace)
        fail(ctx, 'a clusterwide policy has no namespace', ['metadata', 'namespace']);
    })
    .transform((d): Policy => {
      const ns = d.kind === 'CiliumNetworkPolicy' ? namespaceOf(d.metadata.namespace) : undefined;
      const description = d.spec?.description ?? d.specs?.find((s) => s.description)?.description ?? d.description;
      return {
        name: policyName(ns, d.metadata.name),
        kind: d.kind,
        ...(ns ? { namespace: ns } : {}),
        ...(description ? { description } : {}),
        specs: toSpecs(d, ns),
      };
    });
}

export const ciliumPolicySchema = policySchemaOf(specSchema);
/** The same, with rules an earlier parse validated taken as they are (the parse's memo). */
export const ciliumPolicyMemoSchema = policySchemaOf(memoSpecSchema);

const NAME_KEYS = ['name', 'io.cilium.k8s.policy.name'];
const NAMESPACE_LABEL = 'io.cilium.k8s.policy.namespace';

/** A bare Cilium rule, as an element of the JSON rule arrays `cilium-dbg policy import` takes. */
export const ciliumRuleSchema = specSchema.transform((r, ctx): Policy => {
  const labels = r.labels ?? [];
  const named = labels.find((l) => NAME_KEYS.includes(l.key));
  if (!named?.value) {
    return fail(ctx, 'a rule needs a name: add labels: [{key: name, value: NAME}] (Membrane names every policy it keeps)', [
      'labels',
    ]);
  }
  if (!POLICY_NAME.test(named.value)) {
    return fail(
      ctx,
      `the name label "${named.value}" is not a policy name (lower case letters, digits, "-" and ".", starting and ending alphanumeric)`,
      ['labels'],
    );
  }
  const ns = labels.find((l) => l.key === NAMESPACE_LABEL)?.value || parseContext().namespace;
  return {
    name: policyName(ns, named.value),
    kind: ns ? 'CiliumNetworkPolicy' : 'CiliumClusterwideNetworkPolicy',
    ...(ns ? { namespace: ns } : {}),
    ...(r.description ? { description: r.description } : {}),
    specs: toSpecs({ spec: r }, ns, true),
  };
});
