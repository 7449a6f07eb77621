// The read side of the policy engine: the state the engine keeps (endpoints, identities, policies,
// the maps as last written) and the questions asked of it (endpoint get, identity list, trace, the
// DNS proxy's egress lookups, the L7 proxy's snapshot). Nothing here changes the maps; the engine
// (engine.ts) extends it with the changes.
import type { IdentityAllocator, IdentityView } from '../identity/allocator.ts';
import { CidrIdentities } from '../identity/cidr.ts';
import { FIRST_CIDR_IDENTITY, identityKind, type IdentityKind } from '../identity/reserved.ts';
import type { Labels } from '../identity/labels.ts';
import { buildSnapshot, type ProxySnapshot } from '../l7/proxy/snapshot.ts';
import { endpointKey } from '../endpoint/naming.ts';
import { fqdnLabels } from '../fqdn/identities.ts';
import type { Mirror } from './apply.ts';
import { l4decode, probe } from './compile.ts';
import { l7KindsOf, universeOf, type CompileCache, type EngineEndpoint } from './desired.ts';
import type { EgressEntry, EndpointPolicyView, PolicyEngineDeps } from './engine-types.ts';
import { l7Summary, type L7Summary } from './l7.ts';
import { decodePolicyKey } from './map-codec.ts';
import type { PolicyRepository } from './repository.ts';
import { selectionFor, type Selection } from './selection.ts';
import { describeRule, lookupIp, trace, type RuleDescription, type TraceQuery, type TraceResult } from './trace.ts';
import type { PolicyRecord } from './types.ts';

const NO_RECORDS: PolicyRecord[] = [];

export class PolicyView {
  protected readonly endpoints = new Map<string, EngineEndpoint>();
  protected readonly mirror: Mirror;
  protected cidrs: CidrIdentities;
  protected readonly compileCache: { current?: CompileCache } = {};
  /** Other nodes' endpoint addresses (cluster mode): prefix -> identity. */
  protected remote = new Map<string, number>();
  /** Bumped whenever the maps change: lookups cached for the DNS proxy are dropped. */
  protected generation = 0;
  private lookupGen = -1;
  private readonly byIp = new Map<string, EngineEndpoint>();
  private readonly peerOf = new Map<string, number>();

  protected constructor(
    protected readonly d: PolicyEngineDeps,
    readonly identities: IdentityAllocator,
    readonly repo: PolicyRepository,
  ) {
    // Start from what is pinned: a restarted agent changes only what differs.
    this.mirror = { policy: d.ops.readPolicy(), ipcache: d.ops.readIpcache(), flags: new Map() };
    this.cidrs = new CidrIdentities();
    for (const [prefix, id] of this.mirror.ipcache) if (id >= FIRST_CIDR_IDENTITY) this.cidrs.seed(prefix, id);
  }

  list(): PolicyRecord[] {
    return this.repo.list();
  }
  get(name: string): PolicyRecord | undefined {
    return this.repo.get(name);
  }
  get revision(): number {
    return this.repo.revision;
  }

  describeRule(ruleId: number): RuleDescription | undefined {
    return describeRule(this.repo.list(), ruleId);
  }

  labelsOf(identity: number): Labels | undefined {
    if (identityKind(identity) === 'fqdn') return this.d.fqdn?.identities.labelsOf(identity);
    if (identity >= FIRST_CIDR_IDENTITY) {
      const prefix = this.cidrs.prefixOf(identity);
      return prefix ? { [`cidr:${prefix}`]: '', 'reserved:world': '' } : undefined;
    }
    return this.identities.labelsOf(identity);
  }

  trace(q: TraceQuery): TraceResult {
    const labelsOf = (id: number) => this.identities.labelsOf(id);
    return trace(
      {
        records: this.repo.list(),
        universe: universeOf(
          [...this.endpoints.values(), ...remotePeers(this.remote)],
          labelsOf,
          this.cidrs,
          this.d.fqdn?.identities,
        ),
        cidrs: this.cidrs,
        ipcache: this.mirror.ipcache,
        labelsOf,
        ...(this.d.fqdn ? { fqdn: this.d.fqdn } : {}),
      },
      q,
    );
  }

  /** The policies selecting an endpoint, its identity and enforcement (for `endpoint get`). */
  endpointPolicy(attachment: string, ifName: string): EndpointPolicyView | undefined {
    const e = this.endpoints.get(endpointKey(attachment, ifName));
    if (!e) return undefined;
    const sel = this.selection(e);
    return {
      identity: e.identity,
      labels: this.identities.labelsOf(e.identity) ?? {},
      audit: e.audit,
      init: sel.init,
      enforcement: {
        ingress: sel.ingress.defaultDeny ? 'default-deny' : sel.ingress.hasRules ? 'rules-only' : 'allow-all',
        egress: sel.egress.defaultDeny ? 'default-deny' : sel.egress.hasRules ? 'rules-only' : 'allow-all',
      },
      policies: sel.policies,
      entries: [...this.mirror.policy.keys()].filter((k) => decodePolicyKey(Buffer.from(k, 'hex')).endpointId === e.id).length,
      l7: this.l7Of(e),
    };
  }

