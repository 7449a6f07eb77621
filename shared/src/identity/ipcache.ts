// The ipcache's desired content: every address the datapath must classify, with its identity. Pure.
//   0.0.0.0/0, ::/0        -> world (anything we know nothing about)
//   policy prefixes         -> their CIDR identity
//   addresses DNS taught    -> their FQDN identity (toFQDNs; fqdn/identities.ts)
//   host addresses (/32)    -> host
//   other nodes' endpoints  -> their identity (cluster mode)
//   endpoint addresses      -> the endpoint's identity
// Longest prefix wins in the LPM trie, so an endpoint address inside a policy CIDR stays the endpoint.
import type { CidrIdentities } from './cidr.ts';
import { normalizeCidr } from '../net/index.ts';
import { RESERVED } from './reserved.ts';

export interface IpcacheSources {
  endpoints: { ips: string[]; identity: number }[];
  hostAddresses: string[];
  cidrs: CidrIdentities;
  /** Other nodes' endpoint addresses, already normalized prefixes (cluster mode). */
  remote?: Map<string, number>;
  /** Host prefixes of addresses learned from DNS -> FQDN identity. */
  fqdn?: Map<string, number>;
}

/** prefix text ("10.1.0.5/32") -> identity. Endpoints override host, host overrides FQDN, FQDN overrides CIDR. */
export function desiredIpcache(src: IpcacheSources): Map<string, number> {
  const out = new Map<string, number>([
    ['0.0.0.0/0', RESERVED.world],
    ['::/0', RESERVED.world],
  ]);
  for (const e of src.cidrs.entries()) out.set(e.text, e.id);
  if (src.fqdn) for (const [prefix, id] of src.fqdn) out.set(prefix, id);
  for (const ip of src.hostAddresses) out.set(normalizeCidr(ip), RESERVED.host);
  if (src.remote) for (const [prefix, id] of src.remote) out.set(prefix, id);
  for (const ep of src.endpoints) for (const ip of ep.ips) out.set(normalizeCidr(ip), ep.identity);
  return out;
}

export interface MapDiff<V> {
  upsert: [string, V][];
  remove: string[];
}

/** What turns `current` into `desired`; values compared with `same`. */
export function diffMaps<V>(
  current: Map<string, V>,
  desired: Map<string, V>,
  same: (a: V, b: V) => boolean = Object.is,
): MapDiff<V> {
  const upsert: [string, V][] = [];
  const remove: string[] = [];
  for (const [k, v] of desired) {
    const cur = current.get(k);
    if (cur === undefined || !same(cur, v)) upsert.push([k, v]);
  }
  for (const k of current.keys()) if (!desired.has(k)) remove.push(k);
  return { upsert, remove };
}
