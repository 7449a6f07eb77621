// Turns a datapath trace_event plus what was looked up for it when it arrived (enrich.ts) into a
// flow record: wall-clock time, verdict, both endpoints with identity and labels, L4 details, and
// the policy rule behind the verdict. Pure.
import { DatapathVerdict, Direction, DROP_REASONS, EVENT_FLAG_AUDIT, EventType, encodeTraceEvent, type TraceEvent } from './event.ts';
import { emptyRefs, enrichRaw, type FlowContext, type FlowRefs, type RuleDescription } from './enrich.ts';
import type { DropReasonName, Flow, FlowEndpoint, FlowEventType, FlowPolicy, Layer4, TcpFlags, Timestamp, Verdict } from './types.ts';

export type { EndpointView, FlowContext, RuleDescription } from './enrich.ts';

const EVENT_TYPES: Record<number, FlowEventType> = {
  [EventType.FLOW_NEW]: 'FLOW_NEW', [EventType.DROP]: 'DROP', [EventType.FLOW_END]: 'FLOW_END',
};

export function verdictOf(e: TraceEvent): Verdict {
  if (e.flags & EVENT_FLAG_AUDIT || e.verdict === DatapathVerdict.AUDIT) return 'AUDIT';
  if (e.verdict === DatapathVerdict.DROPPED || e.type === EventType.DROP) return 'DROPPED';
  // REDIRECTED is the datapath's bpf_redirect_peer short-cut to a local pod: the packet was
  // forwarded. (Hubble's REDIRECTED means "handed to an L7 proxy", which Membrane has not.)
  if (e.verdict === DatapathVerdict.FORWARDED || e.verdict === DatapathVerdict.REDIRECTED) return 'FORWARDED';
  return 'VERDICT_UNKNOWN';
}

const FLAG_NAMES: (keyof TcpFlags)[] = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'];
// One shared object per flag byte: flows are never mutated, and this is the hot path.
const FLAG_TABLE: TcpFlags[] = Array.from({ length: 256 }, (_, bits) => {
  const out: TcpFlags = {};
  FLAG_NAMES.forEach((n, i) => { if (bits & (1 << i)) out[n] = true; });
  return Object.freeze(out);
});

export function tcpFlags(bits: number): TcpFlags {
  return FLAG_TABLE[bits & 0xff];
}

export function layer4(e: TraceEvent): Layer4 {
  switch (e.proto) {
    case 6: return { tcp: { sourcePort: e.sport, destinationPort: e.dport, flags: tcpFlags(e.tcpFlags) } };
    case 17: return { udp: { sourcePort: e.sport, destinationPort: e.dport } };
    case 132: return { sctp: { sourcePort: e.sport, destinationPort: e.dport } };
    // ICMP has no ports: for echo request/reply the datapath puts the identifier in both (conntrack
    // pairs them by it); other ICMP messages carry 0. The type is not in the event.
    case 1: return { icmpv4: e.sport ? { id: e.sport } : {} };
    case 58: return { icmpv6: e.sport ? { id: e.sport } : {} };
    default: return { other: { protocol: e.proto } };
  }
}

/** A ns offset as seconds + nanos (0 <= nanos < 1e9), converted once, not per event. */
export function splitOffset(ns: bigint): Timestamp {
  const sec = ns / 1_000_000_000n;
  let rem = ns % 1_000_000_000n;
  let seconds = Number(sec);
  if (rem < 0n) { rem += 1_000_000_000n; seconds--; }
  return { seconds, nanos: Number(rem) };
}

/** Monotonic ns (a double: exact to the ns for 104 days of uptime, within a few ns after) plus the
 *  wall-clock offset, in plain number math (BigInt costs too much per event). */
export function wallTime(tsNs: number, offset: Timestamp): Timestamp {
  let seconds = offset.seconds + Math.floor(tsNs / 1e9);
  let nanos = offset.nanos + (tsNs % 1e9);
  if (nanos >= 1e9) { seconds++; nanos -= 1e9; } else if (nanos < 0) { seconds--; nanos += 1e9; }
  return { seconds, nanos };
}

/** The event's own identity wins over the endpoint record's (labels may have changed since). */
function endpointOf(ref: FlowEndpoint | undefined, identity: number): FlowEndpoint {
  if (!ref) return { identity };
  if (!identity || ref.identity === identity) return ref;
  return { ...ref, identity };
}

function policyOf(ruleId: number, rule: RuleDescription | undefined): FlowPolicy {
  // Without a policy service (or for a rule it no longer knows) the id is all we can show.
  return rule ? { name: rule.policy, ruleIndex: rule.index, ruleId, kind: 'MembraneNetworkPolicy' } : { name: '', ruleId };
}

/** The flow for an event whose lookups are done. */
export function assemble(e: TraceEvent, refs: FlowRefs, nodeName: string, wallOffset: Timestamp): Flow {
  const egress = e.direction === Direction.EGRESS;
  const verdict = verdictOf(e);
  const flow: Flow = {
    time: e.tsNs ? wallTime(e.tsNs, wallOffset) : nowTimestamp(),
    verdict,
    ip: { source: e.saddr, destination: e.daddr, ipVersion: e.family === 6 ? 'IPv6' : e.family === 4 ? 'IPv4' : 'IP_NOT_USED' },
    l4: layer4(e),
    source: endpointOf(refs.src, e.srcIdentity),
    destination: endpointOf(refs.dst, e.dstIdentity),
    nodeName,
    eventType: EVENT_TYPES[e.type] ?? 'EVENT_TYPE_UNKNOWN',
    trafficDirection: egress ? 'EGRESS' : e.direction === Direction.INGRESS ? 'INGRESS' : 'TRAFFIC_DIRECTION_UNKNOWN',
    interface: refs.ifName ? { index: e.ifindex, name: refs.ifName } : { index: e.ifindex },
    observedByEndpoint: e.endpointId,
    length: e.len,
  };
  if (e.type === EventType.FLOW_NEW) flow.isReply = { value: false };
  if (verdict === 'DROPPED' || verdict === 'AUDIT' || e.type === EventType.DROP) {
    flow.dropReason = e.reason;
    const name = DROP_REASONS[e.reason];
    flow.dropReasonDesc = (e.reason && name ? name : 'DROP_REASON_UNKNOWN') as DropReasonName;
  }
  if (verdict === 'AUDIT') flow.audit = true;
  if (e.type === EventType.FLOW_END) flow.counters = { packets: e.packets, bytes: e.bytes };
  if (e.ruleId) {
    const rule = refs.rule;
    const policy = policyOf(e.ruleId, rule);
    const dir = rule?.direction ?? (egress ? 'egress' : 'ingress');
    const denied = rule ? rule.action === 'deny' : verdict === 'DROPPED' || verdict === 'AUDIT';
    if (dir === 'egress') flow[denied ? 'egressDeniedBy' : 'egressAllowedBy'] = [policy];
    else flow[denied ? 'ingressDeniedBy' : 'ingressAllowedBy'] = [policy];
  }
  return flow;
}

/** Lookups and assembly in one go (tests, tools; the agent splits them, see collector.ts). */
export function buildFlow(e: TraceEvent, ctx: FlowContext): Flow {
  return assemble(e, enrichRaw(encodeTraceEvent(e), 0, ctx, emptyRefs()), ctx.nodeName, ctx.wallOffset);
}

export function nowTimestamp(): Timestamp {
  const ms = Date.now();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}

/** Timestamp as ms since the epoch with sub-ms fraction (a double keeps µs here): for since/until. */
export function timestampMs(t: Timestamp): number {
  return t.seconds * 1000 + t.nanos / 1e6;
}
