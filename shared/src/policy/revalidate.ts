// Established flows held to the policy as it is now: after a change is written to the maps, every
// conntrack entry is asked again whether the new state admits its flow (policy/verdict.ts, with the
// identities and flags the datapath sees: endpoints_cfg and the ipcache LPM trie), and the ones it
// does not are revoked (maps/conntrack.ts). Cilium keeps such flows alive; Membrane cuts them.
import type { Datapath } from '../bpf/datapath.ts';
import * as bpf from '../bpf/libbpf.ts';
import { decodeEndpointConfig, ENDPOINT_CONFIG_SIZE } from '../maps/codec.ts';
import { CT_SCOPE, type CtEntryView } from '../maps/conntrack.ts';
import { RESERVED } from '../identity/reserved.ts';
import { decodeIpcacheValue, encodeIpcacheKey, IPCACHE_VALUE_SIZE } from './map-codec.ts';
import { policyVerdict, type PolicyMaps } from './verdict.ts';
import type { Direction } from './types.ts';

/** Revokes the conntrack entries `maps` (with the pinned flags, identities and audit mode) denies. */
export function revalidateConntrack(dp: Datapath, maps: PolicyMaps): number {
  const endpoints = new Map<number, { identity: number; flags: number }>();
  const cfgFd = dp.mapFd('endpoints_cfg');
  for (const key of bpf.mapKeys(cfgFd, 'endpoints_cfg', 4, dp.mapCapacity('endpoints_cfg') + 1)) {
    const v = bpf.mapLookup(cfgFd, 'endpoints_cfg', key, ENDPOINT_CONFIG_SIZE);
    if (v) { const c = decodeEndpointConfig(v); endpoints.set(c.endpointId, { identity: c.identity, flags: c.flags }); }
  }
  const globalAudit = dp.globalConfig().audit;
  const ipcFd = dp.mapFd('ipcache');
  const identities = new Map<string, number>();
  const identityOf = (addr: string): number => {
    let id = identities.get(addr);
    if (id === undefined) {
      const v = bpf.mapLookup(ipcFd, 'ipcache', encodeIpcacheKey(addr), IPCACHE_VALUE_SIZE);
      id = v ? decodeIpcacheValue(v) : RESERVED.world;
      identities.set(addr, id);
    }
    return id;
  };
  const verdicts = new Map<string, boolean>();
  const passes = (endpointId: number, direction: Direction, peer: number, e: CtEntryView): boolean => {
    const ep = endpoints.get(endpointId);
    if (!ep) return true; // the endpoint is going away: its flows are flushed with it
    const key = `${endpointId}/${direction}/${peer}/${e.proto}/${e.policyPort}`;
    let pass = verdicts.get(key);
    if (pass === undefined) {
      pass = policyVerdict(maps, { endpointId, flags: ep.flags, direction, peer, proto: e.proto, port: e.policyPort, globalAudit }).pass;
      verdicts.set(key, pass);
    }
    return pass;
  };
  return dp.revokeConntrack((e) => {
    if (e.scope === CT_SCOPE.LOCAL) {
      const src = endpoints.get(e.owner), dst = endpoints.get(e.peer);
      if (!src || !dst) return true;
      return passes(e.owner, 'egress', dst.identity, e) && passes(e.peer, 'ingress', src.identity, e);
    }
    const egress = e.scope === CT_SCOPE.EGRESS;
    return passes(e.owner, egress ? 'egress' : 'ingress', identityOf(egress ? e.daddr : e.saddr), e);
  });
}