  /** Changes whenever the maps do: what egressEntry answered may be cached until then. */
  get mapsGeneration(): number {
    return this.generation;
  }

  /** For the DNS proxy: the sending endpoint and the entry its egress policy has for dst:dport (probed
   *  as the datapath probes). undefined when src is no endpoint of this node. */
  egressEntry(srcIp: string, dstIp: string, proto: number, dport: number): EgressEntry | undefined {
    if (this.lookupGen !== this.generation) {
      this.lookupGen = this.generation;
      this.byIp.clear();
      this.peerOf.clear();
    }
    if (!this.byIp.size) for (const e of this.endpoints.values()) for (const ip of e.ips) this.byIp.set(ip, e);
    const ep = this.byIp.get(srcIp);
    if (!ep) return undefined;
    let peer = this.peerOf.get(dstIp);
    if (peer === undefined) {
      peer = lookupIp(this.mirror.ipcache, dstIp);
      if (this.peerOf.size > 50_000) this.peerOf.clear();
      this.peerOf.set(dstIp, peer);
    }
    const labels = this.identities.labelsOf(ep.identity) ?? { 'reserved:init': '' };
    const dp = this.compileCache.current?.compiler.forLabels(labels).egress;
    const sel = this.selection(ep).egress;
    const hit = dp ? probe(dp, peer, proto, dport) : undefined;
    return {
      endpoint: ep.id,
      identity: ep.identity,
      peer,
      ...(hit ? { entry: hit.entry } : {}),
      defaultDeny: sel.defaultDeny,
      lookup: sel.defaultDeny || sel.hasRules,
    };
  }

  private httpRulesOf?: { records: PolicyRecord[]; any: boolean };
  /** Whether the policy the maps were last built from has HTTP rules (memoised per record set). Without
   *  them no endpoint's table has an HTTP entry, proxySnapshot() has no policies and the workers are not
   *  wanted: building it (every endpoint, the whole ipcache) on each ADD would be work for nobody.
   *  Asked of the compiled records, not the repository's: an import's maps are written and announced
   *  (onChange) before its records are committed to the store, so the repository still holds the old
   *  set when the L7 side reacts (the bug of 41d113d: the workers never started after an import). */
  hasHttpRules(): boolean {
    const records = this.compileCache.current?.records ?? NO_RECORDS;
    if (this.httpRulesOf?.records !== records) this.httpRulesOf = { records, any: l7KindsOf(records).has('http') };
    return this.httpRulesOf.any;
  }

  /** What the L7 proxy workers need: endpoints, ipcache, the table of every direction a policy selects. */
  proxySnapshot(): ProxySnapshot {
    const compiler = this.compileCache.current?.compiler;
    const labelsOf = (id: number) => this.identities.labelsOf(id);
    return buildSnapshot({
      revision: this.repo.revision,
      endpoints: [...this.endpoints.values()],
      labelsOf,
      policyFor: (labels) =>
        compiler?.forLabels(labels) ?? {
          ingress: { defaultDeny: false, columns: new Map() },
          egress: { defaultDeny: false, columns: new Map() },
          selectedBy: [],
        },
      ipcache: this.mirror.ipcache,
    });
  }

  identityList(): (IdentityView & { endpoints: number })[] {
    const counts = new Map<number, number>();
    for (const e of this.endpoints.values()) counts.set(e.identity, (counts.get(e.identity) ?? 0) + 1);
    const label = this.identities.list().map((i) => ({ ...i, endpoints: counts.get(i.id) ?? 0 }));
    const cidr = this.cidrs
      .entries()
      .sort((a, b) => a.id - b.id)
      .map((c) => ({
        id: c.id,
        kind: 'cidr' as IdentityKind,
        labels: { [`cidr:${c.text}`]: '', 'reserved:world': '' },
        refs: 0,
        endpoints: 0,
      }));
    const fqdn = (this.d.fqdn?.identities.list() ?? []).map((i) => ({
      id: i.id,
      kind: 'fqdn' as IdentityKind,
      labels: fqdnLabels(i),
      refs: 0,
      endpoints: 0,
    }));
    return [...label, ...cidr, ...fqdn];
  }

  mapUsage(): { policyEntries: number; ipcachePrefixes: number; endpoints: number } {
    return { policyEntries: this.mirror.policy.size, ipcachePrefixes: this.mirror.ipcache.size, endpoints: this.endpoints.size };
  }

  protected selection(e: EngineEndpoint): Selection {
    return selectionFor(this.repo.list(), this.identities.labelsOf(e.identity) ?? { 'reserved:init': '' });
  }

  private l7Of(e: EngineEndpoint): L7Summary[] {
    const compiler = this.compileCache.current?.compiler;
    return compiler
      ? l7Summary(compiler.forLabels(this.identities.labelsOf(e.identity) ?? { 'reserved:init': '' }), l4decode)
      : [];
  }
}

function remotePeers(remote: Map<string, number>): { identity: number }[] {
  return [...new Set(remote.values())].map((identity) => ({ identity }));
}
