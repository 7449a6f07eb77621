// How `membrane observe` prints flows: compact (one line each, Hubble style), json (one object per
// line) and table (fixed columns, so a followed stream lines up). A drop line always says why: the
// reason, and the policy that denied it or that it fell to default deny. Pure.
import type { Flow, FlowEndpoint, FlowPolicy, GetFlowsResponse, Icmp, LostEvent, TcpFlags, Timestamp } from './types.ts';

export type FlowOutput = 'compact' | 'json' | 'table';

const REASON_TEXT: Record<string, string> = {
  POLICY_DENIED: 'policy denied', INVALID_PACKET: 'invalid packet', CT_MAP_FULL: 'conntrack table full',
  UNKNOWN_ENDPOINT: 'unknown endpoint', SOURCE_SPOOFED: 'source address spoofed', DROP_REASON_UNKNOWN: 'unknown reason',
};
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const RESERVED_NAMES: Record<number, string> = { 1: 'host', 2: 'world', 3: 'unmanaged', 4: 'health', 5: 'init' };

/** "Nov 25 14:32:01.123" in local time (utc: in UTC, for tests). */
export function formatTime(raw: Timestamp | undefined, utc = false): string {
  const t = normTime(raw);
  const d = new Date(t.seconds * 1000 + Math.floor(t.nanos / 1e6));
  const [mon, day, h, m, s] = utc
    ? [d.getUTCMonth(), d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getMonth(), d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  const p2 = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[mon]} ${String(day).padStart(2, ' ')} ${p2(h)}:${p2(m)}:${p2(s)}.${String(Math.floor(t.nanos / 1e6)).padStart(3, '0')}`;
}

/** RFC 3339 with nanoseconds, as protobuf's JSON mapping writes a Timestamp. */
export function rfc3339(raw: Timestamp | undefined): string {
  const t = normTime(raw);
  const iso = new Date(t.seconds * 1000).toISOString().replace(/\.\d{3}Z$/, '');
  return `${iso}.${String(t.nanos).padStart(9, '0')}Z`;
}

/** Over the wire a zero field is absent. */
function normTime(t: Partial<Timestamp> | undefined): Timestamp {
  return { seconds: Number(t?.seconds ?? 0), nanos: t?.nanos ?? 0 };
}

function stripSource(label: string): string {
  return label.replace(/^(k8s|docker|container|cni|membrane|any):/, '');
}

/** Labels worth a glance: without the pod bookkeeping ones, without the source prefix. */
function shortLabels(ep: FlowEndpoint, max = 3): string[] {
  return (ep.labels ?? [])
    .filter((l) => !/^k8s:io\.(kubernetes|cilium)\./.test(l))
    .map(stripSource)
    .slice(0, max);
}

/** "client-7d9 (ns) app=web ep:12 ID:260", or "world" / "ID:16777217" for peers off this node. */
export function endpointText(ep: FlowEndpoint): string {
  const parts: string[] = [];
  if (ep.podName) parts.push(ep.namespace ? `${ep.namespace}/${ep.podName}` : ep.podName);
  const reserved = (ep.labels ?? []).find((l) => l.startsWith('reserved:'));
  if (reserved) parts.push(reserved.slice('reserved:'.length));
  else if (!ep.id && ep.identity && RESERVED_NAMES[ep.identity]) parts.push(RESERVED_NAMES[ep.identity]);
  parts.push(...shortLabels(ep).filter((l) => !l.startsWith('reserved:')));
  if (ep.id) parts.push(`ep:${ep.id}`);
  if (ep.identity) parts.push(`ID:${ep.identity}`);
  return parts.join(' ');
}

function flagsText(flags: TcpFlags | undefined): string {
  const set = Object.entries(flags ?? {}).filter(([, v]) => v).map(([k]) => k);
  return set.length ? set.join(',') : '';
}

export function l4Text(f: Flow): string {
  const l4 = f.l4 ?? {};
  if (l4.tcp) { const fl = flagsText(l4.tcp.flags); return fl ? `TCP ${fl}` : 'TCP'; }
  if (l4.udp) return 'UDP';
  if (l4.sctp) return 'SCTP';
  const icmp = (name: string, i: Icmp) => [name, i.type !== undefined ? `type ${i.type}/${i.code ?? 0}` : '', i.id ? `id ${i.id}` : '']
    .filter(Boolean).join(' ');
  if (l4.icmpv4) return icmp('ICMPv4', l4.icmpv4);
  if (l4.icmpv6) return icmp('ICMPv6', l4.icmpv6);
  return l4.other ? `proto ${l4.other.protocol}` : '';
}

function port(f: Flow, side: 'sourcePort' | 'destinationPort'): number | undefined {
  const p = f.l4?.tcp ?? f.l4?.udp ?? f.l4?.sctp;
  return p ? p[side] ?? 0 : undefined;
}

export function addrText(ip: string | undefined, p: number | undefined): string {
  if (!ip) return '?';
  if (p === undefined) return ip;
  return ip.includes(':') ? `[${ip}]:${p}` : `${ip}:${p}`;
}

function policyText(p: FlowPolicy, direction: string, action: string): string {
  const rule = `${direction} ${action} rule ${p.ruleIndex ?? '?'}`;
  return p.name ? `policy ${p.name} (${rule})` : `rule id ${p.ruleId ?? '?'}`;
}

/** Why it was allowed/denied: the deciding policy, or default deny. */
export function verdictReason(f: Flow): string {
  const denied = [...(f.ingressDeniedBy ?? []).map((p) => policyText(p, 'ingress', 'deny')),
    ...(f.egressDeniedBy ?? []).map((p) => policyText(p, 'egress', 'deny'))];
  const allowed = [...(f.ingressAllowedBy ?? []).map((p) => policyText(p, 'ingress', 'allow')),
    ...(f.egressAllowedBy ?? []).map((p) => policyText(p, 'egress', 'allow'))];
  const dropLike = f.verdict === 'DROPPED' || f.verdict === 'AUDIT';
  if (dropLike) {
    const reason = REASON_TEXT[f.dropReasonDesc ?? 'DROP_REASON_UNKNOWN'] ?? String(f.dropReasonDesc).toLowerCase();
    const lead = f.verdict === 'AUDIT' ? `would drop (audit mode): ${reason}` : reason;
    if (denied.length) return `${lead}, denied by ${denied.join(', ')}`;
    if (f.dropReasonDesc === 'POLICY_DENIED') {
      const dir = f.trafficDirection === 'EGRESS' ? 'egress' : 'ingress';
      return `${lead}: default deny (${dir} of the endpoint is selected by a policy and no rule allows this peer)`;
    }
    return lead;
  }
  if (allowed.length) return `allowed by ${allowed.join(', ')}`;
  return '';
}

function eventWord(f: Flow): string {
  return { FLOW_NEW: 'new', DROP: 'drop', FLOW_END: 'end', EVENT_TYPE_UNKNOWN: 'event' }[f.eventType] ?? 'event';
}

function countersText(f: Flow): string {
  if (!f.counters) return '';
  const b = f.counters.bytes ?? 0;
  const size = b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b} B`;
  return `${f.counters.packets ?? 0} pkts ${size}`;
}

