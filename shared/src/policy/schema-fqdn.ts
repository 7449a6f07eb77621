// The DNS parts of a CiliumNetworkPolicy: `toFQDNs` selectors in egress rules and `toPorts[].rules.dns`
// (the names a pod may look up), with Cilium's validation: a selector has matchName or matchPattern
// (a DNS rule may have both), names and patterns of DNS characters only, DNS rules on egress only,
// on named non-zero ports (TCP, UDP or ANY), without port ranges. Keys are read case-insensitively,
// like the rest of `rules` (schema-l7.ts). Pure.
import { z } from 'zod';
import { canonicalName, canonicalPattern, nameProblem, patternProblem, type FqdnSelector } from '../fqdn/selector.ts';
import { fail } from './schema-common.ts';
import type { PortMatch } from './types.ts';

const lowerKeys = (known: string[]) => {
  const byLower = new Map(known.map((k) => [k.toLowerCase(), k]));
  return (v: unknown): unknown => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
    return Object.fromEntries(Object.entries(v).map(([k, val]) => [byLower.get(k.toLowerCase()) ?? k, val]));
  };
};

const nameField = z.string({ error: 'must be a string (a DNS name)' }).transform((s, ctx) => {
  const problem = nameProblem(s);
  return problem ? fail(ctx, `matchName ${problem}`) : canonicalName(s);
});

const patternField = z.string({ error: 'must be a string (a DNS name pattern)' }).transform((s, ctx) => {
  const problem = patternProblem(s);
  return problem ? fail(ctx, `matchPattern ${problem}`) : canonicalPattern(s);
});

const selectorObject = z.preprocess(
  lowerKeys(['matchName', 'matchPattern']),
  z
    .object({
      matchName: nameField.optional(),
      matchPattern: patternField.optional(),
    })
    .strict(),
);

/** One `toFQDNs` element: exactly one of matchName, matchPattern. */
export const fqdnSelector = selectorObject.transform((s, ctx): FqdnSelector => {
  if (s.matchName !== undefined && s.matchPattern !== undefined)
    return fail(ctx, 'a toFQDNs selector has one of matchName or matchPattern, not both');
  if (s.matchName === undefined && s.matchPattern === undefined)
    return fail(ctx, 'a toFQDNs selector needs matchName or matchPattern');
  return s.matchName !== undefined ? { matchName: s.matchName } : { matchPattern: s.matchPattern };
});

/** One `rules.dns` element: matchName, matchPattern or both (a name matching either is allowed). */
export const dnsRule = selectorObject.transform((s, ctx): FqdnSelector => {
  if (s.matchName === undefined && s.matchPattern === undefined) return fail(ctx, 'a DNS rule needs matchName or matchPattern');
  return {
    ...(s.matchName !== undefined ? { matchName: s.matchName } : {}),
    ...(s.matchPattern !== undefined ? { matchPattern: s.matchPattern } : {}),
  };
});

export const MAX_DNS_RULES = 1000;
export const dnsRules = z.array(dnsRule).max(MAX_DNS_RULES, { error: `at most ${MAX_DNS_RULES} DNS rules per port` });

/** Cilium's constraints on the ports of an element with DNS rules; issues are reported at `ports[i]`. */
export function checkDnsPorts(ports: PortMatch[] | null | undefined, ctx: z.RefinementCtx, at: (string | number)[]): void {
  if (!ports?.length) {
    fail(ctx, 'DNS rules need ports: list the DNS port (53) whose queries they check', at);
    return;
  }
  for (const [i, p] of ports.entries()) {
    if (!('port' in p)) continue;
    if (p.port === 0) fail(ctx, 'DNS rules cannot be used on port 0 (every port): name the DNS port', [...at, i, 'port']);
    else if (p.endPort !== undefined && p.endPort > p.port)
      fail(ctx, 'DNS rules do not support port ranges', [...at, i, 'endPort']);
    if (p.proto === 'SCTP') fail(ctx, 'DNS rules apply to UDP and TCP (or ANY), not SCTP', [...at, i, 'protocol']);
  }
}
