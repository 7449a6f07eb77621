// The ipcache's desired content after a change, from the content before it: only the prefixes whose
// source changed (a CIDR the policies now name or no longer name, an endpoint address, a host
// address, another node's endpoint, an address DNS taught) are looked at again, so one policy
// replaced next to 10,000 CIDR rules does not rebuild and diff 10,000 prefixes. The sources other
// than the policy prefixes are few (endpoints, host, DNS answers) and are compared whole. Pure.
import type { CidrEntry, CidrIdentities } from '../identity/cidr.ts';
import { desiredIpcache, type IpcacheSources, type MapDiff } from '../identity/ipcache.ts';
import { RESERVED } from '../identity/reserved.ts';

/** A desired ipcache and what it was made from. The next one takes over `map` (edits it in place). */
export interface IpcacheState {
  map: Map<string, number>;
  /** Every entry not from a policy prefix (world defaults excluded): endpoints, host, remote, DNS. */
  others: Map<string, number>;
  /** The CIDR table's version `map` holds. */
  cidrVersion: number;
}

const WORLD_DEFAULTS = new Set(['0.0.0.0/0', '::/0']);
const NO_CIDRS = { entries: () => [] } as unknown as CidrIdentities;

/**
 * The ipcache for `src`. With `prev` (built for the CIDR table as it was before `cidrChange`, and
 * held by the maps since) the result carries `delta`, the entries that differ from `prev`'s; `prev`
 * is then given up (its map is the result's). Without it, or when it does not fit, built whole.
 */
export function ipcacheFrom(
  src: IpcacheSources,
  prev: IpcacheState | undefined,
  cidrChange: { before: number; added: CidrEntry[]; removed: CidrEntry[] },
): IpcacheState & { delta?: MapDiff<number> } {
  const others = desiredIpcache({ ...src, cidrs: NO_CIDRS });
  for (const p of WORLD_DEFAULTS) if (others.get(p) === RESERVED.world) others.delete(p);
  if (!prev || prev.cidrVersion !== cidrChange.before) {
    return { map: desiredIpcache(src), others, cidrVersion: src.cidrs.version };
  }
  const touched = new Set<string>();
  for (const e of cidrChange.added) touched.add(e.text);
  for (const e of cidrChange.removed) touched.add(e.text);
  for (const [k, v] of others) if (prev.others.get(k) !== v) touched.add(k);
  for (const k of prev.others.keys()) if (!others.has(k)) touched.add(k);
  const map = prev.map;
  const delta: MapDiff<number> = { upsert: [], remove: [] };
  for (const k of touched) {
    // By precedence, as desiredIpcache: the other sources, then the policy prefix, then world.
    const v = others.get(k) ?? src.cidrs.idOf(k) ?? (WORLD_DEFAULTS.has(k) ? RESERVED.world : undefined);
    if (v === undefined) {
      if (map.delete(k)) delta.remove.push(k);
    } else if (map.get(k) !== v) {
      map.set(k, v);
      delta.upsert.push([k, v]);
    }
  }
  return { map, others, cidrVersion: src.cidrs.version, delta };
}
