// Hubble's FlowFilter semantics: inside one filter every field that is set must match (AND), a
// field matches when any of its values does (OR); a flow passes when it matches at least one
// whitelist filter (or there is none) and no blacklist filter. Filters are compiled once per request,
// so a bad value is an error up front, and so is a field Membrane cannot apply (the server answers
// INVALID_ARGUMENT naming the field): a filter is never silently ignored. Pure.
import net from 'node:net';
import { MessageType } from './codes.ts';
import { fqdnMatcher, nodeNameMatcher, PatternError } from './patterns.ts';
import { dropReasonCode, dropReasonNames } from './schema.ts';
import { parseLabels, parseSelector, requirementsMatch, SelectorError } from './selector.ts';
import type { Flow, FlowEndpoint, FlowFilter, FlowPolicy, TcpFlags } from './types.ts';
import { familyBits, parseIfAddr, type IfAddr } from '../net/index.ts';

export class FilterError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FilterError';
  }
}

type Pred = (f: Flow) => boolean;

/** What the server knows that some filters need. */
export interface FilterContext {
  /** This node's cluster, when it is in one: node names without a cluster belong to it. */
  clusterName?: string;
}

/** Fields with no meaning on a Membrane node, and why. */
const UNSUPPORTED: [keyof FlowFilter, string, string][] = [
  ['sourceIpXlated', 'source_ip_xlated', 'Membrane does not translate addresses (no SNAT), so no flow has a translated source'],
  ['sourceService', 'source_service', 'Membrane has no service load-balancing, so flows carry no service'],
  ['destinationService', 'destination_service', 'Membrane has no service load-balancing, so flows carry no service'],
  ['sourceWorkload', 'source_workload', 'Membrane does not know the workloads (owner objects) of endpoints'],
  ['destinationWorkload', 'destination_workload', 'Membrane does not know the workloads (owner objects) of endpoints'],
  ['nodeLabels', 'node_labels', 'Membrane nodes carry no labels in flows'],
  ['traceId', 'trace_id', 'Membrane does not read trace context from packets'],
  ['ipTraceId', 'ip_trace_id', 'Membrane does not read IP trace options from packets'],
];

export function compileFilters(whitelist: FlowFilter[] = [], blacklist: FlowFilter[] = [], ctx: FilterContext = {}): Pred {
  const allow = whitelist.map((f, i) => compileFilter(f, `whitelist[${i}]`, ctx));
  const deny = blacklist.map((f, i) => compileFilter(f, `blacklist[${i}]`, ctx));
  if (!allow.length && !deny.length) return () => true;
  return (f) => (!allow.length || allow.some((p) => p(f))) && !deny.some((p) => p(f));
}

