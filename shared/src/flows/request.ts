// `membrane observe` flags -> a GetFlowsRequest. Flags about one side (--from-label, --to-ip) fill
// that side's filter field; flags about either side (--ip, --port, --label, --endpoint) expand into
// one whitelist filter per combination of sides, so "--ip A --port 80" means "A on either end and
// port 80 on either end". Values of one flag are alternatives (OR). Pure.
import { FilterError, parseSelector } from './filter.ts';
import type { DropReasonName, FlowEventType, FlowFilter, GetFlowsRequest, Timestamp, Verdict } from './types.ts';

export interface ObserveFlags {
  follow?: boolean;
  last?: number;
  first?: number;
  since?: string;
  until?: string;
  verdict?: string[];
  type?: string[];
  protocol?: string[];
  ip?: string[]; fromIp?: string[]; toIp?: string[];
  port?: string[]; fromPort?: string[]; toPort?: string[];
  label?: string[]; fromLabel?: string[]; toLabel?: string[];
  endpoint?: number[]; fromEndpoint?: number[]; toEndpoint?: number[];
  pod?: string[]; fromPod?: string[]; toPod?: string[];
  direction?: string[];
  dropReason?: string[];
  policy?: string[];
  node?: string[];
}

/** Shown when neither --last, --first, --since nor --follow says otherwise (as hubble observe). */
export const DEFAULT_LAST = 20;

const VERDICTS: Verdict[] = ['FORWARDED', 'DROPPED', 'AUDIT', 'ERROR', 'REDIRECTED'];
const TYPES: Record<string, FlowEventType[]> = {
  drop: ['DROP'], trace: ['FLOW_NEW', 'FLOW_END'], 'flow-new': ['FLOW_NEW'], new: ['FLOW_NEW'], 'flow-end': ['FLOW_END'], end: ['FLOW_END'],
};
const DROP_REASONS: DropReasonName[] = ['POLICY_DENIED', 'INVALID_PACKET', 'CT_MAP_FULL', 'UNKNOWN_ENDPOINT', 'SOURCE_SPOOFED', 'DROP_REASON_UNKNOWN'];

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

function upperChoice<T extends string>(values: string[] | undefined, allowed: readonly T[], what: string): T[] | undefined {
  if (!values?.length) return undefined;
  return values.map((v) => {
    const u = v.trim().toUpperCase().replace(/-/g, '_') as T;
    if (!allowed.includes(u)) throw new FilterError(`${what} "${v}" is not one of ${allowed.join(', ')}`);
    return u;
  });
}

export function buildRequest(f: ObserveFlags, nowMs = Date.now()): GetFlowsRequest {
  const base: FlowFilter = {};
  const verdict = upperChoice(f.verdict, VERDICTS, '--verdict');
  if (verdict) base.verdict = verdict;
  if (f.type?.length) {
    base.eventType = [...new Set(f.type.flatMap((t) => {
      const types = TYPES[t.trim().toLowerCase()];
      if (!types) throw new FilterError(`--type "${t}" is not one of drop, trace, flow-new, flow-end`);
      return types;
    }))];
  }
  if (f.protocol?.length) base.protocol = f.protocol;
  if (f.fromIp?.length) base.sourceIp = f.fromIp;
  if (f.toIp?.length) base.destinationIp = f.toIp;
  if (f.fromPort?.length) base.sourcePort = f.fromPort;
  if (f.toPort?.length) base.destinationPort = f.toPort;
  for (const s of [...(f.fromLabel ?? []), ...(f.toLabel ?? []), ...(f.label ?? [])]) parseSelector(s, '--label'); // fail early
  if (f.fromLabel?.length) base.sourceLabel = f.fromLabel;
  if (f.toLabel?.length) base.destinationLabel = f.toLabel;
  if (f.fromEndpoint?.length) base.sourceEndpoint = f.fromEndpoint;
  if (f.toEndpoint?.length) base.destinationEndpoint = f.toEndpoint;
  if (f.fromPod?.length) base.sourcePod = f.fromPod;
  if (f.toPod?.length) base.destinationPod = f.toPod;
  const direction = upperChoice(f.direction, ['INGRESS', 'EGRESS'] as const, '--direction');
  if (direction) base.trafficDirection = direction;
  const reasons = upperChoice(f.dropReason, DROP_REASONS, '--drop-reason');
  if (reasons) base.dropReasonDesc = reasons;
  if (f.policy?.length) base.policyName = f.policy;
  if (f.node?.length) base.nodeName = f.node;

  // Either-side flags: every combination of sides becomes its own filter.
  const eitherSide: [keyof FlowFilter, keyof FlowFilter, unknown[] | undefined][] = [
    ['sourceIp', 'destinationIp', f.ip], ['sourcePort', 'destinationPort', f.port],
    ['sourceLabel', 'destinationLabel', f.label], ['sourceEndpoint', 'destinationEndpoint', f.endpoint],
    ['sourcePod', 'destinationPod', f.pod],
  ];
  let filters: FlowFilter[] = [base];
  for (const [src, dst, values] of eitherSide) {
    if (!values?.length) continue;
    filters = filters.flatMap((flt) => [
      { ...flt, [src]: [...((flt[src] as unknown[] | undefined) ?? []), ...values] },
      { ...flt, [dst]: [...((flt[dst] as unknown[] | undefined) ?? []), ...values] },
    ]);
  }
  const req: GetFlowsRequest = {};
  if (filters.length > 1 || Object.keys(filters[0]).length) req.whitelist = filters;
  if (f.since) req.since = parseTime(f.since, nowMs);
  if (f.until) req.until = parseTime(f.until, nowMs);
  if (f.first !== undefined && f.last !== undefined) throw new FilterError('--first and --last cannot be combined');
  if (f.first !== undefined && f.follow) throw new FilterError('--first and --follow cannot be combined');
  if (f.follow) req.follow = true;
  if (f.first !== undefined) { req.first = true; req.number = f.first; }
  else if (f.last !== undefined) req.number = f.last;
  else if (!f.follow && !f.since && !f.until) req.number = DEFAULT_LAST;
  return req;
}
