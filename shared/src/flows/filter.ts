// FlowFilter semantics, as in Hubble: inside one filter every field that is set must match (AND),
// a field matches when any of its values does (OR); a flow passes when it matches at least one
// whitelist filter (or there is none) and no blacklist filter. Filters are compiled once per
// request, so a bad value is an error up front (the server answers INVALID_ARGUMENT). Pure.
import net from 'node:net';
import type { Flow, FlowEndpoint, FlowFilter, FlowPolicy } from './types.ts';

export class FilterError extends Error {
  constructor(message: string) { super(message); this.name = 'FilterError'; }
}

type Pred = (f: Flow) => boolean;

export function compileFilters(whitelist: FlowFilter[] = [], blacklist: FlowFilter[] = []): Pred {
  const allow = whitelist.map((f, i) => compileFilter(f, `whitelist[${i}]`));
  const deny = blacklist.map((f, i) => compileFilter(f, `blacklist[${i}]`));
  if (!allow.length && !deny.length) return () => true;
  return (f) => (!allow.length || allow.some((p) => p(f))) && !deny.some((p) => p(f));
}

export function compileFilter(filter: FlowFilter, where = 'filter'): Pred {
  const preds: Pred[] = [];
  const add = <T>(values: T[] | undefined, make: (values: T[]) => Pred) => { if (values?.length) preds.push(make(values)); };
  add(filter.sourceIp, (v) => ipPred(v, `${where}.source_ip`, (f) => f.ip?.source));
  add(filter.destinationIp, (v) => ipPred(v, `${where}.destination_ip`, (f) => f.ip?.destination));
  add(filter.verdict, (v) => (f) => v.includes(f.verdict));
  add(filter.eventType, (v) => (f) => v.includes(f.eventType));
  add(filter.protocol, (v) => protocolPred(v, `${where}.protocol`));
  add(filter.sourceLabel, (v) => labelPred(v, `${where}.source_label`, (f) => f.source));
  add(filter.destinationLabel, (v) => labelPred(v, `${where}.destination_label`, (f) => f.destination));
  add(filter.sourcePort, (v) => portPred(v, `${where}.source_port`, 'sourcePort'));
  add(filter.destinationPort, (v) => portPred(v, `${where}.destination_port`, 'destinationPort'));
  add(filter.reply, (v) => (f) => f.isReply !== undefined && v.includes(f.isReply.value));
  add(filter.sourceIdentity, (v) => (f) => v.includes(f.source?.identity ?? 0));
  add(filter.destinationIdentity, (v) => (f) => v.includes(f.destination?.identity ?? 0));
  add(filter.nodeName, (v) => (f) => v.includes(f.nodeName));
  add(filter.ipVersion, (v) => (f) => v.includes(f.ip?.ipVersion));
  add(filter.trafficDirection, (v) => (f) => v.includes(f.trafficDirection));
  add(filter.dropReasonDesc, (v) => (f) => f.dropReasonDesc !== undefined && v.includes(f.dropReasonDesc));
  add(filter.sourceEndpoint, (v) => (f) => v.includes(f.source?.id ?? 0));
  add(filter.destinationEndpoint, (v) => (f) => v.includes(f.destination?.id ?? 0));
  add(filter.sourcePod, (v) => podPred(v, (f) => f.source));
  add(filter.destinationPod, (v) => podPred(v, (f) => f.destination));
  add(filter.policyName, (v) => (f) => policiesOf(f).some((p) => v.includes(p.name)));
  return (f) => preds.every((p) => p(f));
}

function policiesOf(f: Flow): FlowPolicy[] {
  return [...(f.egressAllowedBy ?? []), ...(f.ingressAllowedBy ?? []), ...(f.egressDeniedBy ?? []), ...(f.ingressDeniedBy ?? [])];
}

function ipPred(values: string[], what: string, get: (f: Flow) => string | undefined): Pred {
  const list = new net.BlockList();
  for (const raw of values) {
    const [addr, bits, extra] = raw.trim().split('/');
    const type = net.isIPv4(addr) ? 'ipv4' : net.isIPv6(addr) ? 'ipv6' : null;
    const max = type === 'ipv4' ? 32 : 128;
    if (!type || extra !== undefined) throw new FilterError(`${what}: "${raw}" is not an IP address or CIDR`);
    if (bits === undefined) { list.addAddress(addr, type); continue; }
    const prefix = Number(bits);
    if (!/^\d+$/.test(bits) || prefix > max) throw new FilterError(`${what}: "${raw}" has an invalid prefix length`);
    list.addSubnet(addr, prefix, type);
  }
  return (f) => {
    const ip = get(f);
    if (!ip) return false;
    return list.check(ip, ip.includes(':') ? 'ipv6' : 'ipv4');
  };
}

