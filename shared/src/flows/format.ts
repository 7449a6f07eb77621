// How `membrane observe` prints flows, in the hubble CLI's shapes: compact (one line each), dict
// (a block per flow), table (fixed columns, so a followed stream lines up), and json/jsonpb
// (protobuf JSON with proto field names, one object per line, as `hubble observe -o json`). A drop
// line always says why: the reason in the type column, the policy in the summary. Pure.
import { dropText, MessageType, POLICY_MATCH_TEXT, RESERVED_IDENTITIES, TRACE_POINTS } from './codes.ts';
import { toProtoJson } from './protojson.ts';
import type { Flow, FlowPolicy, GetFlowsResponse, LostEvent, Timestamp } from './types.ts';

export type FlowOutput = 'compact' | 'dict' | 'json' | 'jsonpb' | 'table';

export interface FormatOptions {
  /** Times in UTC (tests); local time otherwise. */
  utc?: boolean;
  /** Add the node name (hubble --print-node-name). */
  nodeName?: boolean;
  /** Name the policies behind ALLOWED/DENIED (hubble --print-policy-names). */
  policyNames?: boolean;
  /** Addresses only, no pod names (hubble --numeric / --ip-translation=false). */
  numeric?: boolean;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const RESERVED_BY_ID = Object.fromEntries(Object.entries(RESERVED_IDENTITIES).map(([k, v]) => [v, k]));

/** "Nov 25 14:32:01.123" (hubble's default StampMilli) in local time, or UTC. */
export function formatTime(raw: Partial<Timestamp> | undefined, utc = false): string {
  const t = { seconds: Number(raw?.seconds ?? 0), nanos: raw?.nanos ?? 0 };
  const d = new Date(t.seconds * 1000 + Math.floor(t.nanos / 1e6));
  const [mon, day, h, m, s] = utc
    ? [d.getUTCMonth(), d.getUTCDate(), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()]
    : [d.getMonth(), d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  const p2 = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[mon]} ${String(day).padStart(2, ' ')} ${p2(h)}:${p2(m)}:${p2(s)}.${String(Math.floor(t.nanos / 1e6)).padStart(3, '0')}`;
}

function ports(f: Flow): [string, string] {
  const p = f.l4?.TCP ?? f.l4?.UDP ?? f.l4?.SCTP;
  return p ? [String(p.sourcePort ?? 0), String(p.destinationPort ?? 0)] : ['', ''];
}

function joinHostPort(host: string, port: string): string {
  if (!port || port === '0') return host;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** "ns/pod:port" when the pod is known, else DNS names, else the address (hubble's Hostname). */
export function hostname(
  ip: string | undefined,
  port: string,
  ns: string | undefined,
  pod: string | undefined,
  names: string[] | undefined,
  numeric = false,
): string {
  let host = ip ?? '';
  if (!numeric) {
    if (pod) host = ns ? `${ns}/${pod}` : pod;
    else if (names?.length) host = names.join(',');
  }
  return joinHostPort(host, port);
}

function hosts(f: Flow, o: FormatOptions): [string, string] {
  if (!f.IP) return ['', ''];
  const [sp, dp] = ports(f);
  return [
    hostname(f.IP.source, sp, f.source?.namespace, f.source?.podName, f.sourceNames, o.numeric),
    hostname(f.IP.destination, dp, f.destination?.namespace, f.destination?.podName, f.destinationNames, o.numeric),
  ];
}

export function identityText(id: number | undefined): string {
  const n = id ?? 0;
  return RESERVED_BY_ID[n] && n < 256 ? `(${RESERVED_BY_ID[n]})` : `(ID:${n})`;
}

/** The TYPE column: trace point, drop reason, "policy-verdict:L3-L4 INGRESS", "http-request". */
export function flowType(f: Flow): string {
  if (f.l7) {
    const kind = f.l7.http ? 'http' : f.l7.dns ? 'dns' : 'l7';
    const type = (f.l7.type ?? 'UNKNOWN_L7_TYPE').toLowerCase();
    return `${kind}-${type}${f.l7.dns?.observationSource ? ` ${f.l7.dns.observationSource}` : ''}`;
  }
  const et = f.eventType;
  switch (et?.type) {
    case MessageType.TRACE:
      return TRACE_POINTS[et.subType ?? 0] ?? `trace:${et.subType}`;
    case MessageType.DROP:
      return dropText(et.subType ?? 0, f.dropReasonDesc);
    case MessageType.POLICY_VERDICT:
      return `policy-verdict:${POLICY_MATCH_TEXT[f.policyMatchType ?? 0] ?? 'unknown'} ${f.trafficDirection ?? 'TRAFFIC_DIRECTION_UNKNOWN'}`;
    default:
      return 'UNKNOWN';
  }
}

function policyNames(ps: FlowPolicy[] | undefined): string {
  const named = (ps ?? []).filter((p) => p.kind && p.name);
  return named.length ? ` BY ${named.map((p) => `${p.name} (${p.kind})`).join(', ')}` : '';
}

/** The VERDICT column; policy verdict events read ALLOWED / DENIED / AUDITED, as in hubble. */
export function verdictText(f: Flow, o: FormatOptions = {}): string {
  const pv = f.eventType?.type === MessageType.POLICY_VERDICT;
  const egress = f.trafficDirection === 'EGRESS';
  switch (f.verdict) {
    case 'FORWARDED':
    case 'REDIRECTED':
      return pv ? `ALLOWED${o.policyNames ? policyNames(egress ? f.egressAllowedBy : f.ingressAllowedBy) : ''}` : f.verdict;
    case 'DROPPED':
    case 'ERROR':
      return pv ? `DENIED${o.policyNames ? policyNames(egress ? f.egressDeniedBy : f.ingressDeniedBy) : ''}` : f.verdict;
    case 'AUDIT':
      return pv ? 'AUDITED' : 'AUDIT';
    default:
      return f.verdict ?? 'VERDICT_UNKNOWN';
  }
}

export function lostText(l: LostEvent): string {
  return `EVENTS LOST: ${l.source} ${l.numEventsLost ?? 0}`;
}

export function compactLine(res: GetFlowsResponse, o: FormatOptions = {}): string {
  const node = o.nodeName ? ` [${res.nodeName}]` : '';
  if (res.lostEvents) return `${formatTime(res.time, o.utc)}${node}: ${lostText(res.lostEvents)}`;
  if (res.nodeStatus)
    return `${formatTime(res.time, o.utc)}${node}: ${res.nodeStatus.stateChange} ${(res.nodeStatus.nodeNames ?? []).join(', ')}`;
  const f = res.flow!;
  let [src, dst] = hosts(f, o);
  let [srcId, dstId] = [identityText(f.source?.identity), identityText(f.destination?.identity)];
  let arrow = '->';
  if (f.isReply === undefined) arrow = '<>';
  else if (f.isReply.value) {
    [src, dst, srcId, dstId] = [dst, src, dstId, srcId];
    arrow = '<-';
  }
  const flowNode = o.nodeName ? ` [${f.nodeName ?? res.nodeName}]` : '';
  return `${formatTime(f.time, o.utc)}${flowNode}: ${src} ${srcId} ${arrow} ${dst} ${dstId} ${flowType(f)} ${verdictText(f, o)} (${f.Summary ?? ''})`;
}

export function dictBlock(res: GetFlowsResponse, o: FormatOptions = {}, first = true): string {
  const sep = first ? '' : '------------\n';
  if (res.lostEvents) return `${sep}  TIMESTAMP: ${formatTime(res.time, o.utc)}\n       LOST: ${lostText(res.lostEvents)}`;
  const f = res.flow!;
  const [src, dst] = hosts(f, o);
  const lines = [
    `  TIMESTAMP: ${formatTime(f.time, o.utc)}`,
    ...(o.nodeName ? [`       NODE: ${f.nodeName ?? res.nodeName}`] : []),
    `     SOURCE: ${src}`,
    `DESTINATION: ${dst}`,
    `       TYPE: ${flowType(f)}`,
    `    VERDICT: ${verdictText(f, o)}`,
    `    SUMMARY: ${f.Summary ?? ''}`,
  ];
  return sep + lines.join('\n');
}

export function tableHeaders(o: FormatOptions = {}): string[] {
  return ['TIMESTAMP', ...(o.nodeName ? ['NODE'] : []), 'SOURCE', 'DESTINATION', 'TYPE', 'VERDICT', 'SUMMARY'];
}

export function tableRow(res: GetFlowsResponse, o: FormatOptions = {}): string[] {
  const node = o.nodeName ? [res.nodeName] : [];
  if (res.lostEvents) return [formatTime(res.time, o.utc), ...node, '', '', 'lost', '', lostText(res.lostEvents)];
  const f = res.flow!;
  const [src, dst] = hosts(f, o);
  return [formatTime(f.time, o.utc), ...node, src, dst, flowType(f), verdictText(f, o), f.Summary ?? ''];
}

/** Fixed widths: rows print as they stream in and still line up (long cells push, never cut). */
export function tableLine(cells: string[], nodeColumn = false): string {
  // TYPE fits the longest policy verdict ("policy-verdict:Proto-Only INGRESS"); VERDICT fits FORWARDED.
  const widths = nodeColumn ? [19, 20, 30, 30, 33, 9] : [19, 30, 30, 33, 9];
  return cells
    .map((c, i) => (i < widths.length ? c.padEnd(widths[i]) : c))
    .join('  ')
    .trimEnd();
}

/** One line of protobuf JSON (proto field names), as `hubble observe -o json`. */
export function jsonLine(typeName: string, msg: object): string {
  return JSON.stringify(toProtoJson(typeName, msg));
}

/** A streaming printer: remembers whether a header or separator is due. */
export function flowPrinter(
  output: FlowOutput,
  o: FormatOptions & { headers?: boolean } = {},
): (res: GetFlowsResponse) => string {
  let count = 0;
  return (res) => {
    const first = count++ === 0;
    switch (output) {
      case 'json':
      case 'jsonpb':
        return jsonLine('observer.GetFlowsResponse', res);
      case 'dict':
        return dictBlock(res, o, first);
      case 'table': {
        const row = tableLine(tableRow(res, o), o.nodeName);
        return first && o.headers !== false ? `${tableLine(tableHeaders(o), o.nodeName)}\n${row}` : row;
      }
      default:
        return compactLine(res, o);
    }
  };
}
