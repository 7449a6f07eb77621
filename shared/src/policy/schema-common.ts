// Schema pieces shared by the CiliumNetworkPolicy and Kubernetes NetworkPolicy documents. Every
// semantic check happens inside the schema (transform + addIssue), so each error carries the path of
// the field it is about; the parser turns that path into a line number.
import { z } from 'zod';
import { NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX } from '../identity/labels.ts';
import { AddressError, cidrCovers, normalizeCidr, parseCidr } from '../net/index.ts';
import { MAX_RANGE_PORTS } from './ports.ts';
import { mentionsKey, withRequirement, type Selector, type SelectorRequirement } from './selector.ts';
import type { RuleMemo } from './rule-memo.ts';

type Ctx = z.RefinementCtx;

/** The namespace of namespaced documents that name none (and no -n was given), as kubectl's. Endpoints
 *  without a namespace (Docker containers, endpoints created through the API) are in it too. */
export const DEFAULT_NAMESPACE = 'default';

/** What a parse knows beyond the text: the import's namespace (membrane policy import -n) and, on an
 *  agent, its cluster (selectors on Cilium's derived cluster label are checked against it). */
export interface ParseContext {
  namespace?: string;
  /** This node's cluster ("default" on a single node); undefined when not known (policy validate). */
  cluster?: string;
  /** Rules an earlier parse validated (the parser's worker keeps one: rule-memo.ts). */
  memo?: RuleMemo;
}

let current: ParseContext = {};

/** Runs a (synchronous) parse with `c` in force for the schemas' transforms. */
export function withParseContext<T>(c: ParseContext, fn: () => T): T {
  const prev = current;
  current = c;
  try {
    return fn();
  } finally {
    current = prev;
  }
}

export function parseContext(): ParseContext {
  return current;
}

/** A namespaced document's namespace: its own, else the import's, else the default one. */
export function namespaceOf(own: string | undefined): string {
  return own ?? current.namespace ?? DEFAULT_NAMESPACE;
}

/** Policy names: "namespace/name", and just "name" in the default namespace (as kubectl shows it). */
export function policyName(ns: string | undefined, name: string): string {
  return ns && ns !== DEFAULT_NAMESPACE ? `${ns}/${name}` : name;
}

/** Confines a selector to a namespace unless it names the namespace label itself. The default
 *  namespace takes in endpoints that have no namespace. */
export function inNamespace(s: Selector, ns: string): Selector {
  if (mentionsKey(s, NAMESPACE_KEY)) return s;
  if (ns !== DEFAULT_NAMESPACE) return withRequirement(s, NAMESPACE_KEY, ns);
  return {
    matchLabels: s.matchLabels,
    matchExpressions: [...s.matchExpressions, { key: NAMESPACE_KEY, operator: 'InOrAbsent', values: [DEFAULT_NAMESPACE] }],
  };
}

export function fail(ctx: Ctx, message: string, path: (string | number)[] = []): typeof z.NEVER {
  ctx.addIssue({ code: 'custom', message, path });
  return z.NEVER;
}

