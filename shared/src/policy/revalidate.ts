// Established flows held to the policy as it is now: after a change is written to the maps, every
// conntrack entry is asked again whether the new state admits its flow (policy/verdict.ts, with the
// identities and flags the datapath sees: endpoints_cfg and the ipcache LPM trie), and the ones it
// does not are revoked (maps/conntrack.ts). Cilium keeps such flows alive; Membrane cuts them. Only the
// entries the change can have touched are asked: those of endpoints whose policy entries or flags
// changed, and those with an address in a prefix whose identity changed.
import type { Datapath } from '../bpf/datapath.ts';
import * as bpf from '../bpf/libbpf.ts';
import { decodeEndpointIdentity, ENDPOINT_CONFIG_SIZE, encodeU32Key } from '../maps/codec.ts';
import { CT_F_AUDIT, CT_F_PROXY, CT_F_TUNNEL, CT_SCOPE, type CtEntryView, type RevokeFilter } from '../maps/conntrack.ts';
import type { MapChanges } from './apply.ts';
import { identityKind, RESERVED } from '../identity/reserved.ts';
import { decodeIpcacheValue, decodePolicyKey, IPCACHE_VALUE_SIZE } from './map-codec.ts';
import { ipBytes, writeHostU32 } from '../net/index.ts';
import { policyVerdict, type PolicyMaps } from './verdict.ts';
import type { Direction } from './types.ts';

/** Revokes the conntrack entries `maps` (with the pinned flags, identities and audit mode) denies;
 *  with `changes`, only among those the change can have touched. */
