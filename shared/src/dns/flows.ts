// The DNS proxy's queries and responses as Hubble L7 flows (Type L7, l7.dns), the way Hubble shows
// them: a query from the client to the server (DROPPED when refused, with the policy whose DNS rules
// refused it), a response back (is_reply) with the answer's addresses, TTL, CNAMEs and rcode. The
// destination of a query carries the name it asked (destination_names). Pure.
import { MessageType } from '../flows/codes.ts';
import { rule as ruleOf, side, type FlowContext } from '../flows/enrich.ts';
import { policyOf } from '../flows/flow.ts';
import type { Flow, FlowPolicy } from '../flows/types.ts';
import { VERSION } from '../version.ts';
import { rcodeName } from './message.ts';
import type { DnsRecord } from './types.ts';

const EMITTER = Object.freeze({ name: 'Membrane', version: VERSION });

/** Hubble's summaries: `DNS Query api.x. A`, `DNS Answer "198.18.0.5" TTL: 30 (Proxy api.x. A)`. */
export function dnsSummary(r: DnsRecord): string {
  const q = `${r.query.name} ${r.query.types.join(',')}`;
  if (r.kind === 'query') return `DNS Query ${q}${r.verdict === 'refused' ? ' (refused)' : ''}`;
  const a = r.answer;
  if (!a || r.verdict === 'error') return `DNS Answer ${r.reason ?? 'error'} (Proxy ${q})`;
  if (a.rcode) return `DNS Answer RCode: ${rcodeName(a.rcode)} (Proxy ${q})`;
  const ttl = a.ips.length ? Math.min(...a.ips.map((x) => x.ttl)) : 0;
  return `DNS Answer "${a.ips.map((x) => x.ip).join(',')}" TTL: ${ttl} (Proxy ${q})`;
}

export function dnsFlow(r: DnsRecord, ctx: FlowContext): Flow {
  const d = r.decision;
  const client = side(d.endpoint !== undefined ? ctx.endpointById(d.endpoint) : undefined, d.identity, ctx)?.endpoint ?? {
    identity: d.identity,
  };
  const server = side(undefined, d.peerIdentity, ctx)?.endpoint ?? { identity: d.peerIdentity };
  const query = r.kind === 'query';
  const ms = Math.floor(r.timeMs);
  const ports = query
    ? { sourcePort: r.src.port, destinationPort: r.dst.port }
    : { sourcePort: r.dst.port, destinationPort: r.src.port };
  const a = r.answer;
  const flow: Flow = {
    time: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 },
    emitter: EMITTER,
    verdict: r.verdict === 'forwarded' ? 'FORWARDED' : r.verdict === 'refused' ? 'DROPPED' : 'ERROR',
    IP: query
      ? { source: r.src.ip, destination: r.dst.ip, ipVersion: r.src.ip.includes(':') ? 'IPv6' : 'IPv4' }
      : { source: r.dst.ip, destination: r.src.ip, ipVersion: r.src.ip.includes(':') ? 'IPv6' : 'IPv4' },
    l4: r.proto === 'udp' ? { UDP: ports } : { TCP: ports },
    source: query ? client : server,
    destination: query ? server : client,
    Type: 'L7',
    l7: {
      type: query ? 'REQUEST' : 'RESPONSE',
      ...(r.latencyNs !== undefined ? { latencyNs: r.latencyNs } : {}),
      dns: {
        query: r.query.name,
        qtypes: r.query.types,
        // Answered by the datapath's answer cache (dns/answer-cache.ts) rather than relayed.
        observationSource: r.reason === 'cached' ? 'membrane-dns-cache' : 'proxy',
        ...(a && !query
          ? {
              ips: a.ips.map((x) => x.ip),
              ...(a.ips.length ? { ttl: Math.min(...a.ips.map((x) => x.ttl)) } : {}),
              ...(a.cnames.length ? { cnames: a.cnames } : {}),
              rcode: a.rcode,
              rrtypes: a.rrtypes,
            }
          : {}),
      },
    },
    eventType: { type: MessageType.L7 },
    trafficDirection: 'EGRESS',
    isReply: query ? {} : { value: true },
    nodeName: ctx.nodeName,
    Summary: dnsSummary(r),
  };
  if (query) flow.destinationNames = [r.query.name.replace(/\.$/, '')];
  else flow.sourceNames = [r.query.name.replace(/\.$/, '')];
  if (d.ruleId) {
    const p: FlowPolicy = policyOf(d.ruleId, ruleOf(d.ruleId, ctx));
    if (d.rulePath) p.membraneRulePath = d.rulePath;
    flow[d.allowed ? 'egressAllowedBy' : 'egressDeniedBy'] = [p];
  }
  if (r.verdict === 'refused') {
    const pol = d.ruleId ? ruleOf(d.ruleId, ctx)?.policy : undefined;
    flow.Summary += pol ? `; refused by the DNS rules of ${pol}` : '; refused: no rule allows it';
  }
  return flow;
}
