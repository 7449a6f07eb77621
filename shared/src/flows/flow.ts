// Turns a datapath trace_event plus what was looked up for it when it arrived (enrich.ts) into a
// Hubble flow record: wall-clock time, verdict, both endpoints with identity and labels, L4 details,
// the monitor event type Hubble clients filter on, the drop reason under Hubble's code, and the
// policy behind the verdict. Pure.
import { DatapathVerdict, Direction, EVENT_FLAG_AUDIT, EventType, encodeTraceEvent, type TraceEvent } from './event.ts';
import { emptyRefs, enrichRaw, type FlowContext, type FlowRefs, type RuleDescription } from './enrich.ts';
import { DropCode, hubbleDropCode, MessageType, TRACE_FROM_ENDPOINT, TRACE_TO_ENDPOINT } from './codes.ts';
import { dropReasonNames } from './schema.ts';
import { summaryOf } from './summary.ts';
import type { Flow, FlowEndpoint, FlowPolicy, Layer4, MembraneEvent, TcpFlags, Timestamp, Verdict } from './types.ts';
import { VERSION } from '../version.ts';

export type { EndpointView, FlowContext, RuleDescription } from './enrich.ts';

const MEMBRANE_EVENTS: Record<number, MembraneEvent> = {
  [EventType.FLOW_NEW]: 'FLOW_NEW',
  [EventType.DROP]: 'FLOW_DROP',
  [EventType.FLOW_END]: 'FLOW_END',
};
const EMITTER = Object.freeze({ name: 'Membrane', version: VERSION });
// BoolValue(false) as protobuf writes it canonically: an empty message (a zero field is left out).
const NOT_REPLY = Object.freeze({}) as { value?: boolean };

export function verdictOf(e: TraceEvent): Verdict {
  if (e.flags & EVENT_FLAG_AUDIT || e.verdict === DatapathVerdict.AUDIT) return 'AUDIT';
  if (e.verdict === DatapathVerdict.DROPPED || e.type === EventType.DROP) return 'DROPPED';
  // The datapath's REDIRECTED is its bpf_redirect_peer short-cut to a local pod: the packet was
  // forwarded. (Hubble's REDIRECTED means "handed to a proxy", which is not this.)
  if (e.verdict === DatapathVerdict.FORWARDED || e.verdict === DatapathVerdict.REDIRECTED) return 'FORWARDED';
  return 'VERDICT_UNKNOWN';
}

const FLAG_NAMES: (keyof TcpFlags)[] = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'];
// One shared object per flag byte: flows are never mutated, and this is the hot path.
const FLAG_TABLE: TcpFlags[] = Array.from({ length: 256 }, (_, bits) => {
  const out: TcpFlags = {};
  FLAG_NAMES.forEach((n, i) => {
    if (bits & (1 << i)) out[n] = true;
  });
  return Object.freeze(out);
});

export function tcpFlags(bits: number): TcpFlags {
  return FLAG_TABLE[bits & 0xff];
}

/** L4 of the event; undefined for protocols Hubble's Layer4 has no place for (the IP part stays). */
export function layer4(e: TraceEvent): Layer4 | undefined {
  switch (e.proto) {
    case 6:
      return { TCP: { sourcePort: e.sport, destinationPort: e.dport, flags: tcpFlags(e.tcpFlags) } };
    case 17:
      return { UDP: { sourcePort: e.sport, destinationPort: e.dport } };
    case 132:
      return { SCTP: { sourcePort: e.sport, destinationPort: e.dport } };
    // ICMP has no ports: for echo request/reply the datapath puts the identifier in both (conntrack
    // pairs them by it); other ICMP messages carry 0. The type is not in the event.
    case 1:
      return { ICMPv4: e.sport ? { membraneEchoId: e.sport } : {} };
    case 58:
      return { ICMPv6: e.sport ? { membraneEchoId: e.sport } : {} };
    default:
      return undefined;
  }
}

/** A ns offset as seconds + nanos (0 <= nanos < 1e9), converted once, not per event. */
export function splitOffset(ns: bigint): Timestamp {
  const sec = ns / 1_000_000_000n;
  let rem = ns % 1_000_000_000n;
  let seconds = Number(sec);
  if (rem < 0n) {
    rem += 1_000_000_000n;
    seconds--;
  }
  return { seconds, nanos: Number(rem) };
}

/** Monotonic ns (a double: exact to the ns for 104 days of uptime, within a few ns after) plus the
 *  wall-clock offset, in plain number math (BigInt costs too much per event). */
export function wallTime(tsNs: number, offset: Timestamp): Timestamp {
  let seconds = offset.seconds + Math.floor(tsNs / 1e9);
  let nanos = offset.nanos + (tsNs % 1e9);
  if (nanos >= 1e9) {
    seconds++;
    nanos -= 1e9;
  } else if (nanos < 0) {
    seconds--;
    nanos += 1e9;
  }
  return { seconds, nanos };
}

/** The event's own identity wins over the endpoint record's (labels may have changed since). */
function endpointOf(ref: FlowEndpoint | undefined, identity: number): FlowEndpoint {
  if (!ref) return { identity };
  if (!identity || ref.identity === identity) return ref;
  return { ...ref, identity };
}