export function compileFilter(filter: FlowFilter, where = 'filter', ctx: FilterContext = {}): Pred {
  const preds: Pred[] = [];
  const at = (field: string) => `${where}.${field}`;
  const add = <T>(values: T[] | undefined, make: (values: T[]) => Pred) => {
    if (values?.length) preds.push(make(values));
  };
  const guard = <T>(field: string, make: () => T): T => {
    try {
      return make();
    } catch (e) {
      if (e instanceof SelectorError || e instanceof PatternError || e instanceof SyntaxError)
        throw new FilterError(`${at(field)}: ${e.message}`);
      throw e;
    }
  };
  for (const [key, name, why] of UNSUPPORTED) {
    if ((filter[key] as unknown[] | undefined)?.length) throw new FilterError(`${at(name)}: cannot be applied: ${why}`);
  }
  if (filter.experimental?.celExpression?.length)
    throw new FilterError(`${at('experimental.cel_expression')}: CEL expressions are not supported by Membrane`);

  add(filter.uuid, (v) => (f) => f.uuid !== undefined && v.includes(f.uuid));
  add(filter.sourceIp, (v) => ipPred(v, at('source_ip'), (f) => f.IP?.source));
  add(filter.destinationIp, (v) => ipPred(v, at('destination_ip'), (f) => f.IP?.destination));
  add(filter.sourcePod, (v) => podPred(v, at('source_pod'), (f) => f.source));
  add(filter.destinationPod, (v) => podPred(v, at('destination_pod'), (f) => f.destination));
  add(filter.sourceFqdn, (v) => guard('source_fqdn', () => namesPred(v, (f) => f.sourceNames)));
  add(filter.destinationFqdn, (v) => guard('destination_fqdn', () => namesPred(v, (f) => f.destinationNames)));
  add(filter.sourceLabel, (v) => guard('source_label', () => labelPred(v, (f) => f.source)));
  add(filter.destinationLabel, (v) => guard('destination_label', () => labelPred(v, (f) => f.destination)));
  add(filter.sourceClusterName, (v) => clusterPred(v, at('source_cluster_name'), ctx, (f) => f.source));
  add(filter.destinationClusterName, (v) => clusterPred(v, at('destination_cluster_name'), ctx, (f) => f.destination));
  add(filter.trafficDirection, (v) => (f) => v.includes(f.trafficDirection ?? 'TRAFFIC_DIRECTION_UNKNOWN'));
  add(filter.verdict, (v) => (f) => v.includes(f.verdict));
  add(filter.dropReasonDesc, (v) => dropReasonPred(v, at('drop_reason_desc')));
  add(
    filter.interface,
    (v) => (f) =>
      !!f.interface && v.some((i) => (!i.index || i.index === f.interface!.index) && (!i.name || i.name === f.interface!.name)),
  );
  add(
    filter.eventType,
    (v) => (f) =>
      !!f.eventType &&
      v.some(
        (t) => (!t.type || t.type === f.eventType!.type) && (!t.matchSubType || (t.subType ?? 0) === (f.eventType!.subType ?? 0)),
      ),
  );
  add(filter.protocol, (v) => protocolPred(v, at('protocol')));
  add(filter.sourcePort, (v) => portPred(v, at('source_port'), 'sourcePort'));
  add(filter.destinationPort, (v) => portPred(v, at('destination_port'), 'destinationPort'));
  add(filter.reply, (v) => (f) => (f.isReply !== undefined || f.verdict === 'DROPPED') && v.includes(f.isReply?.value ?? false));
  add(filter.sourceIdentity, (v) => (f) => !!f.source && v.includes(f.source.identity ?? 0));
  add(filter.destinationIdentity, (v) => (f) => !!f.destination && v.includes(f.destination.identity ?? 0));
  add(filter.tcpFlags, (v) => (f) => {
    const have = f.l4?.TCP?.flags;
    return !!have && v.some((want) => hasFlags(have, want));
  });
  add(filter.nodeName, (v) =>
    guard('node_name', () => {
      const m = nodeNameMatcher(v, ctx.clusterName ?? 'default');
      return (f: Flow) => m(f.nodeName ?? '');
    }),
  );
  add(filter.ipVersion, (v) => (f) => v.includes(f.IP?.ipVersion ?? 'IP_NOT_USED'));
  add(filter.encrypted, (v) => (f) => v.includes(f.IP?.encrypted ?? false));
  addL7(filter, at, guard, preds);
  const m = filter.membrane;
  add(m?.sourceEndpoint, (v) => (f) => v.includes(f.source?.ID ?? 0));
  add(m?.destinationEndpoint, (v) => (f) => v.includes(f.destination?.ID ?? 0));
  add(
    m?.policyName,
    (v) => (f) => policiesOf(f).some((p) => v.includes(p.name) || (!!p.namespace && v.includes(`${p.namespace}/${p.name}`))),
  );
  add(m?.event, (v) => (f) => v.includes(f.membrane?.event ?? 'MEMBRANE_EVENT_UNKNOWN'));
  return (f) => preds.every((p) => p(f));
}

/** HTTP and DNS filters read the flow's L7 record (set by L7 visibility). Like Hubble, the HTTP
 *  ones are refused next to an event type filter that cannot select L7 events. */
