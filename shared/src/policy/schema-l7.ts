// `toPorts[].rules` of a CiliumNetworkPolicy: the L7 part (HTTP here; DNS in schema-fqdn.ts). Cilium
// reads its documents with Go's JSON rules, which match field names case-insensitively (its own
// example l7/http/http.yaml writes `HTTP:`), so keys here are matched the same way. Regexes are
// checked to compile and to run in linear time (http/regex.ts). Semantic rules follow Cilium's
// PortRule sanitization: L7 rules need TCP ports (not ANY) and a non-zero port.
import { z } from 'zod';
import { compilePolicyRegex, PolicyRegexError } from '../l7/http/regex.ts';
import { isToken } from '../l7/http/parse.ts';
import { fail } from './schema-common.ts';
import { dnsRules } from './schema-fqdn.ts';
import type { HeaderMatch, HttpRule, MismatchAction, PortMatch } from './types.ts';

/** Rebuilds an object with its keys spelled as in `known` when they match case-insensitively. */
function caseInsensitiveKeys(known: string[]) {
  const byLower = new Map(known.map((k) => [k.toLowerCase(), k]));
  return (v: unknown): unknown => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
    const out: Record<string, unknown> = {};
    for (const [k, val] of Object.entries(v)) out[byLower.get(k.toLowerCase()) ?? k] = val;
    return out;
  };
}

const regexField = z.string({ error: 'must be a string (a regular expression)' }).transform((s, ctx) => {
  if (!s) return undefined;
  try {
    compilePolicyRegex(s);
    return s;
  } catch (e) {
    return fail(ctx, e instanceof PolicyRegexError ? e.message : `${JSON.stringify(s)} is not a valid regular expression`);
  }
});

const NO_CRLF = /^[^\r\n\0]*$/;

/** "Name: value" (exact value) or "Name" (present), split like Cilium: at the first space. */
const headerString = z.string({ error: 'a header is a string "Name: value" or "Name"' }).transform((s, ctx) => {
  const sp = s.indexOf(' ');
  const name = (sp < 0 ? s : s.slice(0, sp)).replace(/:+$/, '');
  if (!isToken(name)) return fail(ctx, `header ${JSON.stringify(s)}: "${name}" is not a valid header name`);
  if (sp < 0) return { name };
  const value = s.slice(sp + 1);
  if (!NO_CRLF.test(value)) return fail(ctx, `header ${JSON.stringify(s)}: the value may not contain line breaks`);
  return { name, value };
});

const MISMATCH = ['LOG', 'ADD', 'DELETE', 'REPLACE'] as const;

const headerMatch = z
  .preprocess(
    caseInsensitiveKeys(['name', 'value', 'mismatch', 'secret']),
    z
      .object({
        name: z.string({ error: 'name (the header) is required' }),
        value: z.string().optional(),
        mismatch: z
          .union([z.enum(MISMATCH), z.literal('')], { error: `mismatch must be one of ${MISMATCH.join(', ')} (or empty)` })
          .optional(),
        secret: z.unknown().optional(),
      })
      .strict(),
  )
  .transform((m, ctx): HeaderMatch => {
    if (!isToken(m.name)) return fail(ctx, `"${m.name}" is not a valid header name`, ['name']);
    if (m.secret !== undefined)
      return fail(
        ctx,
        'secret: header values from Kubernetes secrets are not supported (no Kubernetes API on the node); use value',
        ['secret'],
      );
    if (m.value !== undefined && !NO_CRLF.test(m.value)) return fail(ctx, 'the value may not contain line breaks', ['value']);
    if (m.mismatch && m.mismatch !== 'LOG' && m.mismatch !== 'DELETE' && m.value === undefined) {
      return fail(ctx, `mismatch ${m.mismatch} needs a value to ${m.mismatch === 'ADD' ? 'add' : 'replace with'}`, ['value']);
    }
    return {
      name: m.name,
      ...(m.value !== undefined ? { value: m.value } : {}),
      ...(m.mismatch ? { mismatch: m.mismatch as MismatchAction } : {}),
    };
  });

const httpRule = z
  .preprocess(
    caseInsensitiveKeys(['method', 'path', 'host', 'headers', 'headerMatches']),
    z
      .object({
        method: regexField.optional(),
        path: regexField.optional(),
        host: regexField.optional(),
        headers: z.array(headerString).nullish(),
        headerMatches: z.array(headerMatch).nullish(),
      })
      .strict(),
  )
  .transform(
    (r): HttpRule => ({
      ...(r.method ? { method: r.method } : {}),
      ...(r.path ? { path: r.path } : {}),
      ...(r.host ? { host: r.host } : {}),
      headers: r.headers ?? [],
      headerMatches: r.headerMatches ?? [],
    }),
  );

export const MAX_HTTP_RULES = 1000;

/** `rules:` of one toPorts element. kafka and l7proto/l7 are named as unsupported. One L7 kind per element. */
export const l7Rules = z
  .preprocess(
    caseInsensitiveKeys(['http', 'kafka', 'dns', 'l7proto', 'l7']),
    z
      .object({
        http: z
          .array(httpRule)
          .max(MAX_HTTP_RULES, { error: `at most ${MAX_HTTP_RULES} HTTP rules per port` })
          .nullish(),
        dns: dnsRules.nullish(),
      })
      .strict(),
  )
  .superRefine((r, ctx) => {
    if (r.http && r.dns) fail(ctx, 'one kind of L7 rules per toPorts element: http or dns, not both', ['dns']);
  });

export type RawL7Rules = z.infer<typeof l7Rules>;

/** Cilium's constraints on the ports of an element with L7 rules; issues are reported at `ports[i]`. */
export function checkL7Ports(ports: PortMatch[] | null | undefined, ctx: z.RefinementCtx, at: (string | number)[]): void {
  if (!ports?.length) {
    fail(ctx, 'L7 rules need ports: list the TCP ports whose requests they check', at);
    return;
  }
  for (const [i, p] of ports.entries()) {
    if (!('port' in p)) continue;
    if (p.proto !== 'TCP') fail(ctx, `L7 rules apply to TCP only: set protocol: TCP (not ${p.proto})`, [...at, i, 'protocol']);
    else if (p.port === 0) fail(ctx, 'L7 rules cannot be used on port 0 (every port): name the port', [...at, i, 'port']);
  }
}
