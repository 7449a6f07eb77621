// The ipcache change for addresses whose FQDN identity changed, without recomputing the rest of the
// desired state (a DNS answer must be in the datapath before it reaches the pod, and most answers
// only add an address of a known identity). Same precedence as identity/ipcache.ts: an endpoint's,
// the host's or another node's address keeps its identity; else the FQDN identity; else the policy
// prefix's own CIDR identity; else no entry (the wider prefixes decide). Pure.
import type { CidrIdentities } from '../identity/cidr.ts';
import type { FqdnState } from '../fqdn/state.ts';

export interface FqdnIpcacheInput {
  fqdn: FqdnState;
  cidrs: CidrIdentities;
  current: Map<string, number>;
  /** The prefix is an endpoint's, the host's or a remote endpoint's address. */
  owned: (prefix: string) => boolean;
}

export interface FqdnIpcacheDiff {
  upsert: [string, number][];
  remove: string[];
}

export function fqdnIpcacheDiff(prefixes: string[], i: FqdnIpcacheInput): FqdnIpcacheDiff {
  const upsert: [string, number][] = [];
  const remove: string[] = [];
  for (const p of new Set(prefixes)) {
    if (i.owned(p)) continue;
    const want = i.fqdn.entryOf(p) ?? i.cidrs.idOf(p);
    const cur = i.current.get(p);
    if (want === undefined) {
      if (cur !== undefined) remove.push(p);
    } else if (cur !== want) upsert.push([p, want]);
  }
  return { upsert, remove };
}