// Kubernetes label syntax: optional DNS prefix "/" name of [A-Za-z0-9_.-], plus our source prefix.
const LABEL_KEY =
  /^(?:[a-z][a-z0-9-]*:)?(?:[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

export const labelKey = z.string().superRefine((k, ctx) => {
  if (!LABEL_KEY.test(k)) ctx.addIssue({ code: 'custom', message: `"${k}" is not a valid label key` });
});

const labelValue = z.unknown().transform((v, ctx) => {
  if (typeof v === 'number' || typeof v === 'boolean') v = String(v); // YAML `tier: 1` means "1"
  if (v === null) v = '';
  if (typeof v !== 'string') return fail(ctx, 'a label value must be a string');
  // Not Kubernetes' 63-character syntax: Docker and image labels (which selectors may name) are freer.
  if (v.length > 1024 || /[\u0000-\u001f]/.test(v))
    return fail(ctx, 'a label value is at most 1024 characters without control characters');
  return v;
});

const requirement = z
  .object({
    key: labelKey,
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist'], { error: 'operator must be In, NotIn, Exists or DoesNotExist' }),
    values: z.array(labelValue).optional(),
  })
  .strict()
  .transform((r, ctx): SelectorRequirement => {
    const values = r.values ?? [];
    if ((r.operator === 'In' || r.operator === 'NotIn') && !values.length)
      fail(ctx, `operator ${r.operator} needs at least one value`, ['values']);
    if ((r.operator === 'Exists' || r.operator === 'DoesNotExist') && values.length)
      fail(ctx, `operator ${r.operator} takes no values`, ['values']);
    return { key: r.key, operator: r.operator, values };
  });

const CLUSTER_KEY = 'io.cilium.k8s.policy.cluster';
const METADATA_NAME = 'kubernetes.io/metadata.name';
const bareKey = (k: string) => k.replace(/^(k8s|any):/, '');

/**
 * Labels Cilium derives for every endpoint, as Membrane can (or cannot) know them:
 *  - io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name is the namespace's name: the pod's
 *    namespace label; other namespace labels need the Kubernetes API server Membrane does not have:
 *    an error, never a selector that silently matches nothing;
 *  - io.cilium.k8s.policy.cluster is this node's cluster for every endpoint it has (no cluster mesh):
 *    a requirement it satisfies is dropped, one it cannot is an error;
 *  - io.cilium.k8s.policy.serviceaccount is kept: the runtime reports it for the pods it runs.
 */
/** A requirement on a namespace's name as requirements on the endpoint's namespace label, endpoints
 *  without one counting as the default namespace's. null: no namespace can match (DoesNotExist). */
export function namespaceNameRequirements(op: SelectorRequirement['operator'], values: string[]): SelectorRequirement[] | null {
  const hasDefault = values.includes(DEFAULT_NAMESPACE);
  switch (op) {
    case 'In':
    case 'InOrAbsent':
      return [{ key: NAMESPACE_KEY, operator: hasDefault ? 'InOrAbsent' : 'In', values }];
    case 'NotIn':
      return hasDefault
        ? [
            { key: NAMESPACE_KEY, operator: 'NotIn', values },
            { key: NAMESPACE_KEY, operator: 'Exists', values: [] },
          ]
        : [{ key: NAMESPACE_KEY, operator: 'NotIn', values }];
    case 'Exists':
      return [];
    case 'DoesNotExist':
      return null;
  }
}

function derived(s: Selector, ctx: Ctx): Selector {
  const matchLabels: Record<string, string> = {};
  const matchExpressions: SelectorRequirement[] = [];
  const cluster = current.cluster;
  const clusterSatisfies = (op: string, values: string[]) => {
    if (op === 'Exists') return true;
    if (op === 'DoesNotExist') return false;
    return (op === 'NotIn') !== values.includes(cluster!);
  };
  const check = (
    key: string,
    op: SelectorRequirement['operator'],
    values: string[],
    path: (string | number)[],
  ): string | null => {
    const bare = bareKey(key);
    if (bare === `${NAMESPACE_LABELS_PREFIX}${METADATA_NAME}`) {
      const reqs = namespaceNameRequirements(op, values);
      if (!reqs) fail(ctx, `"${key}" ${op}: every endpoint is in a namespace, so this would match nothing`, path);
      else matchExpressions.push(...reqs);
      return null;
    }
    if (bare.startsWith(NAMESPACE_LABELS_PREFIX)) {
      fail(
        ctx,
        `"${key}": Membrane cannot know the labels of namespaces (there is no Kubernetes API server); select namespaces by name (${NAMESPACE_KEY})`,
        path,
      );
      return null;
    }
    if (bare === CLUSTER_KEY && cluster !== undefined) {
      if (clusterSatisfies(op, values)) return null; // every endpoint of this node is in this cluster
      fail(
        ctx,
        `"${key}": this node is in cluster "${cluster}" and Membrane connects no other clusters, so this would match nothing`,
        path,
      );
      return null;
    }
    return key;
  };
  for (const [k, v] of Object.entries(s.matchLabels)) {
    const key = check(k, 'In', [v], ['matchLabels', k]);
    if (key) matchLabels[key] = v;
  }
  for (const [i, r] of s.matchExpressions.entries()) {
    const key = check(r.key, r.operator, r.values, ['matchExpressions', i, 'key']);
    if (key) matchExpressions.push({ ...r, key });
  }
  return { matchLabels, matchExpressions };
}

export const selector = z
  .object({
    matchLabels: z.record(labelKey, labelValue).nullish(),
    matchExpressions: z.array(requirement).nullish(),
  })
  .strict()
  .transform(
    (s, ctx): Selector => derived({ matchLabels: s.matchLabels ?? {}, matchExpressions: s.matchExpressions ?? [] }, ctx),
  );

export const cidr = z.unknown().transform((v, ctx) => {
  if (typeof v !== 'string') return fail(ctx, 'a CIDR must be a string like 198.18.0.0/15');
  try {
    return normalizeCidr(v);
  } catch (e) {
    return fail(ctx, e instanceof AddressError ? e.message : `"${v}" is not a CIDR`);
  }
});

/** port: number or numeric string; 0 means every port. Named ports need a pod spec we do not have. */
/** A CIDR with exceptions (Cilium's fromCIDRSet/toCIDRSet entry, Kubernetes' ipBlock): every
 *  exception a smaller prefix inside it. */
export const cidrWithExcept = z
  .object({ cidr, except: z.array(cidr).optional() })
  .strict()
  .superRefine((r, ctx) => {
    const outer = parseCidr(r.cidr);
    for (const [i, e] of (r.except ?? []).entries()) {
      const inner = parseCidr(e);
      if (inner.prefix <= outer.prefix || !cidrCovers(outer, inner))
        fail(ctx, `except ${e} must be a smaller prefix inside ${r.cidr}`, ['except', i]);
    }
  });

export const port = z.unknown().transform((v, ctx) => {
  const text = typeof v === 'number' ? String(v) : v;
  if (typeof text !== 'string') return fail(ctx, 'a port must be a number or a numeric string');
  if (!/^\d{1,5}$/.test(text.trim())) {
    return fail(
      ctx,
      /^[a-z]/i.test(text) ? `named port "${text}" is not supported (use the port number)` : `"${text}" is not a port number`,
    );
  }
  const n = Number(text);
  if (n > 65535) return fail(ctx, `port ${n} is out of range (0-65535)`);
  return n;
});

export const endPort = z.number({ error: 'endPort must be a number' }).int().min(1).max(65535);

/** A port range may not exceed MAX_RANGE_PORTS (see ports.ts for why ranges are expanded). */
export function checkRange(p: { port: number; endPort?: number }, ctx: Ctx): void {
  if (p.endPort === undefined) return;
  if (p.port === 0) fail(ctx, 'endPort needs a non-zero port', ['endPort']);
  else if (p.endPort < p.port) fail(ctx, `endPort ${p.endPort} is below port ${p.port}`, ['endPort']);
  else if (p.endPort - p.port + 1 > MAX_RANGE_PORTS) {
    fail(
      ctx,
      `port range ${p.port}-${p.endPort} covers ${p.endPort - p.port + 1} ports; at most ${MAX_RANGE_PORTS} per range (use port 0 for all ports)`,
      ['endPort'],
    );
  }
}

/** Cilium-style names that Kubernetes people type in lower case too. Use with .optional(). */
export const protocol = z.unknown().transform((v, ctx) => {
  if (v === null || v === '') return 'ANY' as const;
  const up = typeof v === 'string' ? v.toUpperCase() : '';
  if (up === 'TCP' || up === 'UDP' || up === 'SCTP' || up === 'ANY') return up;
  return fail(ctx, `protocol ${JSON.stringify(v)} is not one of TCP, UDP, SCTP, ANY`);
});

export const POLICY_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
export const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export const metadata = z
  .object({
    name: z.string({ error: 'metadata.name is required' }).regex(POLICY_NAME, {
      error: 'a policy name is lower case letters, digits, "-" and "." (at most 253), starting and ending alphanumeric',
    }),
    namespace: z.string().regex(NAMESPACE_NAME, { error: 'not a valid namespace name' }).optional(),
    labels: z.record(z.string(), z.unknown()).optional(),
    annotations: z.record(z.string(), z.unknown()).optional(),
  })
  .passthrough(); // uid, resourceVersion, creationTimestamp... from `kubectl get -o yaml` are harmless
