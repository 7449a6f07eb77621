// `membrane policy trace`: would a new connection from SRC to DST on PORT/PROTO be allowed, and by
// which rule? Answered by compiling the same entries the datapath holds and probing them in the
// datapath's order, so the trace cannot disagree with enforcement. Pure.
import { canonicalLabels, formatLabels, type Labels } from '../identity/labels.ts';
import { parseCidr, cidrContains } from '../net/index.ts';
import { FIRST_CIDR_IDENTITY, RESERVED, identityKind, reservedName } from '../identity/reserved.ts';
import type { FqdnState } from '../fqdn/state.ts';
import { fqdnLabels, type FqdnPeers } from '../fqdn/identities.ts';
import { canonicalName, dnsRuleMatches, selectorText } from '../fqdn/selector.ts';
import type { CidrIdentities } from '../identity/cidr.ts';
import { PolicyCompiler, probe, type Universe } from './compile.ts';
import { describeL4 } from './ports.ts';
import { decodeRuleId } from './rule-id.ts';
import { selectionFor } from './selection.ts';
import { matches } from './selector.ts';
import type { Direction, HttpRule, PolicyRecord } from './types.ts';
import type { L7Set } from './l7.ts';
import { compileHttpRule, matchHttp, normalizeTarget } from '../l7/http/rules.ts';

/** A side of the connection: an endpoint by labels, an address (endpoint, host, CIDR or world), or a
 *  DNS name (its addresses the DNS proxy learned, else a yet unknown address of that name). */
export type TraceSide = { labels: Labels } | { ip: string } | { fqdn: string };

/** An HTTP request to check against L7 rules (fields not given match only rules that do not ask). */
export interface TraceHttp {
  method?: string;
  path?: string;
  host?: string;
  headers?: Record<string, string>;
}

export interface TraceQuery {
  src: TraceSide;
  dst: TraceSide;
  proto: number;
  dport: number;
  http?: TraceHttp;
  /** A DNS query name to check against DNS rules (on a port with them). */
  dnsQuery?: string;
}

export interface RuleDescription {
  policy: string;
  path: string;
  direction: Direction;
  action: 'allow' | 'deny';
  ruleId: number;
}

export interface TraceStep {
  direction: Direction;
  /** Whose policy: the source's egress or the destination's ingress. */
  enforcedBy: string;
  verdict: 'allow' | 'deny';
  reason: string;
  rule?: RuleDescription;
  /** The traffic goes through the L7 proxy: these HTTP rules decide each request. */
  l7?:
    | { kind: 'http'; rules: { policy: string; path: string; http: HttpRule }[]; matched?: string }
    /** ... or through the DNS proxy: these DNS rules decide each query. */
    | {
        kind: 'dns';
        rules: { policy: string; path: string; dns: { matchName?: string; matchPattern?: string } }[];
        matched?: string;
      };
}

/** One side of a trace. `unallocated`: the labels given belong to no identity yet, so `identity` is a
 *  stand-in; `candidates`: the live identities those labels select when there are several. */
export interface TraceResultSide {
  identity: number;
  labels: Labels;
  endpoint: boolean;
  unallocated?: boolean;
  candidates?: number[];
}

export interface TraceResult {
  verdict: 'allow' | 'deny';
  src: TraceResultSide;
  dst: TraceResultSide;
  port: string;
  steps: TraceStep[];
  /** For a destination given by name: what is known of it. */
  fqdn?: { name: string; addresses: string[]; note?: string };
}

export interface TraceContext {
  records: PolicyRecord[];
  /** Identities of live endpoints (and init/health), as compile.ts's Universe. */
  universe: Universe;
  cidrs: CidrIdentities;
  ipcache: Map<string, number>;
  labelsOf: (identity: number) => Labels | undefined;
  /** What DNS taught (toFQDNs destinations). */
  fqdn?: FqdnState;
}