export function revalidateConntrack(dp: Datapath, maps: PolicyMaps, changes?: MapChanges): number {
  const cfgFd = dp.mapFd('endpoints_cfg');
  // Every endpoint's identity and flags, read once the first entry needs them: most changes (an
  // endpoint's ADD) touch no established flow, and reading every config each time grows with the node.
  let configs: Map<number, { identity: number; flags: number }> | undefined;
  const endpointConfigs = () => {
    if (configs) return configs;
    configs = new Map();
    for (const key of bpf.mapKeys(cfgFd, 'endpoints_cfg', 4, dp.mapCapacity('endpoints_cfg') + 1)) {
      const v = bpf.mapLookup(cfgFd, 'endpoints_cfg', key, ENDPOINT_CONFIG_SIZE);
      if (v) {
        const c = decodeEndpointIdentity(v);
        configs.set(c.endpointId, { identity: c.identity, flags: c.flags });
      }
    }
    return configs;
  };
  /** The endpoint id behind a host ifindex, from its config alone. */
  const endpointIdOf = (ifindex: number): number[] => {
    const v = bpf.mapLookup(cfgFd, 'endpoints_cfg', encodeU32Key(ifindex), ENDPOINT_CONFIG_SIZE);
    return v ? [decodeEndpointIdentity(v).endpointId] : [];
  };
  const filter: RevokeFilter | undefined = changes && {
    endpoints: new Set([
      ...changes.policyKeys.map((k) => decodePolicyKey(Buffer.from(k, 'hex')).endpointId),
      ...changes.flagIfindexes.flatMap(endpointIdOf),
    ]),
    prefixes: changes.ipcachePrefixes.map((p) => {
      const [ip, bits] = p.split('/');
      const addr = Buffer.alloc(16);
      ipBytes(ip).copy(addr);
      return { family: ip.includes(':') ? 6 : 4, addr, bits: Number(bits ?? (ip.includes(':') ? 128 : 32)) };
    }),
  };
  const globalAudit = dp.globalConfig().audit;
  const ipcFd = dp.mapFd('ipcache');
  const identities = new Map<string, number>();
  const lpmKey = Buffer.alloc(24); // struct ipcache_key: the address with its full length finds the longest prefix
  const identityOf = (family: number, addr: Buffer): number => {
    const text = `${family}${addr.toString('hex')}`;
    let id = identities.get(text);
    if (id === undefined) {
      writeHostU32(lpmKey, 0, 32 + (family === 4 ? 32 : 128));
      lpmKey[4] = family;
      addr.copy(lpmKey, 8);
      const v = bpf.mapLookup(ipcFd, 'ipcache', lpmKey, IPCACHE_VALUE_SIZE);
      id = v ? decodeIpcacheValue(v) : RESERVED.world;
      identities.set(text, id);
    }
    return id;
  };
  const verdicts = new Map<string, boolean>();
  const passes = (endpointId: number, direction: Direction, peer: number, e: CtEntryView): boolean => {
    const ep = endpointConfigs().get(endpointId);
    if (!ep) return true; // the endpoint is going away: its flows are flushed with it
    const key = `${endpointId}/${direction}/${peer}/${e.proto}/${e.policyPort}`;
    let pass = verdicts.get(key);
    if (pass === undefined) {
      pass = policyVerdict(maps, {
        endpointId,
        flags: ep.flags,
        direction,
        peer,
        proto: e.proto,
        port: e.policyPort,
        globalAudit,
      }).pass;
      verdicts.set(key, pass);
    }
    return pass;
  };
  const admitted = (e: CtEntryView): boolean => {
    if (e.scope === CT_SCOPE.LOCAL) {
      const src = endpointConfigs().get(e.owner),
        dst = endpointConfigs().get(e.peer);
      if (!src || !dst) return true;
      return passes(e.owner, 'egress', dst.identity, e) && passes(e.peer, 'ingress', src.identity, e);
    }
    const egress = e.scope === CT_SCOPE.EGRESS;
    const direction = egress ? 'egress' : 'ingress';
    const current = identityOf(e.family, egress ? e.daddr : e.saddr);
    if (!(e.flags & CT_F_TUNNEL)) return passes(e.owner, direction, current, e);
    // A flow that came through the tunnel is its sender's (the VNI), whatever its inner source address
    // says; but that identity is the one it had when the flow began. When the cluster now knows the
    // address as another endpoint identity (the pod was relabeled), that one must pass too: else a pod
    // relabeled out of a policy (quarantined) kept its connections while a replica held the old identity.
    // (A revoked flow whose sender is still admitted resumes: its next packet is checked as a new flow.)
    const recorded = egress ? e.dstIdentity : e.srcIdentity;
    if (!passes(e.owner, direction, recorded, e)) return false;
    return current === recorded || identityKind(current) !== 'endpoint' || passes(e.owner, direction, current, e);
  };
  // A TCP flow the policy now denies both ways as a new flow (its answer opening one too) needs no
  // revoked entry to keep its packets out: forgotten, its slot of the owner's share back at once
  // instead of after the flow's 6 h lifetime (its sockets' retransmits keep a revoked entry alive).
  // The reverse of the flow is asked where it would start: its answer's port is the flow's source
  // port. Tunnel, proxied and audited flows are only revoked.
  const reverseDenied = (e: CtEntryView): boolean => {
    if (e.proto !== 6 || e.flags & (CT_F_TUNNEL | CT_F_PROXY | CT_F_AUDIT)) return false;
    const rev = { ...e, policyPort: e.sport };
    if (e.scope === CT_SCOPE.LOCAL) {
      const src = endpointConfigs().get(e.owner),
        dst = endpointConfigs().get(e.peer);
      return !!src && !!dst && !(passes(e.peer, 'egress', src.identity, rev) && passes(e.owner, 'ingress', dst.identity, rev));
    }
    if (!endpointConfigs().has(e.owner)) return false;
    const egress = e.scope === CT_SCOPE.EGRESS;
    return !passes(e.owner, egress ? 'ingress' : 'egress', identityOf(e.family, egress ? e.daddr : e.saddr), rev);
  };
  return dp.revokeConntrack((e) => admitted(e) || (reverseDenied(e) ? 'forget' : false), filter);
}
