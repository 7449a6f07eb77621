// A proxy worker's view of the policy (a snapshot from the agent) and the per-request decision. A
// diverted connection is checked on each side that is a local endpoint with L7 entries: the source's
// egress and the destination's ingress, probed exactly as the datapath probes (compile.ts), and a
// request goes through only when every such side allows it. A side whose table no longer proxies the
// traffic (policy changed) allows it when the entry is a plain allow, denies it when the entry is a
// deny or the direction is default-deny with no entry: a policy change takes effect on the next
// request of an open connection. Pure.
import { probe, type DirectionPolicy, type Entry } from '../../policy/compile.ts';
import type { HttpRuleRef } from '../../policy/l7.ts';
import { bigIntToIp, cidrContains, normalizeIp, parseCidr, type Cidr } from '../../net/index.ts';
import { compileHttpRule, matchHttp, type CompiledHttpRule, type HeaderEdit, type RequestView } from '../http/rules.ts';
import type { ProxySnapshot, SnapshotDirection } from './snapshot.ts';

const WORLD = 2;
const NO_EDITS: HeaderEdit[] = [];

/** One side's verdict. */
export interface SideVerdict {
  direction: 'ingress' | 'egress';
  endpoint: number;
  allowed: boolean;
  /** Policy rule id behind the verdict (0: none, e.g. default deny). */
  ruleId: number;
  /** The HTTP rule that allowed the request. */
  http?: HttpRuleRef;
  /** The entry sent the traffic through the proxy (false: plain allow/deny after a policy change). */
  l7: boolean;
}

export interface ProxyDecision {
  allowed: boolean;
  edits: HeaderEdit[];
  sides: SideVerdict[];
  mismatches: string[];
}

/** What the view knows of one connection's two ends; recomputed when the snapshot changes. */
export interface ConnectionPolicy {
  revision: number;
  src: { ip: string; identity: number; endpoint?: number };
  dst: { ip: string; identity: number; endpoint?: number };
  dport: number;
  sides: {
    direction: 'ingress' | 'egress';
    endpoint: number;
    entry: Entry | undefined;
    defaultDeny: boolean;
    rules?: CompiledHttpRule[];
  }[];
  /** Decisions by method, path and host (decide()), when no rule of any side looks at headers: the
   *  verdict then depends on nothing else, and this object is replaced when the policy changes. */
  verdicts?: Map<string, ProxyDecision>;
  /** The last decision taken from or put in `verdicts`, and what it was for (decide()). */
  last?: { method: string; path: string; host: string; d: ProxyDecision };
  /** The upstream pool's key for connections of this policy (the worker's, made at first use): one
   *  string per policy, not one built and hashed per connection. */
  poolKey?: string;
}

/** Decisions kept per connection policy (then the cache starts over): a bound on what a client that
 *  sends ever new paths can make a worker hold. Longer method + path + host are not cached. */
const MAX_CACHED_DECISIONS = 1024;
const MAX_CACHED_KEY = 512;

interface CompiledSet {
  refs: HttpRuleRef[];
  compiled: CompiledHttpRule[];
}

/** A table entry that remembers which compiled rule set (index into sets, -1 none) it proxies to. */
interface ViewEntry extends Entry {
  set: number;
}

let views = 0;

export class ProxyView {
  /** Distinct for every view (every snapshot): open connections re-resolve their policy when it changes. */
  readonly revision = ++views;
  private readonly byIp = new Map<string, { id: number; identity: number; policy: number }>();
  private readonly exact = new Map<string, number>();
  private readonly prefixes: { cidr: Cidr; identity: number }[] = [];
  private readonly identityCache = new Map<string, number>();
  /** Connections between the same two addresses and port share their (immutable) policy: by source,
   *  destination and port, not one `src|dst|port` string per connection (each accepted connection's
   *  string was built, flattened, hashed and compared: about 1 % of a worker's CPU at one request per
   *  connection). connCount bounds them all. */
  private readonly conns = new Map<string, Map<string, Map<number, ConnectionPolicy>>>();
  private connCount = 0;
  private readonly dirs: { ingress?: DirectionPolicy; egress?: DirectionPolicy }[];
  private readonly sets: CompiledSet[];

  constructor(private readonly s: ProxySnapshot) {
    for (const ep of s.endpoints)
      for (const ip of ep.ips) this.byIp.set(normalizeIp(ip), { id: ep.id, identity: ep.identity, policy: ep.policy });
    for (const [prefix, identity] of s.ipcache) {
      const c = parseCidr(prefix);
      if (c.prefix === c.bits) this.exact.set(bigIntToIp(c.base, c.family), identity);
      else this.prefixes.push({ cidr: c, identity });
    }
    this.prefixes.sort((a, b) => b.cidr.prefix - a.cidr.prefix);
    this.sets = s.l7Sets.map((refs) => ({ refs, compiled: refs.map((r) => compileHttpRule(r.http)) }));
    this.dirs = s.policies.map((p) => ({
      ingress: p.ingress && this.table(p.ingress),
      egress: p.egress && this.table(p.egress),
    }));
  }

  private table(d: SnapshotDirection): DirectionPolicy {
    const columns = new Map<number, Map<number, Entry>>();
    for (const [peer, code, action, ruleId, l7] of d.entries) {
      let col = columns.get(peer);
      if (!col) columns.set(peer, (col = new Map()));
      const e: ViewEntry = { action: action ? 'deny' : 'allow', ruleId, set: l7 };
      if (l7 >= 0) e.l7 = { kind: 'http', rules: this.s.l7Sets[l7] };
      col.set(code, e);
    }
    return { defaultDeny: d.defaultDeny, columns };
  }