function addL7(
  filter: FlowFilter,
  at: (f: string) => string,
  guard: <T>(field: string, make: () => T) => T,
  preds: Pred[],
): void {
  const http = (f: Flow) => f.l7?.http;
  const l7Compatible = !filter.eventType?.length || filter.eventType.some((t) => t.type === MessageType.L7);
  const need = (field: string) => {
    if (!l7Compatible)
      throw new FilterError(`${at(field)}: needs the event type filter to select L7 events (type ${MessageType.L7})`);
  };
  if (filter.httpStatusCode?.length) {
    need('http_status_code');
    const full: string[] = [],
      prefix: string[] = [];
    for (const s of filter.httpStatusCode) {
      if (/^[1-5]\d\d$/.test(s)) full.push(s);
      else if (/^[1-5]\d?\+$/.test(s)) prefix.push(s.slice(0, -1));
      else throw new FilterError(`${at('http_status_code')}: "${s}" is not a status code or prefix ("404", "5+", "20+")`);
    }
    preds.push((f) => {
      const code = http(f)?.code;
      if (!code) return false;
      const text = String(code).padStart(3, '0');
      return full.includes(text) || prefix.some((p) => text.startsWith(p));
    });
  }
  if (filter.httpMethod?.length) {
    need('http_method');
    const methods = filter.httpMethod.map((m) => m.toUpperCase());
    preds.push((f) => !!http(f)?.method && methods.includes(http(f)!.method!.toUpperCase()));
  }
  if (filter.httpPath?.length) {
    need('http_path');
    const res = guard('http_path', () => filter.httpPath!.map((p) => new RegExp(p)));
    preds.push((f) => {
      const url = http(f)?.url;
      if (!url) return false;
      let path: string;
      try {
        path = new URL(url, 'http://membrane.invalid').pathname;
      } catch {
        return false;
      }
      return res.some((r) => r.test(path));
    });
  }
  if (filter.httpUrl?.length) {
    need('http_url');
    const res = guard('http_url', () => filter.httpUrl!.map((p) => new RegExp(p)));
    preds.push((f) => !!http(f)?.url && res.some((r) => r.test(http(f)!.url!)));
  }
  if (filter.httpHeader?.length) {
    need('http_header');
    const want = filter.httpHeader;
    preds.push((f) => (http(f)?.headers ?? []).some((h) => want.some((w) => w.key === h.key && w.value === h.value)));
  }
  if (filter.dnsQuery?.length) {
    const res = guard('dns_query', () => filter.dnsQuery!.map((p) => new RegExp(p)));
    preds.push((f) => f.l7?.dns?.query !== undefined && res.some((r) => r.test(f.l7!.dns!.query!)));
  }
}

function policiesOf(f: Flow): FlowPolicy[] {
  return [...(f.egressAllowedBy ?? []), ...(f.ingressAllowedBy ?? []), ...(f.egressDeniedBy ?? []), ...(f.ingressDeniedBy ?? [])];
}

function hasFlags(have: TcpFlags, want: TcpFlags): boolean {
  return (Object.keys(want) as (keyof TcpFlags)[]).every((k) => !want[k] || have[k]);
}

function ipPred(values: string[], what: string, get: (f: Flow) => string | undefined): Pred {
  const list = new net.BlockList();
  for (const raw of values) {
    let a: IfAddr;
    try {
      a = parseIfAddr(raw.trim());
    } catch (e) {
      throw new FilterError(`${what}: ${(e as Error).message}`);
    }
    const type = a.family === 4 ? 'ipv4' : 'ipv6';
    if (a.prefix === familyBits(a.family)) list.addAddress(a.ip, type);
    else list.addSubnet(a.ip, a.prefix, type);
  }
  return (f) => {
    const ip = get(f);
    if (!ip) return false;
    return list.check(ip, ip.includes(':') ? 'ipv6' : 'ipv4');
  };
}

const L4_PROTOCOLS: Record<string, (keyof NonNullable<Flow['l4']>)[]> = {
  tcp: ['TCP'],
  udp: ['UDP'],
  sctp: ['SCTP'],
  icmp: ['ICMPv4', 'ICMPv6'],
  icmpv4: ['ICMPv4'],
  icmpv6: ['ICMPv6'],
};
// Protocols Hubble's filter knows that Membrane's datapath never reports: matching nothing is the
// true answer for them, not a refusal.
const NEVER_SEEN = new Set(['vrrp', 'igmp', 'kafka']);

