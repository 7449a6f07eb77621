// The numbers Hubble clients read in a flow, and how Membrane's datapath events map onto them:
// monitor message types and subtypes (Flow.event_type), trace observation points, policy match
// types, drop reasons and reserved identities. The values are Hubble's published interface; the
// tables are written for Membrane. Pure.
import { dropReasonNames } from './schema.ts';

/** Flow.event_type.type: the monitor message type an event corresponds to (`hubble observe -t`). */
export const MessageType = {
  DROP: 1,
  DEBUG: 2,
  CAPTURE: 3,
  TRACE: 4,
  POLICY_VERDICT: 5,
  TRACE_SOCK: 7,
  L7: 129,
  AGENT: 130,
} as const;

/** `-t NAME` -> type number, as the hubble CLI names them. */
export const MESSAGE_TYPE_NAMES: Record<string, number> = {
  drop: MessageType.DROP,
  debug: MessageType.DEBUG,
  capture: MessageType.CAPTURE,
  trace: MessageType.TRACE,
  'policy-verdict': MessageType.POLICY_VERDICT,
  'trace-sock': MessageType.TRACE_SOCK,
  l7: MessageType.L7,
  agent: MessageType.AGENT,
};

/** Trace subtypes (observation points) by number, with the names `-t trace:NAME` uses. */
export const TRACE_POINTS: Record<number, string> = {
  0: 'to-endpoint',
  1: 'to-proxy',
  2: 'to-host',
  3: 'to-stack',
  4: 'to-overlay',
  5: 'from-endpoint',
  6: 'from-proxy',
  7: 'from-host',
  8: 'from-stack',
  9: 'from-overlay',
  10: 'from-network',
  11: 'to-network',
  12: 'from-crypto',
  13: 'to-crypto',
};
export const TRACE_TO_ENDPOINT = 0;
export const TRACE_FROM_ENDPOINT = 5;

/** Flow.policy_match_type values and how Hubble prints them. */
export const PolicyMatch = { NONE: 0, L3_ONLY: 1, L3_L4: 2, L4_ONLY: 3, ALL: 4, L3_PROTO: 5, PROTO_ONLY: 6 } as const;
export const POLICY_MATCH_TEXT: Record<number, string> = {
  0: 'none',
  1: 'L3-Only',
  2: 'L3-L4',
  3: 'L4-Only',
  4: 'all',
  5: 'L3-Proto',
  6: 'Proto-Only',
};

/** Reserved identities by name (`--identity world`), the numbers Cilium gives them. */
export const RESERVED_IDENTITIES: Record<string, number> = {
  host: 1,
  world: 2,
  unmanaged: 3,
  health: 4,
  init: 5,
  'remote-node': 6,
  'kube-apiserver': 7,
  ingress: 8,
  'world-ipv4': 9,
  'world-ipv6': 10,
};

/** Hubble's drop reason codes that Membrane reports, with the wording the hubble CLI prints. */
export const DropCode = {
  UNKNOWN: 0,
  INVALID_SOURCE_IP: 132,
  POLICY_DENIED: 133,
  INVALID_PACKET_DROPPED: 134,
  CT_MAP_INSERTION_FAILED: 155,
  IP_FRAGMENTATION_NOT_SUPPORTED: 157,
  UNKNOWN_SENDER: 172,
  FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND: 175,
  POLICY_DENY: 181,
} as const;

// The reasons Membrane's datapath reports (bpf/lib/drop.h), in the hubble CLI's wording.
const DROP_TEXT: Record<number, string> = {
  130: 'Invalid source mac',
  132: 'Invalid source ip',
  133: 'Policy denied',
  134: 'Invalid packet',
  135: 'CT: Truncated or invalid header',
  139: 'Unsupported L3 protocol',
  155: 'CT: Map insertion failed',
  156: 'Invalid IPv6 extension header',
  157: 'IP fragmentation not supported',
  160: 'No tunnel/encapsulation endpoint',
  165: 'No configuration available to perform policy decision',
  166: 'Unsupported L2 protocol',
  172: 'Unknown sender',
  183: 'Invalid VNI',
  175: 'First logical datagram fragment not found',
  176: 'Forbidden ICMPv6 message',
  178: 'Socket lookup failed',
  179: 'Socket assign failed', // the L7 proxy is not listening / cannot take the packet
  181: 'Policy denied by denylist',
};

/** bpf/lib/drop.h numbers its reasons with Hubble's codes (130 and up, passed through unchanged);
 *  1 is its first numbering of POLICY_DENIED, still met in events an older datapath left in the
 *  pinned ring buffer. */
const LEGACY_DATAPATH_CODES: Record<number, number> = {
  1: DropCode.POLICY_DENIED,
};

/** The Hubble drop code for a datapath drop reason. A policy drop caused by a deny rule is
 *  Hubble's POLICY_DENY ("denied by denylist"); default deny stays POLICY_DENIED. */
export function hubbleDropCode(datapathReason: number, byDenyRule = false): number {
  const code = datapathReason >= 130 ? datapathReason : (LEGACY_DATAPATH_CODES[datapathReason] ?? DropCode.UNKNOWN);
  return code === DropCode.POLICY_DENIED && byDenyRule ? DropCode.POLICY_DENY : code;
}

/** The name a datapath drop reason is reported under (Hubble's DropReason enum name, e.g.
 *  POLICY_DENIED, INVALID_SOURCE_IP), as metrics and the policy status label drops. */
export function dropReasonName(datapathReason: number): string {
  const code = hubbleDropCode(datapathReason);
  return (code && dropReasonNames()[code]) || `REASON_${datapathReason}`;
}

/** "Policy denied" for 133; an unknown code reads "drop reason N". */
export function dropText(code: number, enumName?: string): string {
  if (DROP_TEXT[code]) return DROP_TEXT[code];
  if (enumName && enumName !== 'DROP_REASON_UNKNOWN') return enumName.toLowerCase().replace(/_/g, ' ');
  return code ? `drop reason ${code}` : 'unknown reason';
}

/** Hubble's policy match type of a rule: which of L3 (peers) and L4 (ports) it names. */
export function policyMatchType(rule: { peers: unknown[] | 'all'; ports: { port?: number; type?: number }[] }): number {
  const l3 = rule.peers !== 'all';
  if (!rule.ports.length) return l3 ? PolicyMatch.L3_ONLY : PolicyMatch.ALL;
  // Port 0 (and ICMP without a type) means "the whole protocol".
  const protoOnly = rule.ports.every((p) => (p.port ?? p.type ?? 0) === 0);
  if (protoOnly) return l3 ? PolicyMatch.L3_PROTO : PolicyMatch.PROTO_ONLY;
  return l3 ? PolicyMatch.L3_L4 : PolicyMatch.L4_ONLY;
}