const VIRTUAL = { src: 0xfffffe, dst: 0xfffffd, fqdn: 0xfffffffe }; // never allocated in practice

export function describeRule(records: PolicyRecord[], ruleId: number): RuleDescription | undefined {
  const d = decodeRuleId(ruleId);
  if (!d) return undefined;
  const rec = records.find((r) => r.number === d.policyNumber);
  const rule = rec?.policy.specs
    .flatMap((s) => s.rules)
    .find((r) => r.direction === d.direction && r.action === d.action && r.index === d.index);
  if (!rec || !rule) return undefined;
  return { policy: rec.name, path: rule.path, direction: d.direction, action: d.action, ruleId };
}

/** Longest-prefix match over the ipcache content, like the LPM trie. */
export function lookupIp(ipcache: Map<string, number>, ip: string): number {
  let best = -1,
    id: number = RESERVED.world;
  for (const [prefix, identity] of ipcache) {
    const c = parseCidr(prefix);
    if (c.prefix > best && cidrContains(c, ip)) {
      best = c.prefix;
      id = identity;
    }
  }
  return id;
}

function identityLabels(ctx: TraceContext, id: number): Labels {
  if (identityKind(id) === 'fqdn') return ctx.fqdn?.identities.labelsOf(id) ?? { 'reserved:world': '' };
  if (id >= FIRST_CIDR_IDENTITY) return { [`cidr:${ctx.cidrs.prefixOf(id) ?? '?'}`]: '', 'reserved:world': '' };
  const name = reservedName(id);
  if (name) return { [`reserved:${name}`]: '' };
  return ctx.labelsOf(id) ?? {};
}

export function trace(ctx: TraceContext, q: TraceQuery): TraceResult {
  if ('fqdn' in q.dst) return traceFqdn(ctx, q, q.dst.fqdn);
  return traceResolved(ctx, q);
}

/** A destination by name: the first address DNS taught for it, else a virtual one its selectors choose. */
function traceFqdn(ctx: TraceContext, q: TraceQuery, raw: string): TraceResult {
  const name = canonicalName(raw);
  const addresses = ctx.fqdn?.cache.ipsOf(name).map((e) => e.ip) ?? [];
  if (addresses.length) {
    return { ...traceResolved(ctx, { ...q, dst: { ip: addresses[0] } }), fqdn: { name, addresses } };
  }
  const selectors = ctx.fqdn?.selectorsMatching(name) ?? [];
  const virtual = { id: VIRTUAL.fqdn, selectors, prefixes: [] as string[] };
  const base = ctx.universe.fqdn;
  const peers: FqdnPeers = {
    version: -1,
    select: (key) => [...(base?.select(key) ?? []), ...(selectors.includes(key) ? [virtual.id] : [])],
    within: (outer, except) => base?.within(outer, except) ?? [],
    all: () => [...(base?.all() ?? []), virtual.id],
  };
  const note = `${name} has not been looked up through the DNS proxy: no address of it is allowed yet; traced as an address outside every policy prefix that ${selectors.length ? `the toFQDNs selectors ${selectors.map((k) => k.slice(k.indexOf(':') + 1)).join(', ')} would select` : 'no toFQDNs selector selects'}`;
  const r = traceResolved({ ...ctx, universe: { ...ctx.universe, fqdn: peers } }, q, {
    identity: virtual.id,
    labels: fqdnLabels(virtual),
    endpoint: false,
  });
  return { ...r, fqdn: { name, addresses: [], note } };
}

