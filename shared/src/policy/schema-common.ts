// Schema pieces shared by the CiliumNetworkPolicy and Kubernetes NetworkPolicy documents. Every
// semantic check happens inside the schema (transform + addIssue), so each error carries the path of
// the field it is about; the parser turns that path into a line number.
import { z } from 'zod';
import { AddressError, normalizeCidr } from '../net/index.ts';
import { MAX_RANGE_PORTS } from './ports.ts';
import type { Selector, SelectorRequirement } from './selector.ts';

type Ctx = z.RefinementCtx;

export function fail(ctx: Ctx, message: string, path: (string | number)[] = []): typeof z.NEVER {
  ctx.addIssue({ code: 'custom', message, path });
  return z.NEVER;
}

// Kubernetes label syntax: optional DNS prefix "/" name of [A-Za-z0-9_.-], plus our source prefix.
const LABEL_KEY = /^(?:[a-z]+:)?(?:[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;

export const labelKey = z.string().superRefine((k, ctx) => {
  if (!LABEL_KEY.test(k)) ctx.addIssue({ code: 'custom', message: `"${k}" is not a valid label key` });
});

const labelValue = z.unknown().transform((v, ctx) => {
  if (typeof v === 'number' || typeof v === 'boolean') v = String(v); // YAML `tier: 1` means "1"
  if (v === null) v = '';
  if (typeof v !== 'string') return fail(ctx, 'a label value must be a string');
  // Not Kubernetes' 63-character syntax: Docker and image labels (which selectors may name) are freer.
  if (v.length > 1024 || /[\u0000-\u001f]/.test(v)) return fail(ctx, 'a label value is at most 1024 characters without control characters');
  return v;
});

const requirement = z.object({
  key: labelKey,
  operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist'], { error: 'operator must be In, NotIn, Exists or DoesNotExist' }),
  values: z.array(labelValue).optional(),
}).strict().transform((r, ctx): SelectorRequirement => {
  const values = r.values ?? [];
  if ((r.operator === 'In' || r.operator === 'NotIn') && !values.length) fail(ctx, `operator ${r.operator} needs at least one value`, ['values']);
  if ((r.operator === 'Exists' || r.operator === 'DoesNotExist') && values.length) fail(ctx, `operator ${r.operator} takes no values`, ['values']);
  return { key: r.key, operator: r.operator, values };
});

export const selector = z.object({
  matchLabels: z.record(labelKey, labelValue).nullish(),
  matchExpressions: z.array(requirement).nullish(),
}).strict().transform((s): Selector => ({ matchLabels: s.matchLabels ?? {}, matchExpressions: s.matchExpressions ?? [] }));

export const cidr = z.unknown().transform((v, ctx) => {
  if (typeof v !== 'string') return fail(ctx, 'a CIDR must be a string like 198.18.0.0/15');
  try { return normalizeCidr(v); } catch (e) { return fail(ctx, e instanceof AddressError ? e.message : `"${v}" is not a CIDR`); }
});

/** port: number or numeric string; 0 means every port. Named ports need a pod spec we do not have. */
export const port = z.unknown().transform((v, ctx) => {
  const text = typeof v === 'number' ? String(v) : v;
  if (typeof text !== 'string') return fail(ctx, 'a port must be a number or a numeric string');
  if (!/^\d{1,5}$/.test(text.trim())) {
    return fail(ctx, /^[a-z]/i.test(text) ? `named port "${text}" is not supported (use the port number)` : `"${text}" is not a port number`);
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
    fail(ctx, `port range ${p.port}-${p.endPort} covers ${p.endPort - p.port + 1} ports; at most ${MAX_RANGE_PORTS} per range (use port 0 for all ports)`, ['endPort']);
  }
}

/** Cilium-style names that Kubernetes people type in lower case too. Use with .optional(). */
export const protocol = z.unknown().transform((v, ctx) => {
  if (v === null || v === '') return 'ANY' as const;
  const up = typeof v === 'string' ? v.toUpperCase() : '';
  if (up === 'TCP' || up === 'UDP' || up === 'SCTP' || up === 'ANY') return up;
  return fail(ctx, `protocol ${JSON.stringify(v)} is not one of TCP, UDP, SCTP, ANY`);
});

export const metadata = z.object({
  name: z.string({ error: 'metadata.name is required' }).regex(/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, {
    error: 'a policy name is lower case letters, digits, "-" and "." (at most 253), starting and ending alphanumeric',
  }),
  namespace: z.string().regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, { error: 'not a valid namespace name' }).optional(),
  labels: z.record(z.string(), z.unknown()).optional(),
  annotations: z.record(z.string(), z.unknown()).optional(),
}).passthrough(); // uid, resourceVersion, creationTimestamp... from `kubectl get -o yaml` are harmless
