// What the datapath decides for a new flow at one enforcement point, from the content of its maps:
// the same probe sequence as bpf/lib/lookup.h and the same flag logic as decide() in
// bpf/lib/enforce.h, written again in TypeScript. Conntrack revalidation asks it whether a policy
// change still admits an established flow; the packet fuzzer holds the real program to it. Pure.
import type { Entry } from './compile.ts';
import { EP_FLAGS, encodePolicyKey } from './map-codec.ts';
import type { Direction } from './types.ts';

export interface PolicyMaps {
  /** The policy map: encoded key (hex) -> entry. */
  policy: ReadonlyMap<string, Entry>;
}

export interface VerdictQuery {
  endpointId: number;
  /** The endpoint's endpoint_config.flags (policy bits). */
  flags: number;
  direction: Direction;
  /** The peer's identity (ipcache, or the local peer endpoint's). */
  peer: number;
  proto: number;
  /** Destination port, or 0x100 | type for ICMP (bpf/lib/policy.h). */
  port: number;
  /** Agent-wide audit mode. */
  globalAudit: boolean;
}

export interface Verdict {
  /** The packet passes this point (allowed, or a would-be drop audit mode lets through). */
  pass: boolean;
  /** A would-be drop that audit mode let through. */
  audit: boolean;
  /** Rule id of the entry found (0: none). */
  ruleId: number;
}

/** The policy map keys a new flow probes, in order (bpf/lib/lookup.h policy_lookup). */
export function probeKeys(endpointId: number, peer: number, direction: Direction, proto: number, port: number): string[] {
  const out: string[] = [];
  for (const p of peer ? [peer, 0] : [0]) {
    if (port) out.push(encodePolicyKey({ endpointId, peer: p, direction, proto, dport: port }).toString('hex'));
    if (proto) out.push(encodePolicyKey({ endpointId, peer: p, direction, proto, dport: 0 }).toString('hex'));
    out.push(encodePolicyKey({ endpointId, peer: p, direction, proto: 0, dport: 0 }).toString('hex'));
  }
  return out;
}

export function policyVerdict(maps: PolicyMaps, q: VerdictQuery): Verdict {
  const lookup = q.direction === 'ingress' ? EP_FLAGS.ingressLookup : EP_FLAGS.egressLookup;
  const defaultDeny = q.direction === 'ingress' ? EP_FLAGS.ingressDefaultDeny : EP_FLAGS.egressDefaultDeny;
  let deny = false;
  let ruleId = 0;
  if (q.flags & lookup) {
    const hit = probeKeys(q.endpointId, q.peer, q.direction, q.proto, q.port)
      .map((k) => maps.policy.get(k))
      .find((e) => e !== undefined);
    if (hit) {
      deny = hit.action === 'deny';
      ruleId = hit.ruleId;
    } else {
      deny = (q.flags & defaultDeny) !== 0;
    }
  }
  if (!deny) return { pass: true, audit: false, ruleId };
  const audit = (q.flags & EP_FLAGS.audit) !== 0 || q.globalAudit;
  return { pass: audit, audit, ruleId };
}