function traceResolved(ctx: TraceContext, q: TraceQuery, dstOverride?: TraceResult['dst']): TraceResult {
  const extra: { id: number; labels: Labels }[] = [];
  const resolve = (side: TraceSide, virtual: number): TraceResultSide => {
    if ('fqdn' in side) throw new Error('a source cannot be a DNS name');
    if ('labels' in side) {
      const key = canonicalLabels(side.labels);
      const known = ctx.universe.identities.find((i) => canonicalLabels(i.labels) === key);
      if (known) return { identity: known.id, labels: side.labels, endpoint: true };
      // "app=client" as a user means it: the live endpoint identity whose labels include it (any
      // source, like a selector), when there is exactly one.
      const selected = ctx.universe.identities.filter(
        (i) => identityKind(i.id) === 'endpoint' && matches({ matchLabels: side.labels, matchExpressions: [] }, i.labels),
      );
      if (selected.length === 1) return { identity: selected[0].id, labels: selected[0].labels, endpoint: true };
      extra.push({ id: virtual, labels: side.labels });
      return {
        identity: virtual,
        labels: side.labels,
        endpoint: true,
        unallocated: true,
        ...(selected.length ? { candidates: selected.map((i) => i.id).sort((a, b) => a - b) } : {}),
      };
    }
    const id = lookupIp(ctx.ipcache, side.ip);
    return {
      identity: id,
      labels: identityLabels(ctx, id),
      endpoint: identityKind(id) === 'endpoint' || id === RESERVED.init || id === RESERVED.health,
    };
  };
  const src = resolve(q.src, VIRTUAL.src);
  const dst = dstOverride ?? resolve(q.dst, VIRTUAL.dst);
  const compiler = new PolicyCompiler(ctx.records, {
    identities: [...ctx.universe.identities, ...extra],
    cidrs: ctx.cidrs,
    ...(ctx.universe.fqdn ? { fqdn: ctx.universe.fqdn } : {}),
  });
  const steps: TraceStep[] = [];
  if (src.endpoint) steps.push(step(ctx, compiler, 'egress', src.labels, dst.identity, q));
  if (dst.endpoint) steps.push(step(ctx, compiler, 'ingress', dst.labels, src.identity, q));
  return {
    verdict: steps.some((s) => s.verdict === 'deny') ? 'deny' : 'allow',
    src,
    dst,
    port: describeL4({ proto: q.proto, dport: q.dport }),
    steps,
  };
}

function step(
  ctx: TraceContext,
  compiler: PolicyCompiler,
  direction: Direction,
  local: Labels,
  peer: number,
  q: TraceQuery,
): TraceStep {
  const enforcedBy = `${direction === 'egress' ? 'source' : 'destination'} ${formatLabels(local)}`;
  const sel = selectionFor(ctx.records, local)[direction];
  if (!sel.defaultDeny && !sel.hasRules) {
    return { direction, enforcedBy, verdict: 'allow', reason: `no policy selects it for ${direction}` };
  }
  const hit = probe(compiler.forLabels(local)[direction], peer, q.proto, q.dport);
  if (hit?.entry.l7?.kind === 'dns') return dnsStep(ctx, direction, enforcedBy, hit.entry.l7, q.dnsQuery);
  if (hit?.entry.l7) return l7Step(ctx, direction, enforcedBy, hit.entry.l7, q.http);
  if (hit) {
    const rule = describeRule(ctx.records, hit.entry.ruleId);
    const reason = rule
      ? `${hit.entry.action === 'deny' ? 'denied' : 'allowed'} by ${rule.policy} ${rule.path}`
      : hit.entry.action === 'allow'
        ? 'allowed: the node may always reach its endpoints (host allowance)'
        : 'denied';
    return { direction, enforcedBy, verdict: hit.entry.action, reason, ...(rule ? { rule } : {}) };
  }
  if (sel.defaultDeny)
    return { direction, enforcedBy, verdict: 'deny', reason: `default deny: selected for ${direction} and no rule allows it` };
  return { direction, enforcedBy, verdict: 'allow', reason: 'no rule matches and the direction is not default-deny' };
}

