// Which addresses get no CIDR identity (identity/cidr.ts hide) because the ipcache gives them another
// identity whatever a policy names. Pure; buildDesired calls it on every full build.
import { normalizeCidr } from '../net/index.ts';
import { RESERVED } from '../identity/reserved.ts';
import type { DesiredInput, EngineEndpoint } from './desired.ts';

/** Addresses the ipcache gives a node's, a pod's or an FQDN identity whatever a policy names, which
 *  therefore get no CIDR identity (identity/cidr.ts hide): this node's (host), in cluster mode the
 *  other nodes' (remote-node), and the pods' here and on other nodes and the addresses DNS taught
 *  (toFQDNs) that a policy names (`named`: the policies' prefixes). As in Cilium, CIDR rules do not
 *  select nodes or pods; toEntities host / remote-node and the pods' labels do; a taught address's
 *  FQDN identity carries the policy prefixes holding it, so its /32 rule selects that. Pods and taught
 *  addresses only when named: the list changes (and every CIDR rule is resolved again) only when a
 *  named one comes or goes, not with every pod or DNS answer. From the remote map each time:
 *  cluster/ipcache.ts edits that map in place. */
export function hiddenAddresses(
  input: Pick<DesiredInput, 'hostAddresses' | 'remote' | 'endpoints' | 'fqdn'>,
  named: Set<string>,
): string[] {
  if (!input.remote?.size && !named.size) return input.hostAddresses;
  const all = [...input.hostAddresses];
  if (input.remote)
    for (const [prefix, id] of input.remote) if (id === RESERVED['remote-node'] || named.has(prefix)) all.push(prefix);
  if (named.size) for (const pod of podsNamed(input.endpoints, named)) all.push(pod);
  if (named.size && input.fqdn) for (const p of taughtNamed(input.fqdn.ipcacheEntries(), named)) all.push(p);
  return all;
}

/** The prefixes DNS taught (host prefixes, normalized) that are among `named`, walking the smaller set. */
function taughtNamed(taught: Map<string, number>, named: Set<string>): string[] {
  const out: string[] = [];
  if (taught.size <= named.size) {
    for (const p of taught.keys()) if (named.has(p)) out.push(p);
  } else for (const p of named) if (taught.has(p)) out.push(p);
  return out;
}

/** The host prefixes of `endpoints` that are among `named` (normalized policy prefixes). */
function podsNamed(endpoints: Iterable<Pick<EngineEndpoint, 'ips'>>, named: Set<string>): string[] {
  const out: string[] = [];
  for (const ep of endpoints)
    for (const ip of ep.ips) {
      const prefix = normalizeCidr(ip);
      if (named.has(prefix)) out.push(prefix);
    }
  return out;
}
