// The proxy's request and response records as Hubble L7 flows (Type L7, event type 129, l7.http),
// the way Hubble shows them: a request from client to server, a response from server back (is_reply),
// with the response code and the latency, both endpoints with their identities and pods, and the
// policy whose HTTP rules decided (the matching rule's place in the document, or the rules that
// denied). Connections the proxy refused (their source held too many: proxy/source-limit.ts) are a
// request flow DROPPED that says so and how many, without method or path. Pure.
import { MessageType } from '../flows/codes.ts';
import { rule as ruleOf, side, type FlowContext } from '../flows/enrich.ts';
import { policyOf } from '../flows/flow.ts';
import type { Flow, FlowPolicy, Verdict } from '../flows/types.ts';
import { VERSION } from '../version.ts';
import type { L7Record } from './proxy/records.ts';

const EMITTER = Object.freeze({ name: 'Membrane', version: VERSION });

function url(r: L7Record): string {
  const host = r.host || (r.dst.ip.includes(':') ? `[${r.dst.ip}]:${r.dst.port}` : `${r.dst.ip}:${r.dst.port}`);
  return r.path.startsWith('/') ? `http://${host}${r.path}` : r.path; // "*" and CONNECT targets as they were
}

function verdictOf(r: L7Record): Verdict {
  return r.verdict === 'forwarded' ? 'FORWARDED' : r.verdict === 'denied' ? 'DROPPED' : 'ERROR';
}

/** "HTTP/1.1 GET http://h/p" for a request; "HTTP/1.1 200 3ms (GET http://h/p)" for a response. */
export function l7Summary(r: L7Record): string {
  const u = url(r);
  if (r.kind === 'request') return `${r.protocol} ${r.method} ${u}`;
  return `${r.protocol} ${r.status} ${Math.round(r.latencyNs / 1e6)}ms (${r.method} ${u})`;
}

export function l7Flow(r: L7Record, ctx: FlowContext): Flow {
  const client = side(r.src.endpoint ? ctx.endpointById(r.src.endpoint) : undefined, r.src.identity, ctx)?.endpoint ?? {
    identity: r.src.identity,
  };
  const server = side(r.dst.endpoint ? ctx.endpointById(r.dst.endpoint) : undefined, r.dst.identity, ctx)?.endpoint ?? {
    identity: r.dst.identity,
  };
  const request = r.kind === 'request';
  const ms = Math.floor(r.timeMs);
  const flow: Flow = {
    time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 + Math.round((r.timeMs - ms) * 1e6) },
    emitter: EMITTER,
    verdict: verdictOf(r),
    IP: request
      ? { source: r.src.ip, destination: r.dst.ip, ipVersion: r.src.ip.includes(':') ? 'IPv6' : 'IPv4' }
      : { source: r.dst.ip, destination: r.src.ip, ipVersion: r.src.ip.includes(':') ? 'IPv6' : 'IPv4' },
    l4: {
      TCP: request
        ? { sourcePort: r.src.port, destinationPort: r.dst.port }
        : { sourcePort: r.dst.port, destinationPort: r.src.port },
    },
    source: request ? client : server,
    destination: request ? server : client,
    Type: 'L7',
    nodeName: ctx.nodeName,
    l7: {
      type: request ? 'REQUEST' : 'RESPONSE',
      ...(request ? {} : { latencyNs: r.latencyNs }),
      http: { ...(request ? {} : { code: r.status }), method: r.method, url: url(r), protocol: r.protocol },
    },
    eventType: { type: MessageType.L7 },
    // The end whose policy sent the connection to the proxy (the server's when both did).
    trafficDirection: r.sides.some((s) => s.direction === 'ingress')
      ? 'INGRESS'
      : r.sides.length
        ? 'EGRESS'
        : 'TRAFFIC_DIRECTION_UNKNOWN',
    isReply: request ? {} : { value: true },
  };
  for (const s of r.sides) {
    if (!s.ruleId) continue;
    const p: FlowPolicy = policyOf(s.ruleId, ruleOf(s.ruleId, ctx));
    if (s.httpRule) p.membraneRulePath = s.httpRule;
    const key =
      s.direction === 'egress'
        ? s.allowed
          ? 'egressAllowedBy'
          : 'egressDeniedBy'
        : s.allowed
          ? 'ingressAllowedBy'
          : 'ingressDeniedBy';
    (flow[key] ??= []).push(p);
  }
  if (r.reason === 'conn-limit') {
    // No request was read: the connection itself was refused (proxy/source-limit.ts), with the
    // source's other refusals of up to a second (RefusalRecords: one record a second per source).
    const n = r.refused ?? 1;
    flow.Summary = `${n === 1 ? 'connection' : `${n} connections`} refused: its source ${r.src.ip} holds the most connections one source may open at an L7 proxy worker (--l7-proxy-max-conns-per-source)`;
    return flow;
  }
  const why =
    r.verdict === 'denied'
      ? `; denied by ${r.sides
          .filter((s) => !s.allowed)
          .map((s) => `${s.direction} HTTP rules${s.ruleId ? ` of ${ruleOf(s.ruleId, ctx)?.policy ?? `rule ${s.ruleId}`}` : ''}`)
          .join(', ')}`
      : r.verdict === 'error'
        ? `; ${r.reason ?? 'error'}`
        : '';
  flow.Summary = l7Summary(r) + why;
  return flow;
}