/** A step that ends at an L7 entry: the HTTP rules, and their verdict for q.http when given. */
function l7Step(ctx: TraceContext, direction: Direction, enforcedBy: string, set: L7Set, http: TraceHttp | undefined): TraceStep {
  const rules = set.rules.map((r) => ({
    policy: describeRule(ctx.records, r.ruleId)?.policy ?? '?',
    path: r.path,
    http: r.http,
  }));
  const l7 = { kind: 'http' as const, rules };
  const policies = [...new Set(rules.map((r) => r.policy))].join(', ');
  if (!http) {
    return {
      direction,
      enforcedBy,
      verdict: 'allow',
      l7,
      reason: `allowed at L3/L4 through the HTTP proxy (${policies}): each request must match one of ${rules.length} HTTP rule${rules.length > 1 ? 's' : ''} (give --http-method/--http-path to check one)`,
    };
  }
  const method = http.method ?? 'GET';
  const target = normalizeTarget(http.path ?? '/', http.host ?? '');
  const headers = Object.entries(http.headers ?? {});
  const m = matchHttp(
    set.rules.map((r) => compileHttpRule(r.http)),
    {
      method,
      path: target.path,
      altPath: target.altPath,
      host: target.host,
      names: headers.map(([k]) => k.toLowerCase()),
      values: headers.map(([, v]) => v),
    },
  );
  const request = `${method} ${http.path ?? '/'}`;
  if (!m.allowed) {
    return {
      direction,
      enforcedBy,
      verdict: 'deny',
      l7,
      reason: m.readAs
        ? `denied by the HTTP proxy (403): ${request} is ${m.readAs} to servers that decode %2F, merge slashes or drop ;parameters (nginx, Tomcat), and none of the ${rules.length} HTTP rule${rules.length > 1 ? 's' : ''} of ${policies} allows that`
        : `denied by the HTTP proxy (403): ${request} matches none of the ${rules.length} HTTP rule${rules.length > 1 ? 's' : ''} of ${policies}`,
    };
  }
  const hit = rules[m.rule];
  return {
    direction,
    enforcedBy,
    verdict: 'allow',
    l7: { ...l7, matched: hit.path },
    reason: `${request} allowed by ${hit.policy} ${hit.path}${m.edits.length ? ` (headers changed: ${m.edits.map((e) => `${e.op} ${e.name}`).join(', ')})` : ''}`,
  };
}

/** A step that ends at a DNS entry: the DNS rules, and their verdict for a query name when given. */
function dnsStep(ctx: TraceContext, direction: Direction, enforcedBy: string, set: L7Set, query: string | undefined): TraceStep {
  const refs = set.dns ?? [];
  const rules = refs.map((r) => ({ policy: describeRule(ctx.records, r.ruleId)?.policy ?? '?', path: r.path, dns: r.dns }));
  const l7 = { kind: 'dns' as const, rules };
  const policies = [...new Set(rules.map((r) => r.policy))].join(', ');
  const n = `${rules.length} DNS rule${rules.length > 1 ? 's' : ''}`;
  if (query === undefined) {
    return {
      direction,
      enforcedBy,
      verdict: 'allow',
      l7,
      reason: `allowed at L3/L4 through the DNS proxy (${policies}): each query's name must match one of ${n} (give --dns-query NAME to check one)`,
    };
  }
  const name = canonicalName(query);
  const i = refs.findIndex((r) => dnsRuleMatches(r.dns, name));
  if (i < 0)
    return {
      direction,
      enforcedBy,
      verdict: 'deny',
      l7,
      reason: `the DNS proxy refuses ${name} (REFUSED): it matches none of the ${n} of ${policies}`,
    };
  const hit = rules[i];
  const what = [
    hit.dns.matchName && `matchName ${selectorText({ matchName: hit.dns.matchName })}`,
    hit.dns.matchPattern && `matchPattern ${selectorText({ matchPattern: hit.dns.matchPattern })}`,
  ]
    .filter(Boolean)
    .join(' / ');
  return {
    direction,
    enforcedBy,
    verdict: 'allow',
    l7: { ...l7, matched: hit.path },
    reason: `lookup of ${name} allowed by ${hit.policy} ${hit.path} (${what})`,
  };
}
