// One record per HTTP request and one per response, from the proxy workers to the agent (which turns
// them into L7 flows and metrics). Sent as arrays (compact JSON, batched); decoded into L7Record.
// Header values are not sent: they may carry credentials. Pure.
import type { Exchange } from '../http/exchange.ts';
import type { ConnectionPolicy, ProxyDecision } from './view.ts';

export type RecordKind = 'request' | 'response';
export type RecordVerdict = 'forwarded' | 'denied' | 'error';

/** [direction (0 ingress, 1 egress), endpoint id, allowed (0/1), rule id, HTTP rule path ("" none)] */
export type SideTuple = [0 | 1, number, 0 | 1, number, string];

export type RecordTuple = [
  kind: 0 | 1, timeMs: number,
  srcIp: string, srcPort: number, dstIp: string, dstPort: number,
  srcIdentity: number, dstIdentity: number, srcEndpoint: number, dstEndpoint: number,
  method: string, path: string, host: string, protocol: string,
  status: number, latencyNs: number, verdict: 0 | 1 | 2, reason: string,
  sides: SideTuple[],
];

/** Field positions of a RecordTuple, for readers that need one or two fields (metrics). */
export const R = { KIND: 0, TIME: 1, METHOD: 10, STATUS: 14, LATENCY: 15, VERDICT: 16, SIDES: 18 } as const;
const VERDICTS: RecordVerdict[] = ['forwarded', 'denied', 'error'];
export const verdictName = (v: number): RecordVerdict => VERDICTS[v] ?? 'error';

export interface L7Record {
  kind: RecordKind;
  /** Wall-clock time in ms (with sub-ms fraction). */
  timeMs: number;
  src: { ip: string; port: number; identity: number; endpoint?: number };
  dst: { ip: string; port: number; identity: number; endpoint?: number };
  method: string;
  /** Path and query, as the rules saw it. */
  path: string;
  host: string;
  protocol: string;
  /** Response status (0 for a request record). */
  status: number;
  latencyNs: number;
  verdict: RecordVerdict;
  /** Why the proxy answered itself: denied, bad-request, upstream-unreachable. */
  reason?: string;
  sides: { direction: 'ingress' | 'egress'; endpoint: number; allowed: boolean; ruleId: number; httpRule?: string }[];
}

/** Everything the connection knows besides the exchange. */
export interface RecordContext {
  srcPort: number;
  dstPort: number;
  policy: ConnectionPolicy;
}

export function encodeRecord(kind: RecordKind, x: Exchange, ctx: RecordContext, timeOrigin: number): RecordTuple {
  const d = x.verdict.info as ProxyDecision | undefined;
  const verdict = x.localReason === 'denied' ? 1 : x.localReason ? 2 : 0;
  const sides: SideTuple[] = [];
  if (d) for (const s of d.sides) sides.push([s.direction === 'egress' ? 1 : 0, s.endpoint, s.allowed ? 1 : 0, s.ruleId, s.http?.path ?? '']);
  const p = ctx.policy;
  return [
    kind === 'request' ? 0 : 1, timeOrigin + performance.now(),
    p.src.ip, ctx.srcPort, p.dst.ip, ctx.dstPort, p.src.identity, p.dst.identity, p.src.endpoint ?? 0, p.dst.endpoint ?? 0,
    x.method, x.path, x.host, x.protocol, kind === 'response' ? x.status : 0, kind === 'response' ? x.latencyNs : 0,
    verdict, x.localReason ?? '', sides,
  ];
}

export function decodeRecord(r: RecordTuple): L7Record {
  const [kind, timeMs, srcIp, srcPort, dstIp, dstPort, srcId, dstId, srcEp, dstEp, method, path, host, protocol, status, latencyNs, verdict, reason, sides] = r;
  return {
    kind: kind === 0 ? 'request' : 'response', timeMs,
    src: { ip: srcIp, port: srcPort, identity: srcId, ...(srcEp ? { endpoint: srcEp } : {}) },
    dst: { ip: dstIp, port: dstPort, identity: dstId, ...(dstEp ? { endpoint: dstEp } : {}) },
    method, path, host, protocol, status, latencyNs,
    verdict: verdict === 0 ? 'forwarded' : verdict === 1 ? 'denied' : 'error',
    ...(reason ? { reason } : {}),
    sides: sides.map(([dir, endpoint, allowed, ruleId, httpRule]) => ({
      direction: dir ? 'egress' : 'ingress', endpoint, allowed: allowed === 1, ruleId, ...(httpRule ? { httpRule } : {}),
    })),
  };
}