  /** Identity of an address: a local endpoint's, else the longest ipcache prefix, else world. */
  identityOf(ip: string): number {
    const cached = this.identityCache.get(ip);
    if (cached !== undefined) return cached;
    const n = normalizeIp(ip);
    let id = this.byIp.get(n)?.identity ?? this.exact.get(n);
    if (id === undefined) id = this.prefixes.find((p) => cidrContains(p.cidr, n))?.identity ?? WORLD;
    if (this.identityCache.size > 100_000) this.identityCache.clear();
    this.identityCache.set(ip, id);
    return id;
  }

  /** The policy of a connection from src to dst:dport (TCP). */
  connection(srcIp: string, dstIp: string, dport: number): ConnectionPolicy {
    const bySrc = this.conns.get(srcIp);
    const byDst = bySrc?.get(dstIp);
    const cached = byDst?.get(dport);
    if (cached) return cached;
    const c = this.resolve(srcIp, dstIp, dport);
    if (this.connCount >= 100_000) {
      this.conns.clear();
      this.connCount = 0;
    }
    let src = this.conns.get(srcIp);
    if (!src) this.conns.set(srcIp, (src = new Map()));
    let dst = src.get(dstIp);
    if (!dst) src.set(dstIp, (dst = new Map()));
    dst.set(dport, c);
    this.connCount++;
    return c;
  }

  private resolve(srcIp: string, dstIp: string, dport: number): ConnectionPolicy {
    const srcEp = this.byIp.get(normalizeIp(srcIp));
    const dstEp = this.byIp.get(normalizeIp(dstIp));
    const src = { ip: srcIp, identity: this.identityOf(srcIp), ...(srcEp ? { endpoint: srcEp.id } : {}) };
    const dst = { ip: dstIp, identity: this.identityOf(dstIp), ...(dstEp ? { endpoint: dstEp.id } : {}) };
    const sides: ConnectionPolicy['sides'] = [];
    const add = (direction: 'ingress' | 'egress', ep: { id: number; policy: number } | undefined, peer: number) => {
      const dp = ep && ep.policy >= 0 ? this.dirs[ep.policy][direction] : undefined;
      if (!ep || !dp) return;
      const hit = probe(dp, peer, 6, dport)?.entry as ViewEntry | undefined;
      sides.push({
        direction,
        endpoint: ep.id,
        entry: hit,
        defaultDeny: dp.defaultDeny,
        ...(hit && hit.set >= 0 ? { rules: this.sets[hit.set].compiled } : {}),
      });
    };
    add('egress', srcEp, dst.identity);
    add('ingress', dstEp, src.identity);
    const headerFree = sides.every((x) => !x.rules || x.rules.every((r) => !r.headers.length && !r.matches.length));
    return { revision: this.revision, src, dst, dport, sides, ...(headerFree ? { verdicts: new Map() } : {}) };
  }

  /** The decision for one request: cached per connection policy when only method, path and host
   *  matter (ConnectionPolicy.verdicts), else worked out each time. Decisions are shared: read-only. */
  decide(c: ConnectionPolicy, req: RequestView): ProxyDecision {
    const cache = c.verdicts;
    // A path lenient servers read otherwise is decided on both readings, and the same strict path can
    // come with different lenient ones ("/a%2Fb/../c" and "/c"): such requests (rare) are not cached.
    if (!cache || req.altPath !== undefined) return this.work(c, req);
    const { method, path, host } = req;
    // The same request as the last one decided for these two ends (keep-alive clients mostly ask for
    // one thing again): no key to build and hash. Identity compares mostly (head.ts's strings).
    const last = c.last;
    if (last && last.path === path && last.method === method && last.host === host) return last.d;
    if (method.length + path.length + host.length > MAX_CACHED_KEY) return this.work(c, req);
    // A method is a token and a path has no spaces (the request line is split at them): unambiguous.
    const key = `${method} ${path} ${host}`;
    let d = cache.get(key);
    if (!d) {
      d = this.work(c, req);
      if (cache.size >= MAX_CACHED_DECISIONS) cache.clear();
      cache.set(key, d);
    }
    c.last = { method, path, host, d };
    return d;
  }

  private work(c: ConnectionPolicy, req: RequestView): ProxyDecision {
    const out: ProxyDecision = { allowed: true, edits: NO_EDITS, sides: [], mismatches: NO_EDITS as unknown as string[] };
    for (const side of c.sides) {
      const e = side.entry;
      let v: SideVerdict;
      if (e && side.rules) {
        const m = matchHttp(side.rules, req);
        const ref = m.allowed ? e.l7!.rules[m.rule] : undefined;
        v = {
          direction: side.direction,
          endpoint: side.endpoint,
          allowed: m.allowed,
          ruleId: ref?.ruleId ?? e.ruleId,
          l7: true,
          ...(ref ? { http: ref } : {}),
        };
        if (m.allowed && m.edits.length) out.edits = out.edits.length ? [...out.edits, ...m.edits] : m.edits;
        if (m.allowed && m.mismatches.length)
          out.mismatches = out.mismatches.length ? [...out.mismatches, ...m.mismatches] : m.mismatches;
      } else if (e) {
        v = { direction: side.direction, endpoint: side.endpoint, allowed: e.action === 'allow', ruleId: e.ruleId, l7: false };
      } else {
        v = { direction: side.direction, endpoint: side.endpoint, allowed: !side.defaultDeny, ruleId: 0, l7: false };
      }
      out.sides.push(v);
      if (!v.allowed) out.allowed = false;
    }
    if (!out.allowed) out.edits = NO_EDITS;
    return out;
  }
}
