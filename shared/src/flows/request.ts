// `membrane observe` flags -> a GetFlowsRequest, with the hubble CLI's semantics. Flags arrive in
// command-line order (so `--not` can negate the flag after it). A flag about one side (--from-ip,
// --to-label) fills that side's field in every filter; a flag about either side (--ip, --pod,
// --label, --port, --identity, ...) puts the source field in one filter and the destination field
// in a second, and every other flag applies to both: "--ip A --port 80" selects flows from A with
// source port 80 or to A with destination port 80, as `hubble observe` does. Values of one flag are
// alternatives (OR). Pure.
import { MESSAGE_TYPE_NAMES, MessageType, RESERVED_IDENTITIES, TRACE_POINTS } from './codes.ts';
import { FilterError } from './filter.ts';
import { fromProtoJson, type ProtoJsonError } from './protojson.ts';
import { dropReasonCode } from './schema.ts';
import type { FlowFilter, GetFlowsRequest, IpVersion, MembraneEvent, TcpFlags, Timestamp } from './types.ts';

/** Shown when neither --last, --first, --all, --since nor --follow says otherwise (as hubble). */
export const DEFAULT_LAST = 20;

export interface ObserveSelection {
  follow?: boolean;
  last?: number;
  first?: number;
  all?: boolean;
  since?: string;
  until?: string;
  /** JSON FlowFilters (proto or JSON field names), as hubble's --allowlist / --denylist. */
  allowlist?: string[];
  denylist?: string[];
  /** Flow fields to return (proto paths, e.g. "source.pod_name"). */
  fieldMask?: string[];
}

/** The filter flags, in the order given: [flag name without dashes, value]. */
export type FilterFlag = [string, string];

const EITHER_SIDE: Record<
  string,
  [keyof FlowFilter | 'membrane.sourceEndpoint', keyof FlowFilter | 'membrane.destinationEndpoint']
> = {
  ip: ['sourceIp', 'destinationIp'],
  pod: ['sourcePod', 'destinationPod'],
  fqdn: ['sourceFqdn', 'destinationFqdn'],
  label: ['sourceLabel', 'destinationLabel'],
  service: ['sourceService', 'destinationService'],
  port: ['sourcePort', 'destinationPort'],
  identity: ['sourceIdentity', 'destinationIdentity'],
  workload: ['sourceWorkload', 'destinationWorkload'],
  cluster: ['sourceClusterName', 'destinationClusterName'],
  endpoint: ['membrane.sourceEndpoint', 'membrane.destinationEndpoint'],
};

/** Flags that make no sense together on one side (hubble refuses the same pairs). */
const CONFLICTS: string[][] = [
  ['from-fqdn', 'from-ip', 'ip', 'fqdn', 'from-namespace', 'namespace', 'from-all-namespaces', 'all-namespaces'],
  ['from-fqdn', 'from-ip', 'ip', 'fqdn', 'from-pod', 'pod'],
  ['to-fqdn', 'to-ip', 'ip', 'fqdn', 'to-namespace', 'namespace', 'to-all-namespaces', 'all-namespaces'],
  ['to-fqdn', 'to-ip', 'ip', 'fqdn', 'to-pod', 'pod'],
  ['to-pod', 'namespace', 'all-namespaces'],
  ['from-pod', 'namespace', 'all-namespaces'],
  ['label', 'from-label'],
  ['label', 'to-label'],
  ['service', 'from-service'],
  ['service', 'to-service'],
  ['port', 'to-port'],
  ['port', 'from-port'],
  ['identity', 'to-identity'],
  ['identity', 'from-identity'],
  ['workload', 'to-workload'],
  ['workload', 'from-workload'],
  ['endpoint', 'from-endpoint'],
  ['endpoint', 'to-endpoint'],
  ['encrypted', 'unencrypted'],
];

const MEMBRANE_EVENTS: Record<string, MembraneEvent> = {
  'flow-new': 'FLOW_NEW',
  'flow-drop': 'FLOW_DROP',
  'flow-end': 'FLOW_END',
};