const PROTOCOLS: Record<string, (keyof Flow['l4'])[]> = {
  tcp: ['tcp'], udp: ['udp'], sctp: ['sctp'], icmp: ['icmpv4', 'icmpv6'], icmpv4: ['icmpv4'], icmpv6: ['icmpv6'],
  '6': ['tcp'], '17': ['udp'], '132': ['sctp'], '1': ['icmpv4'], '58': ['icmpv6'],
};

function protocolPred(values: string[], what: string): Pred {
  const keys = new Set<string>();
  const numbers = new Set<number>();
  for (const raw of values) {
    const v = raw.trim().toLowerCase();
    if (PROTOCOLS[v]) PROTOCOLS[v].forEach((k) => keys.add(k));
    else if (/^\d+$/.test(v) && Number(v) < 256) numbers.add(Number(v));
    else throw new FilterError(`${what}: unknown protocol "${raw}" (tcp, udp, sctp, icmp, icmpv4, icmpv6 or a number)`);
  }
  return (f) => {
    const l4 = f.l4 ?? {};
    for (const k of keys) if (l4[k as keyof typeof l4]) return true;
    return l4.other !== undefined && numbers.has(l4.other.protocol);
  };
}

function portPred(values: string[], what: string, side: 'sourcePort' | 'destinationPort'): Pred {
  const ranges = values.map((raw) => {
    const m = /^(\d+)(?:-(\d+))?$/.exec(raw.trim());
    const lo = m ? Number(m[1]) : NaN;
    const hi = m?.[2] !== undefined ? Number(m[2]) : lo;
    if (!m || lo > 65535 || hi > 65535 || hi < lo) throw new FilterError(`${what}: "${raw}" is not a port or port range`);
    return [lo, hi] as const;
  });
  return (f) => {
    const l4 = f.l4 ?? {};
    const ports = l4.tcp ?? l4.udp ?? l4.sctp;
    if (!ports) return false;
    const p = ports[side];
    return ranges.some(([lo, hi]) => p >= lo && p <= hi);
  };
}

/** One selector term: key with optional source prefix, and "=value", presence, or "!" absence. */
interface Term { key: string; source: string | null; value?: string; absent: boolean }

const SOURCES = new Set(['k8s', 'docker', 'container', 'reserved', 'cidr', 'any', 'unspec', 'cni', 'membrane']);

function splitSource(key: string): { source: string | null; key: string } {
  const colon = key.indexOf(':');
  if (colon > 0 && SOURCES.has(key.slice(0, colon))) return { source: key.slice(0, colon), key: key.slice(colon + 1) };
  return { source: null, key };
}

export function parseSelector(text: string, what = 'label'): Term[] {
  const terms = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (!terms.length) throw new FilterError(`${what}: empty label selector`);
  return terms.map((t) => {
    const absent = t.startsWith('!');
    const body = absent ? t.slice(1) : t;
    const eq = body.indexOf('=');
    const rawKey = (eq >= 0 ? body.slice(0, eq) : body).trim();
    if (!rawKey || (absent && eq >= 0)) throw new FilterError(`${what}: "${t}" is not a label selector (k=v, k or !k)`);
    const { source, key } = splitSource(rawKey);
    return { key, source: source === 'any' ? null : source, absent, ...(eq >= 0 ? { value: body.slice(eq + 1).trim() } : {}) };
  });
}

function termMatches(term: Term, labels: { source: string | null; key: string; value: string }[]): boolean {
  const found = labels.some((l) => l.key === term.key && (term.source === null || term.source === l.source) &&
    (term.value === undefined || term.value === l.value));
  return term.absent ? !found : found;
}

function parsedLabels(ep: FlowEndpoint | undefined): { source: string | null; key: string; value: string }[] {
  return (ep?.labels ?? []).map((l) => {
    const eq = l.indexOf('=');
    const { source, key } = splitSource(eq >= 0 ? l.slice(0, eq) : l);
    return { source, key, value: eq >= 0 ? l.slice(eq + 1) : '' };
  });
}

function labelPred(values: string[], what: string, get: (f: Flow) => FlowEndpoint | undefined): Pred {
  const selectors = values.map((v) => parseSelector(v, what));
  return (f) => {
    const labels = parsedLabels(get(f));
    return selectors.some((terms) => terms.every((t) => termMatches(t, labels)));
  };
}

function podPred(values: string[], get: (f: Flow) => FlowEndpoint | undefined): Pred {
  return (f) => {
    const ep = get(f);
    if (!ep) return false;
    return values.some((v) => {
      const slash = v.indexOf('/');
      if (slash < 0) return (ep.podName ?? '').startsWith(v) || (ep.containerId ?? '').startsWith(v);
      return (ep.namespace ?? '') === v.slice(0, slash) && (ep.podName ?? '').startsWith(v.slice(slash + 1));
    });
  };
}