/** Cilium's policy labels, so tools that read them (hubble --print-policy-names, UIs) find them. */
function policyLabels(rule: RuleDescription, name: string): string[] {
  const out = [
    `k8s:io.cilium.k8s.policy.derived-from=${rule.kind ?? 'CiliumNetworkPolicy'}`,
    `k8s:io.cilium.k8s.policy.name=${name}`,
  ];
  if (rule.namespace) out.push(`k8s:io.cilium.k8s.policy.namespace=${rule.namespace}`);
  return out;
}

export function policyOf(ruleId: number, rule: RuleDescription | undefined): FlowPolicy {
  // Without a policy service (or for a rule it no longer knows) the id is all we can show.
  if (!rule) return { name: '', membraneRuleId: ruleId };
  const ns = rule.namespace;
  const name = ns && rule.policy.startsWith(`${ns}/`) ? rule.policy.slice(ns.length + 1) : rule.policy;
  const p: FlowPolicy = {
    name,
    labels: policyLabels(rule, name),
    kind: rule.kind ?? 'CiliumNetworkPolicy',
    membraneRuleIndex: rule.index,
    membraneRuleId: ruleId,
  };
  if (ns) p.namespace = ns;
  if (rule.revision !== undefined) p.revision = rule.revision;
  if (rule.path) p.membraneRulePath = rule.path;
  return p;
}

/** The flow for an event whose lookups are done. */
export function assemble(e: TraceEvent, refs: FlowRefs, nodeName: string, wallOffset: Timestamp): Flow {
  const egress = e.direction === Direction.EGRESS;
  const verdict = verdictOf(e);
  const rule = e.ruleId ? refs.rule : undefined;
  const flow: Flow = {
    time: e.tsNs ? wallTime(e.tsNs, wallOffset) : nowTimestamp(),
    emitter: EMITTER,
    verdict,
    IP: { source: e.saddr, destination: e.daddr, ipVersion: e.family === 6 ? 'IPv6' : e.family === 4 ? 'IPv4' : 'IP_NOT_USED' },
    source: endpointOf(refs.src?.endpoint, e.srcIdentity),
    destination: endpointOf(refs.dst?.endpoint, e.dstIdentity),
    Type: 'L3_L4',
    nodeName,
    trafficDirection: egress ? 'EGRESS' : e.direction === Direction.INGRESS ? 'INGRESS' : 'TRAFFIC_DIRECTION_UNKNOWN',
    membrane: { event: MEMBRANE_EVENTS[e.type] ?? 'MEMBRANE_EVENT_UNKNOWN' },
  };
  // Zero fields are left out, as protobuf's canonical encoding does (Hubble clients compare them).
  if (e.ifindex || refs.ifName) flow.interface = refs.ifName ? { index: e.ifindex, name: refs.ifName } : { index: e.ifindex };
  if (e.endpointId) flow.membrane!.observedByEndpoint = e.endpointId;
  if (e.len) flow.membrane!.length = e.len;
  const l4 = layer4(e);
  if (l4) flow.l4 = l4;
  if (refs.src?.containerId) flow.membrane!.sourceContainerId = refs.src.containerId;
  if (refs.dst?.containerId) flow.membrane!.destinationContainerId = refs.dst.containerId;

  const dropLike = verdict === 'DROPPED' || verdict === 'AUDIT' || e.type === EventType.DROP;
  const deniedByRule = rule ? rule.action === 'deny' : !!e.ruleId && dropLike;
  if (dropLike) {
    const code = hubbleDropCode(e.reason, deniedByRule);
    flow.dropReason = code;
    flow.dropReasonDesc = dropReasonNames()[code] ?? 'DROP_REASON_UNKNOWN';
    if (e.reason) flow.membrane!.datapathDropReason = e.reason;
  }
  if (e.type === EventType.DROP) {
    flow.eventType = { type: MessageType.DROP, subType: flow.dropReason };
    if (flow.dropReason === DropCode.POLICY_DENIED || flow.dropReason === DropCode.POLICY_DENY) flow.isReply = NOT_REPLY;
  } else if (e.type === EventType.FLOW_NEW && (rule || verdict === 'AUDIT')) {
    // A connection's first packet that policy decided: Hubble's policy verdict event.
    flow.eventType = { type: MessageType.POLICY_VERDICT };
    if (rule?.matchType) flow.policyMatchType = rule.matchType;
    flow.isReply = NOT_REPLY;
  } else {
    const point = egress ? TRACE_FROM_ENDPOINT : TRACE_TO_ENDPOINT;
    flow.eventType = point ? { type: MessageType.TRACE, subType: point } : { type: MessageType.TRACE };
    flow.traceObservationPoint = egress ? 'FROM_ENDPOINT' : 'TO_ENDPOINT';
    if (e.type === EventType.FLOW_NEW) flow.traceReason = 'NEW';
    // FLOW_END records are written in the connection's own direction too.
    flow.isReply = NOT_REPLY;
  }
  if (e.type === EventType.FLOW_END) flow.membrane!.counters = { packets: e.packets, bytes: e.bytes };
  if (e.ruleId) {
    const policy = policyOf(e.ruleId, rule);
    const dir = rule?.direction ?? (egress ? 'egress' : 'ingress');
    if (dir === 'egress') flow[deniedByRule ? 'egressDeniedBy' : 'egressAllowedBy'] = [policy];
    else flow[deniedByRule ? 'ingressDeniedBy' : 'ingressAllowedBy'] = [policy];
  }
  flow.Summary = summaryOf(flow);
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