/** "30s", "5m", "1h30m", "2d" ago, or an absolute date/time (RFC 3339 or anything Date parses). */
export function parseTime(text: string, nowMs = Date.now()): Timestamp {
  const rel = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$/.exec(text.trim());
  let ms: number;
  if (rel && text.trim() !== '') {
    const [, d, h, m, s, milli] = rel.map((x) => Number(x ?? 0));
    ms = nowMs - ((((d * 24 + h) * 60 + m) * 60 + s) * 1000 + milli);
  } else {
    ms = Date.parse(text);
    if (Number.isNaN(ms)) throw new FilterError(`"${text}" is neither a duration (30s, 5m, 1h) nor a date/time`);
  }
  return { seconds: Math.floor(ms / 1000), nanos: Math.round((ms % 1000) * 1e6) };
}

function identityValue(v: string): number {
  if (v in RESERVED_IDENTITIES) return RESERVED_IDENTITIES[v];
  if (/^\d+$/.test(v) && Number(v) < 2 ** 32) return Number(v);
  throw new FilterError(`--identity "${v}": not a number or one of ${Object.keys(RESERVED_IDENTITIES).join(', ')}`);
}

function ipVersion(v: string): IpVersion {
  const l = v.toLowerCase();
  if (['4', 'v4', 'ipv4', 'ip4'].includes(l)) return 'IPv4';
  if (['6', 'v6', 'ipv6', 'ip6'].includes(l)) return 'IPv6';
  if (['none', '0', ''].includes(l)) return 'IP_NOT_USED';
  throw new FilterError(`--ip-version "${v}": expected v4, v6 or none`);
}

function tcpFlags(v: string): TcpFlags {
  const out: TcpFlags = {};
  for (const raw of v.split(',')) {
    const f = raw.trim().toUpperCase() as keyof TcpFlags;
    if (!['SYN', 'FIN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR', 'NS'].includes(f))
      throw new FilterError(`--tcp-flags: unknown TCP flag "${raw}"`);
    out[f] = true;
  }
  return out;
}

/** `-t TYPE[:SUBTYPE]` (drop, trace[:to-endpoint], policy-verdict, l7, ...); Membrane's own event
 *  names (flow-new, flow-drop, flow-end) select its datapath events. */
function typeValue(v: string): {
  eventType?: { type: number; matchSubType?: boolean; subType?: number };
  membrane?: MembraneEvent;
} {
  const lower = v.toLowerCase();
  if (MEMBRANE_EVENTS[lower]) return { membrane: MEMBRANE_EVENTS[lower] };
  const [t, sub] = lower.split(/:(.*)/s);
  const type = MESSAGE_TYPE_NAMES[t] ?? (/^\d+$/.test(t) ? Number(t) : undefined);
  if (type === undefined) {
    throw new FilterError(
      `--type "${v}": not one of ${[...Object.keys(MESSAGE_TYPE_NAMES), ...Object.keys(MEMBRANE_EVENTS)].join(', ')} or a number`,
    );
  }
  if (sub === undefined) return { eventType: { type } };
  const point = type === MessageType.TRACE ? Object.entries(TRACE_POINTS).find(([, n]) => n === sub)?.[0] : undefined;
  const subType = point !== undefined ? Number(point) : /^\d+$/.test(sub) ? Number(sub) : undefined;
  if (subType === undefined) throw new FilterError(`--type "${v}": unknown subtype "${sub}"`);
  return { eventType: { type, matchSubType: true, subType } };
}

type Side = 'both' | 'left' | 'right';

class Tracker {
  left: FlowFilter = {};
  right: FlowFilter = {};
  ns: string[] = [];
  srcNs: string[] = [];
  dstNs: string[] = [];
  touched = false;
  private readonly seen = new Set<string>();

  mark(flag: string): void {
    this.seen.add(flag);
    this.touched = true;
    for (const group of CONFLICTS) {
      if (!group.includes(flag)) continue;
      const other = group.find((g) => g !== flag && this.seen.has(g));
      if (other) throw new FilterError(`filters --${flag} and --${other} cannot be combined`);
    }
  }

  push(side: Side, key: string, value: unknown): void {
    for (const f of side === 'both' ? [this.left, this.right] : side === 'left' ? [this.left] : [this.right]) {
      const [head, tail] = key.split('.');
      const target = (tail ? ((f as Record<string, object>)[head] ??= {}) : f) as Record<string, unknown[]>;
      const k = tail ?? head;
      (target[k] ??= []).push(value);
    }
  }