export function lostText(l: LostEvent): string {
  return `EVENTS LOST: ${l.source} ${l.numEventsLost ?? 0}`;
}

export function compactLine(res: GetFlowsResponse, utc = false): string {
  if (res.lostEvents) return `${formatTime(res.time, utc)}: ${lostText(res.lostEvents)}`;
  const f = res.flow!;
  const src = `${addrText(f.ip?.source, port(f, 'sourcePort'))} (${endpointText(f.source ?? {})})`;
  const dst = `${addrText(f.ip?.destination, port(f, 'destinationPort'))} (${endpointText(f.destination ?? {})})`;
  const dir = f.trafficDirection === 'INGRESS' ? 'to-endpoint' : f.trafficDirection === 'EGRESS' ? 'from-endpoint' : '';
  const detail = [l4Text(f), countersText(f)].filter(Boolean).join(', ');
  const why = verdictReason(f);
  return [`${formatTime(f.time, utc)}: ${src} -> ${dst}`, eventWord(f), dir, f.verdict, detail && `(${detail})`, why]
    .filter(Boolean).join(' ');
}

export const TABLE_HEADERS = ['TIMESTAMP', 'SOURCE', 'DESTINATION', 'TYPE', 'VERDICT', 'SUMMARY'];
const TABLE_WIDTHS = [19, 40, 40, 13, 9];

export function tableRow(res: GetFlowsResponse, utc = false): string[] {
  if (res.lostEvents) return [formatTime(res.time, utc), '', '', 'lost', '', lostText(res.lostEvents)];
  const f = res.flow!;
  const side = (ip: string | undefined, p: number | undefined, ep: FlowEndpoint | undefined) => {
    const name = endpointText(ep ?? {});
    return name ? `${addrText(ip, p)} ${name}` : addrText(ip, p);
  };
  const summary = [l4Text(f), countersText(f), verdictReason(f)].filter(Boolean).join('; ');
  return [formatTime(f.time, utc), side(f.ip?.source, port(f, 'sourcePort'), f.source), side(f.ip?.destination, port(f, 'destinationPort'), f.destination),
    `${eventWord(f)} ${f.trafficDirection === 'EGRESS' ? 'egress' : f.trafficDirection === 'INGRESS' ? 'ingress' : ''}`.trim(), f.verdict, summary];
}

/** Fixed widths: rows print as they stream in and still line up (long cells push, never cut). */
export function tableLine(cells: string[]): string {
  return cells.map((c, i) => (i < TABLE_WIDTHS.length ? c.padEnd(TABLE_WIDTHS[i]) : c)).join('  ').trimEnd();
}

/** Protobuf-JSON style: timestamps as RFC 3339 strings. */
export function jsonLine(res: GetFlowsResponse): string {
  const out: Record<string, unknown> = { ...res, time: rfc3339(res.time) };
  if (res.flow) out.flow = { ...res.flow, time: rfc3339(res.flow.time) };
  return JSON.stringify(out);
}

export function formatResponse(res: GetFlowsResponse, output: FlowOutput, utc = false): string {
  if (output === 'json') return jsonLine(res);
  if (output === 'table') return tableLine(tableRow(res, utc));
  return compactLine(res, utc);
}