function protocolPred(values: string[], what: string): Pred {
  const keys = new Set<string>();
  let dns = false,
    http = false;
  for (const raw of values) {
    const v = raw.trim().toLowerCase();
    if (L4_PROTOCOLS[v]) for (const k of L4_PROTOCOLS[v]) keys.add(k);
    else if (v === 'dns') dns = true;
    else if (v === 'http') http = true;
    else if (!NEVER_SEEN.has(v))
      throw new FilterError(
        `${what}: unknown protocol "${raw}" (tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp, dns, http, kafka)`,
      );
  }
  return (f) => {
    const l4 = f.l4 ?? {};
    for (const k of keys) if (l4[k as keyof typeof l4]) return true;
    return (dns && !!f.l7?.dns) || (http && !!f.l7?.http);
  };
}

function portPred(values: string[], what: string, side: 'sourcePort' | 'destinationPort'): Pred {
  // Hubble takes single ports; a range "8000-8080" is Membrane's extension.
  const ranges = values.map((raw) => {
    const m = /^(\d+)(?:-(\d+))?$/.exec(raw.trim());
    const lo = m ? Number(m[1]) : NaN;
    const hi = m?.[2] !== undefined ? Number(m[2]) : lo;
    if (!m || lo > 65535 || hi > 65535 || hi < lo) throw new FilterError(`${what}: "${raw}" is not a port or port range`);
    return [lo, hi] as const;
  });
  return (f) => {
    const l4 = f.l4 ?? {};
    const ports = l4.TCP ?? l4.UDP ?? l4.SCTP;
    if (!ports) return false;
    const p = ports[side] ?? 0;
    return ranges.some(([lo, hi]) => p >= lo && p <= hi);
  };
}

function dropReasonPred(values: (string | number)[], what: string): Pred {
  const names = dropReasonNames();
  const wanted = new Set(
    values.map((v) => {
      const code = typeof v === 'number' ? v : /^\d+$/.test(v) ? Number(v) : dropReasonCode(v);
      if (code === undefined || (typeof v === 'number' && !(v in names) && v !== 0))
        throw new FilterError(`${what}: "${v}" is not a drop reason (e.g. POLICY_DENIED, POLICY_DENY, INVALID_SOURCE_IP)`);
      return code;
    }),
  );
  return (f) => f.dropReasonDesc !== undefined && wanted.has(dropReasonCode(f.dropReasonDesc) ?? -1);
}

/** Hubble's pod filter: "[namespace/]name-prefix"; no namespace means "default" (or a Docker container,
 *  which has none); "ns/" a namespace. */
function podPred(values: string[], what: string, get: (f: Flow) => FlowEndpoint | undefined): Pred {
  const parsed = values.map((v) => {
    if (v === '') throw new FilterError(`${what}: a pod name must not be empty`);
    const [first, ...rest] = v.split('/');
    // A bare name means namespace "default" as in Hubble, or no namespace at all: a Docker container.
    return rest.length ? { ns: first, prefix: rest[0], bare: false } : { ns: 'default', prefix: first, bare: true };
  });
  return (f) => {
    const ep = get(f);
    const ns = ep?.namespace ?? '',
      pod = ep?.podName ?? '';
    if (!ns && !pod) return false;
    return parsed.some((p) => (!p.prefix || pod.startsWith(p.prefix)) && (!p.ns || p.ns === ns || (p.bare && !ns)));
  };
}

function namesPred(patterns: string[], get: (f: Flow) => string[] | undefined): Pred {
  const m = fqdnMatcher(patterns);
  return (f) => (get(f) ?? []).some(m);
}

function labelPred(values: string[], get: (f: Flow) => FlowEndpoint | undefined): Pred {
  const selectors = values.map((v) => parseSelector(v));
  return (f) => {
    const labels = parseLabels(get(f)?.labels);
    return selectors.some((reqs) => requirementsMatch(reqs, labels));
  };
}

function clusterPred(values: string[], what: string, ctx: FilterContext, get: (f: Flow) => FlowEndpoint | undefined): Pred {
  if (!ctx.clusterName) throw new FilterError(`${what}: this node is not in a cluster, so flows carry no cluster name`);
  if (values.includes('')) throw new FilterError(`${what}: a cluster name must not be empty`);
  return (f) => values.includes(get(f)?.clusterName ?? '');
}