  filters(): FlowFilter[] {
    if (!this.touched) return [];
    // Namespaces become pod filters "ns/" (or "ns/<pod prefix>" next to a pod filter).
    const applyNs = (f: FlowFilter, key: 'sourcePod' | 'destinationPod', ns: string[]) => {
      const pods = f[key]?.length ? f[key]! : [''];
      f[key] = pods.flatMap((p) => (p.includes('/') ? [p] : ns.map((n) => `${n}/${p}`)));
    };
    for (const f of [this.left, this.right]) {
      if (this.srcNs.length) applyNs(f, 'sourcePod', this.srcNs);
      if (this.dstNs.length) applyNs(f, 'destinationPod', this.dstNs);
    }
    if (this.ns.length) {
      applyNs(this.left, 'sourcePod', this.ns);
      applyNs(this.right, 'destinationPod', this.ns);
    }
    return JSON.stringify(this.left) === JSON.stringify(this.right) ? [this.left] : [this.left, this.right];
  }
}

function applyFlag(t: Tracker, name: string, val: string): void {
  t.mark(name);
  const either = EITHER_SIDE[name];
  const from = /^from-(.*)$/.exec(name)?.[1],
    to = /^to-(.*)$/.exec(name)?.[1];
  const sideFlag = from ?? to;
  const convert = (base: string, v: string): unknown => {
    if (base === 'identity') return identityValue(v);
    if (base === 'endpoint') {
      if (!/^\d+$/.test(v)) throw new FilterError(`--${name} "${v}": not an endpoint id`);
      return Number(v);
    }
    if (base === 'workload') {
      const [kind, wname] = v.includes('/') ? v.split('/', 2) : ['', v];
      return { kind, name: wname };
    }
    return v;
  };
  if (either) {
    t.push('left', either[0], convert(name, val));
    t.push('right', either[1], convert(name, val));
    return;
  }
  if (sideFlag && EITHER_SIDE[sideFlag]) {
    t.push('both', EITHER_SIDE[sideFlag][from ? 0 : 1], convert(sideFlag, val));
    return;
  }
  switch (name) {
    case 'namespace':
      t.ns.push(val);
      return;
    case 'from-namespace':
      t.srcNs.push(val);
      return;
    case 'to-namespace':
      t.dstNs.push(val);
      return;
    case 'all-namespaces':
      t.ns.push('');
      return;
    case 'from-all-namespaces':
      t.srcNs.push('');
      return;
    case 'to-all-namespaces':
      t.dstNs.push('');
      return;
    case 'uuid':
      t.push('both', 'uuid', val);
      return;
    case 'node-name':
      t.push('both', 'nodeName', val);
      return;
    case 'protocol':
      t.push('both', 'protocol', val);
      return;
    case 'tcp-flags':
      t.push('both', 'tcpFlags', tcpFlags(val));
      return;
    case 'verdict': {
      const v = val.toUpperCase();
      if (!['FORWARDED', 'DROPPED', 'AUDIT', 'REDIRECTED', 'ERROR', 'TRACED', 'TRANSLATED'].includes(v))
        throw new FilterError(`--verdict "${val}": expected FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED or TRANSLATED`);
      t.push('both', 'verdict', v);
      return;
    }
    case 'drop-reason-desc': {
      const v = val.toUpperCase();
      if (dropReasonCode(v) === undefined)
        throw new FilterError(
          `--drop-reason-desc "${val}": not a drop reason (e.g. POLICY_DENIED, POLICY_DENY, INVALID_SOURCE_IP)`,
        );
      t.push('both', 'dropReasonDesc', v);
      return;
    }
    case 'type': {
      const r = typeValue(val);
      if (r.eventType) t.push('both', 'eventType', r.eventType);
      if (r.membrane) t.push('both', 'membrane.event', r.membrane);
      return;
    }
    case 'traffic-direction': {
      const v = val.toUpperCase();
      if (v !== 'INGRESS' && v !== 'EGRESS') throw new FilterError(`--traffic-direction "${val}": expected ingress or egress`);
      t.push('both', 'trafficDirection', v);
      return;
    }
    case 'ipv4':
      t.push('both', 'ipVersion', 'IPv4');
      return;
    case 'ipv6':
      t.push('both', 'ipVersion', 'IPv6');
      return;
    case 'ip-version':
      t.push('both', 'ipVersion', ipVersion(val));
      return;
    case 'interface':
      t.push('both', 'interface', /^\d+$/.test(val) ? { index: Number(val) } : { name: val });
      return;
    case 'encrypted':
      t.push('both', 'encrypted', true);
      return;
    case 'unencrypted':
      t.push('both', 'encrypted', false);
      return;
    case 'snat-ip':
      t.push('both', 'sourceIpXlated', val);
      return;
    case 'trace-id':
      t.push('both', 'traceId', val);
      return;
    case 'node-label':
      t.push('both', 'nodeLabels', val);
      return;
    case 'http-status':
      t.push('both', 'httpStatusCode', val);
      return;
    case 'http-method':
      t.push('both', 'httpMethod', val);
      return;
    case 'http-path':
      t.push('both', 'httpPath', val);
      return;
    case 'http-url':
      t.push('both', 'httpUrl', val);
      return;
    case 'http-header': {
      const i = val.indexOf(':');
      if (i < 0) throw new FilterError(`--http-header "${val}": expected name:value`);
      t.push('both', 'httpHeader', { key: val.slice(0, i), value: val.slice(i + 1) });
      return;
    }
    case 'policy':
      t.push('both', 'membrane.policyName', val);
      return;
    default:
      throw new FilterError(`--${name} is not a filter flag`);
  }
}

