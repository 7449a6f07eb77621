// What a parsed import must be before it is planned: valid, not empty, and enforceable on this node
// (L7 rules need their proxy). Refused here, an import changes nothing: no map, no store, no revision.
import { MembraneError } from '../errors.ts';
import { l7KindsOf } from './desired.ts';
import { PolicyError } from './engine-types.ts';
import type { L7Set } from './l7.ts';
import type { ParseResult } from './parse.ts';

/** Throws the error the API answers with when `parsed` cannot be imported. */
export function refuseUnusable(parsed: ParseResult, proxyPorts?: Partial<Record<L7Set['kind'], number>>): void {
  if (parsed.issues.length) {
    throw new PolicyError(
      'bad_request',
      `the policy is not valid (${parsed.issues.length} problem${parsed.issues.length > 1 ? 's' : ''})`,
      parsed.issues,
    );
  }
  if (!parsed.policies.length) throw new PolicyError('bad_request', 'no policy in the input');
  const missing = [...l7KindsOf(parsed.policies.map((policy) => ({ policy })))].filter((k) => !proxyPorts?.[k]);
  if (missing.length) {
    const k = missing[0];
    const proxy =
      k === 'dns'
        ? 'the DNS proxy is not enabled on this node (agent --dns-proxy)'
        : 'the L7 proxy is not enabled on this node (agent --l7-proxy)';
    throw new MembraneError('unavailable', `the policy has ${k.toUpperCase()} rules but ${proxy}`);
  }
}