/** The whitelist and blacklist the filter flags describe, in command-line order. */
export function buildFilters(flags: FilterFlag[]): { whitelist: FlowFilter[]; blacklist: FlowFilter[] } {
  const allow = new Tracker(),
    deny = new Tracker();
  let negate = false;
  for (const [name, val] of flags) {
    if (name === 'not') {
      if (negate) throw new FilterError('consecutive --not statements');
      negate = true;
      continue;
    }
    applyFlag(negate ? deny : allow, name, val);
    negate = false;
  }
  if (negate) throw new FilterError('trailing --not found in the arguments');
  return { whitelist: allow.filters(), blacklist: deny.filters() };
}

function rawFilters(texts: string[] | undefined, flag: string): FlowFilter[] {
  const out: FlowFilter[] = [];
  for (const text of texts ?? []) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new FilterError(`--${flag}: not JSON: ${(e as Error).message}`);
    }
    for (const item of Array.isArray(json) ? json : [json]) {
      try {
        out.push(fromProtoJson<FlowFilter>('flow.FlowFilter', item));
      } catch (e) {
        throw new FilterError(`--${flag}: ${(e as ProtoJsonError).message}`);
      }
    }
  }
  return out;
}

export function buildRequest(sel: ObserveSelection, flags: FilterFlag[] = [], nowMs = Date.now()): GetFlowsRequest {
  const { whitelist, blacklist } = buildFilters(flags);
  whitelist.push(...rawFilters(sel.allowlist, 'allowlist'));
  blacklist.push(...rawFilters(sel.denylist, 'denylist'));
  const req: GetFlowsRequest = {};
  if (whitelist.length) req.whitelist = whitelist;
  if (blacklist.length) req.blacklist = blacklist;
  if (sel.since) req.since = parseTime(sel.since, nowMs);
  if (sel.until) req.until = parseTime(sel.until, nowMs);
  if (sel.first !== undefined && sel.last !== undefined) throw new FilterError('cannot set both --first and --last');
  if (sel.first !== undefined && sel.all) throw new FilterError('cannot set both --first and --all');
  if (sel.last !== undefined && sel.all) throw new FilterError('cannot set both --last and --all');
  if (sel.first !== undefined && sel.follow) throw new FilterError('cannot set both --first and --follow');
  if (sel.follow) req.follow = true;
  if (sel.first !== undefined) {
    req.first = true;
    req.number = sel.first;
  } else if (sel.last !== undefined) req.number = sel.last;
  else if (!sel.all && !sel.follow && !sel.since && !sel.until) req.number = DEFAULT_LAST;
  if (sel.fieldMask?.length) req.fieldMask = { paths: sel.fieldMask };
  return req;
}
