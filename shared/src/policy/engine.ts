// The policy engine: identities, named policies and the endpoints they apply to, kept in the
// datapath maps. Every change (import, delete, endpoint create/delete/relabel, host address change)
// recomputes the desired map content and applies the difference (apply.ts), one change at a time.
// Nothing here touches a syscall directly: the maps are behind PolicyDatapathOps.
import type { Endpoint } from '../types.ts';
import type { Store } from '../store/index.ts';
import { IdentityAllocator, type IdentityBackend, type IdentityView } from '../identity/allocator.ts';
import { CidrIdentities } from '../identity/cidr.ts';
import { addressOnly, normalizeCidr } from '../net/index.ts';
import { FIRST_CIDR_IDENTITY, RESERVED, identityKind, type IdentityKind } from '../identity/reserved.ts';
import type { Labels } from '../identity/labels.ts';
import type { LabelFilter } from '../labels/filter.ts';
import { applyDesired, type ApplyStats, type Mirror, type PolicyDatapathOps } from './apply.ts';
import { decodePolicyKey } from './map-codec.ts';
import { buildDesired, l7KindsOf, universeOf, type CompileCache, type Desired, type DesiredInput, type EngineEndpoint } from './desired.ts';
import { formatIssue, parsePolicies, type PolicyIssue } from './parse.ts';
import { MembraneError } from '../errors.ts';
import { PolicyConflictError, PolicyRepository, type PersistedPolicies, type Plan, type PolicyBackend } from './repository.ts';
import { endpointFlags, selectionFor, type Selection } from './selection.ts';
import { describeRule, lookupIp, trace, type RuleDescription, type TraceQuery, type TraceResult } from './trace.ts';
import type { PolicyRecord } from './types.ts';
import { l7Summary, type L7Summary } from './l7.ts';
import { l4decode, probe, type Entry } from './compile.ts';
import { buildSnapshot, type ProxySnapshot } from '../l7/proxy/snapshot.ts';
import { attachmentId, endpointKey } from '../endpoint/naming.ts';
import type { FqdnState } from '../fqdn/state.ts';
import { fqdnLabels } from '../fqdn/identities.ts';
import { fqdnIpcacheDiff } from './fqdn-ipcache.ts';

/** Endpoint metadata that turns audit mode on for one endpoint at creation (CNI args, API). */
export const AUDIT_METADATA_KEY = 'membrane.io/policy-audit';
const AUDIT_STORE_KEY = 'policy/audit';

export type PolicyErrorCode = 'bad_request' | 'policy_not_found' | 'endpoint_not_found' | 'identity_not_found';

/** A policy error; invalid input carries its issues (file:line:column, field) in the message and as details. */
export class PolicyError extends MembraneError<PolicyErrorCode> {
  override readonly name = 'PolicyError';
  constructor(code: PolicyErrorCode, message: string, readonly issues?: PolicyIssue[]) {
    super(code, issues?.length ? `${message}:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}` : message, issues ? { details: { issues } } : {});
  }
}

export interface EngineLog {
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
}

export interface PolicyEngineDeps {
  store: Store;
  ops: PolicyDatapathOps;
  hostAddresses: () => string[];
  log?: EngineLog;
  identityGraceMs?: number;
  /** Where the L7 proxies listen (ports go into the datapath with L7 entries); none: L7 policies are refused. */
  proxyPorts?: () => DesiredInput['proxyPorts'];
  /** Cluster mode: identities and policies live in the cluster store (default: the node's store). */
  identityBackend?: IdentityBackend;
  policyBackend?: PolicyBackend & { reload?(): Promise<PersistedPolicies> };
  /** Called after the maps changed (the L7 proxy then takes a new snapshot). */
  onChange?: () => void;
  /** This node's cluster, for selectors on Cilium's derived cluster label (default: "default"). */
  cluster?: string;
  /** What DNS taught (toFQDNs): its addresses enter the ipcache with FQDN identities. */
  fqdn?: FqdnState;
  /** Which labels take part in an identity (--label-filter). */
  labelFilter?: LabelFilter;
}

export interface ChangeResult {
  revision: number;
  changes: Plan['changes'];
  stats: ApplyStats;
  /** Time from the request to the maps holding the new state (before the store write). */
  enforcedMs: number;
  totalMs: number;
  /** Where the time went: reading the documents, computing and writing the maps, the store write. */
  timings: { parseMs: number; syncMs: number; storeMs: number };
}

export class PolicyEngine {
  private readonly endpoints = new Map<string, EngineEndpoint>();
  /** Audit as the endpoint's metadata asked for at creation (an API override wins). */
  private readonly metaAudit = new Map<string, boolean>();
  private readonly mirror: Mirror;
  private cidrs: CidrIdentities;
  private hostAddrs: string[];
  private auditOverrides: Record<string, boolean>;
  private started = false;
  private readonly compileCache: { current?: CompileCache } = {};
  /** The policy entries the last successful apply wrote, by endpoint (none: the next apply compares all). */
  private applied?: Desired['policy'];
  private chain: Promise<unknown> = Promise.resolve();
  /** Other nodes' endpoint addresses (cluster mode): prefix -> identity. */
  private remote = new Map<string, number>();
  private remoteSyncQueued = false;
  /** Bumped whenever the maps change: lookups cached for the DNS proxy are dropped. */
  private generation = 0;
  private lookupGen = -1;
  private readonly byIp = new Map<string, EngineEndpoint>();
  private readonly peerOf = new Map<string, number>();

  private constructor(
    private readonly d: PolicyEngineDeps,
    readonly identities: IdentityAllocator,
    readonly repo: PolicyRepository,
    audit: Record<string, boolean>,
  ) {
    this.auditOverrides = audit;
    // Start from what is pinned: a restarted agent changes only what differs.
    this.mirror = { policy: d.ops.readPolicy(), ipcache: d.ops.readIpcache(), flags: new Map() };
    this.cidrs = new CidrIdentities();
    for (const [prefix, id] of this.mirror.ipcache) if (id >= FIRST_CIDR_IDENTITY) this.cidrs.seed(prefix, id);
    this.hostAddrs = d.hostAddresses();
  }

  static async open(d: PolicyEngineDeps): Promise<PolicyEngine> {
    const identities = await IdentityAllocator.open({
      store: d.store, backend: d.identityBackend, graceMs: d.identityGraceMs, randomIds: !!d.identityBackend, labelFilter: d.labelFilter,
    });
    const repo = await PolicyRepository.open(d.policyBackend ?? d.store);
    const audit = (await d.store.get<Record<string, boolean>>(AUDIT_STORE_KEY)) ?? {};
    return new PolicyEngine(d, identities, repo, audit);
  }

  /** One change at a time; a failed change does not block the next. */
  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  // ---- endpoints -------------------------------------------------------------------------------

  identityFor(labels: Labels): Promise<number> {
    return this.identities.resolve(labels);
  }

  /** Before the endpoint's program is attached: its identity, flags and entries are in place. */
  endpointAttached(ep: Endpoint): Promise<void> {
    return this.serial(async () => {
      const e = this.toEngineEndpoint(ep);
      this.endpoints.set(e.key, e);
      this.identities.hold(e.key, e.identity);
      this.mirror.flags.delete(e.hostIfIndex); // a fresh config: read it again
      if (this.started) { this.sync(); return; }
      // Restoring: the pinned maps hold the entries already; only this endpoint's flags and
      // addresses may be new (a recreated veth). One full sync follows in start().
      const flags = endpointFlags(this.selection(e), e.audit);
      this.d.ops.writeEndpointFlags(e.hostIfIndex, flags);
      this.mirror.flags.set(e.hostIfIndex, flags);
      const upsert = e.ips.map((ip) => [normalizeCidr(ip), e.identity] as [string, number]).filter(([p, id]) => this.mirror.ipcache.get(p) !== id);
      if (upsert.length) {
        this.d.ops.writeIpcache(upsert, []);
        for (const [p, id] of upsert) this.mirror.ipcache.set(p, id);
      }
    });
  }

  endpointDeleted(ep: Endpoint): Promise<void> {
    return this.serial(() => {
      const key = endpointKey(attachmentId(ep), ep.ifName);
      if (!this.endpoints.delete(key)) return;
      this.metaAudit.delete(key);
      this.identities.release(key);
      this.mirror.flags.delete(ep.hostIfIndex);
      if (this.started) this.sync();
    });
  }

  endpointLabelsChanged(ep: Endpoint): Promise<void> {
    return this.serial(() => {
      const e = this.toEngineEndpoint(ep);
      if (!this.endpoints.has(e.key)) return;
      this.endpoints.set(e.key, e);
      this.identities.hold(e.key, e.identity);
      if (this.started) this.sync();
    });
  }

  /** After restore: one full sync against the pinned state; identities nobody holds are dropped. */
  start(): Promise<ApplyStats> {
    return this.serial(async () => {
      this.started = true;
      const stats = this.sync();
      await this.identities.sweep(true);
      return stats;
    });
  }

  /** Re-read host addresses (called periodically); syncs only when they changed. */
  refreshHostAddresses(): Promise<boolean> {
    return this.serial(() => {
      const next = this.d.hostAddresses();
      if (next.slice().sort().join() === this.hostAddrs.slice().sort().join()) return false;
      this.hostAddrs = next;
      if (this.started) this.sync();
      return true;
    });
  }

  setAudit(attachment: string, ifName: string, on: boolean | null): Promise<boolean> {
    return this.serial(async () => {
      const key = endpointKey(attachment, ifName);
      const e = this.endpoints.get(key);
      if (!e) throw new PolicyError('endpoint_not_found', `endpoint ${key} does not exist`);
      const next = { ...this.auditOverrides };
      if (on === null) delete next[key]; else next[key] = on;
      const before = e.audit;
      e.audit = next[key] ?? this.metaAudit.get(key) ?? false;
      try {
        this.sync();
        await this.d.store.put(AUDIT_STORE_KEY, next);
      } catch (err) {
        e.audit = before;
        this.sync();
        throw err;
      }
      this.auditOverrides = next;
      return e.audit;
    });
  }

  // ---- policies --------------------------------------------------------------------------------

  /** `opts.namespace`: for documents that name none (membrane policy import -n). */
  validate(text: string, opts: { namespace?: string } = {}): ReturnType<typeof parsePolicies> {
    return parsePolicies(text, { ...opts, cluster: this.d.cluster ?? 'default' });
  }

  importText(text: string, opts: { namespace?: string } = {}): Promise<ChangeResult> {
    const t0 = performance.now();
    const parsed = this.validate(text, opts);
    const parseMs = performance.now() - t0;
    if (parsed.issues.length) {
      return Promise.reject(new PolicyError('bad_request', `the policy is not valid (${parsed.issues.length} problem${parsed.issues.length > 1 ? 's' : ''})`, parsed.issues));
    }
    if (!parsed.policies.length) return Promise.reject(new PolicyError('bad_request', 'no policy in the input'));
    const missing = [...l7KindsOf(parsed.policies.map((policy) => ({ policy })))].filter((k) => !this.d.proxyPorts?.()?.[k]);
    if (missing.length) {
      const k = missing[0];
      const proxy = k === 'dns' ? 'the DNS proxy is not enabled on this node (agent --dns-proxy)' : 'the L7 proxy is not enabled on this node (agent --l7-proxy)';
      return Promise.reject(new MembraneError('unavailable', `the policy has ${k.toUpperCase()} rules but ${proxy}`));
    }
    return this.serial(() => this.retryOnConflict(() => this.change(this.repo.planImport(parsed.policies, parsed.sources), t0, parseMs)));
  }

  /** Cluster mode: another node committed first; read the set again and plan again. */
  private async retryOnConflict<T>(fn: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof PolicyConflictError) || attempt >= 4 || !this.d.policyBackend?.reload) throw e;
        if (this.repo.replace(await this.d.policyBackend.reload()) && this.started) this.sync();
      }
    }
  }

  delete(names: string[] | 'all'): Promise<ChangeResult & { unknown: string[] }> {
    const t0 = performance.now();
    return this.serial(async () => {
      return this.retryOnConflict(async () => {
        const plan = this.repo.planDelete(names);
        if (names !== 'all' && plan.unknown.length === names.length) {
          throw new PolicyError('policy_not_found', `no policy named ${plan.unknown.map((n) => `"${n}"`).join(', ')}`);
        }
        return { ...(await this.change(plan, t0, 0)), unknown: plan.unknown };
      });
    });
  }

  /** Maps first, then the store; if the store write fails the maps go back (no partial state). */
  private async change(plan: Plan, t0: number, parseMs: number): Promise<ChangeResult> {
    const before = this.repo.list();
    const t1 = performance.now();
    const stats = this.sync(plan.records);
    const enforcedMs = performance.now() - t0;
    const syncMs = performance.now() - t1;
    try {
      await this.repo.commit(plan);
    } catch (e) {
      this.sync(before);
      throw e;
    }
    const timings = { parseMs, syncMs, storeMs: performance.now() - t0 - enforcedMs };
    this.d.log?.info({ revision: this.repo.revision, changes: plan.changes, ...stats, enforcedMs: Math.round(enforcedMs), timings }, 'policy changed');
    return { revision: this.repo.revision, changes: plan.changes, stats, enforcedMs, totalMs: performance.now() - t0, timings };
  }

  /** Computes the desired maps for `records` and applies the difference. Throws with nothing changed. */
  private sync(records: PolicyRecord[] = this.repo.list()): ApplyStats {
    const cidrs = this.cidrs.clone();
    const desired = buildDesired({
      records, endpoints: [...this.endpoints.values()], labelsOf: (id) => this.identities.labelsOf(id),
      hostAddresses: this.hostAddrs, cidrs, proxyPorts: this.d.proxyPorts?.(), remote: this.remote, fqdn: this.d.fqdn,
    }, this.compileCache);
    let stats: ApplyStats;
    try {
      stats = applyDesired(this.d.ops, this.mirror, desired, this.applied);
    } catch (e) {
      this.applied = undefined;
      throw e;
    }
    this.applied = desired.policy;
    this.cidrs = cidrs;
    this.generation++;
    this.d.onChange?.();
    return stats;
  }

  // ---- toFQDNs ---------------------------------------------------------------------------------

  /** The FQDN entries of these ipcache prefixes changed (a DNS answer, an expiry). Resolves once the
   *  maps hold them: only the ipcache entries when the identities are known, a full sync when a new
   *  identity needs policy entries first. */
  fqdnChanged(prefixes: string[], newIdentity: boolean): Promise<void> {
    return this.serial(() => {
      if (!this.started || !this.d.fqdn) return;
      if (newIdentity) { this.sync(); return; }
      const owned = (p: string) => this.hostAddrs.some((h) => normalizeCidr(h) === p) || this.remote.has(p) || [...this.endpoints.values()].some((e) => e.ips.some((ip) => normalizeCidr(ip) === p));
      const diff = fqdnIpcacheDiff(prefixes, { fqdn: this.d.fqdn, cidrs: this.cidrs, current: this.mirror.ipcache, owned });
      if (!diff.upsert.length && !diff.remove.length) return;
      // Entries for these identities exist: only the addresses change (established flows to a
      // removed one are revalidated like after any ipcache change).
      this.d.ops.writeIpcache(diff.upsert, diff.remove);
      for (const [p, id] of diff.upsert) this.mirror.ipcache.set(p, id);
      for (const p of diff.remove) this.mirror.ipcache.delete(p);
      this.generation++;
      this.d.ops.changed?.(this.mirror, { policyKeys: [], flagIfindexes: [], ipcachePrefixes: [...diff.upsert.map(([p]) => p), ...diff.remove] });
      this.d.onChange?.();
    });
  }

  /** Changes whenever the maps do: what egressEntry answered may be cached until then. */
  get mapsGeneration(): number {
    return this.generation;
  }

  /** For the DNS proxy: the sending endpoint and the entry its egress policy has for dst:dport (probed
   *  as the datapath probes). undefined when src is no endpoint of this node. */
  egressEntry(srcIp: string, dstIp: string, proto: number, dport: number): EgressEntry | undefined {
    if (this.lookupGen !== this.generation) { this.lookupGen = this.generation; this.byIp.clear(); this.peerOf.clear(); }
    if (!this.byIp.size) for (const e of this.endpoints.values()) for (const ip of e.ips) this.byIp.set(ip, e);
    const ep = this.byIp.get(srcIp);
    if (!ep) return undefined;
    let peer = this.peerOf.get(dstIp);
    if (peer === undefined) { peer = lookupIp(this.mirror.ipcache, dstIp); if (this.peerOf.size > 50_000) this.peerOf.clear(); this.peerOf.set(dstIp, peer); }
    const labels = this.identities.labelsOf(ep.identity) ?? { 'reserved:init': '' };
    const dp = this.compileCache.current?.compiler.forLabels(labels).egress;
    const sel = this.selection(ep).egress;
    const hit = dp ? probe(dp, peer, proto, dport) : undefined;
    return { endpoint: ep.id, identity: ep.identity, peer, ...(hit ? { entry: hit.entry } : {}), defaultDeny: sel.defaultDeny, lookup: sel.defaultDeny || sel.hasRules };
  }

  // ---- cluster mode ----------------------------------------------------------------------------

  /** Other nodes' endpoints changed. Bursts coalesce into one sync. */
  setRemoteEndpoints(remote: Map<string, number>): Promise<void> {
    this.remote = remote;
    return this.resyncSoon();
  }

  /** Identities appeared elsewhere: peers that use them may now be compiled. */
  identitiesLearned(ids: number[]): Promise<void> {
    const used = new Set(this.remote.values());
    return ids.some((id) => used.has(id)) ? this.resyncSoon() : Promise.resolve();
  }

  private resyncSoon(): Promise<void> {
    if (this.remoteSyncQueued) return this.chain.then(() => undefined);
    this.remoteSyncQueued = true;
    return this.serial(() => {
      this.remoteSyncQueued = false;
      if (this.started) this.sync();
    });
  }

  /** The cluster's policy set changed (another node's import, or ours coming back through the watch). */
  replacePolicies(state: PersistedPolicies): Promise<boolean> {
    return this.serial(() => {
      if (!this.repo.replace(state)) return false;
      if (this.started) {
        const stats = this.sync();
        this.d.log?.info({ revision: this.repo.revision, ...stats }, 'cluster policies applied');
      }
      return true;
    });
  }

  // ---- queries ---------------------------------------------------------------------------------

  list(): PolicyRecord[] { return this.repo.list(); }
  get(name: string): PolicyRecord | undefined { return this.repo.get(name); }
  get revision(): number { return this.repo.revision; }

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
    return trace({
      records: this.repo.list(), universe: universeOf([...this.endpoints.values(), ...remotePeers(this.remote)], labelsOf, this.cidrs, this.d.fqdn?.identities),
      cidrs: this.cidrs, ipcache: this.mirror.ipcache, labelsOf, ...(this.d.fqdn ? { fqdn: this.d.fqdn } : {}),
    }, q);
  }

  /** The policies selecting an endpoint, its identity and enforcement (for `endpoint get`). */
  endpointPolicy(attachment: string, ifName: string): EndpointPolicyView | undefined {
    const e = this.endpoints.get(endpointKey(attachment, ifName));
    if (!e) return undefined;
    const sel = this.selection(e);
    return {
      identity: e.identity, labels: this.identities.labelsOf(e.identity) ?? {}, audit: e.audit, init: sel.init,
      enforcement: { ingress: sel.ingress.defaultDeny ? 'default-deny' : sel.ingress.hasRules ? 'rules-only' : 'allow-all', egress: sel.egress.defaultDeny ? 'default-deny' : sel.egress.hasRules ? 'rules-only' : 'allow-all' },
      policies: sel.policies,
      entries: [...this.mirror.policy.keys()].filter((k) => decodePolicyKey(Buffer.from(k, 'hex')).endpointId === e.id).length,
      l7: this.l7Of(e),
    };
  }

  /** What the L7 proxy workers need: endpoints, ipcache, the tables of directions with L7 entries. */
  proxySnapshot(): ProxySnapshot {
    const compiler = this.compileCache.current?.compiler;
    const labelsOf = (id: number) => this.identities.labelsOf(id);
    return buildSnapshot({
      revision: this.repo.revision, endpoints: [...this.endpoints.values()], labelsOf,
      policyFor: (labels) => compiler?.forLabels(labels) ?? { ingress: { defaultDeny: false, columns: new Map() }, egress: { defaultDeny: false, columns: new Map() }, selectedBy: [] },
      ipcache: this.mirror.ipcache,
    });
  }

  private l7Of(e: EngineEndpoint): L7Summary[] {
    const compiler = this.compileCache.current?.compiler;
    return compiler ? l7Summary(compiler.forLabels(this.identities.labelsOf(e.identity) ?? { 'reserved:init': '' }), l4decode) : [];
  }

  identityList(): (IdentityView & { endpoints: number })[] {
    const counts = new Map<number, number>();
    for (const e of this.endpoints.values()) counts.set(e.identity, (counts.get(e.identity) ?? 0) + 1);
    const label = this.identities.list().map((i) => ({ ...i, endpoints: counts.get(i.id) ?? 0 }));
    const cidr = this.cidrs.entries().sort((a, b) => a.id - b.id).map((c) => ({
      id: c.id, kind: 'cidr' as IdentityKind, labels: { [`cidr:${c.text}`]: '', 'reserved:world': '' }, refs: 0, endpoints: 0,
    }));
    const fqdn = (this.d.fqdn?.identities.list() ?? []).map((i) => ({ id: i.id, kind: 'fqdn' as IdentityKind, labels: fqdnLabels(i), refs: 0, endpoints: 0 }));
    return [...label, ...cidr, ...fqdn];
  }

  mapUsage(): { policyEntries: number; ipcachePrefixes: number; endpoints: number } {
    return { policyEntries: this.mirror.policy.size, ipcachePrefixes: this.mirror.ipcache.size, endpoints: this.endpoints.size };
  }

  /** Identities unheld for the grace period are deleted (called periodically). */
  sweepIdentities(): Promise<number[]> {
    return this.serial(() => this.identities.sweep());
  }

  // ---- helpers ---------------------------------------------------------------------------------

  private selection(e: EngineEndpoint): Selection {
    return selectionFor(this.repo.list(), this.identities.labelsOf(e.identity) ?? { 'reserved:init': '' });
  }

  private toEngineEndpoint(ep: Endpoint): EngineEndpoint {
    const key = endpointKey(attachmentId(ep), ep.ifName);
    const metaAudit = ep.metadata?.[AUDIT_METADATA_KEY] === 'true';
    this.metaAudit.set(key, metaAudit);
    return {
      key, id: ep.id, hostIfIndex: ep.hostIfIndex, identity: ep.identity || RESERVED.init,
      ips: ep.ips.map((ip) => addressOnly(ip.address)), audit: this.auditOverrides[key] ?? metaAudit,
    };
  }
}

export interface EgressEntry {
  endpoint: number;
  identity: number;
  /** The destination's identity, as the ipcache has it. */
  peer: number;
  entry?: Entry;
  defaultDeny: boolean;
  /** The endpoint's egress is looked up at all (some policy selects it). */
  lookup: boolean;
}

export interface EndpointPolicyView {
  identity: number;
  labels: Labels;
  audit: boolean;
  /** Closed by the init policy (labels pending and some policy exists), not by a selecting policy. */
  init: boolean;
  enforcement: { ingress: 'default-deny' | 'rules-only' | 'allow-all'; egress: 'default-deny' | 'rules-only' | 'allow-all' };
  policies: Selection['policies'];
  /** Policy map entries for this endpoint. */
  entries: number;
  /** Ports whose traffic goes through the L7 proxy, with the HTTP rules. */
  l7: L7Summary[];
}

function remotePeers(remote: Map<string, number>): { identity: number }[] {
  return [...new Set(remote.values())].map((identity) => ({ identity }));
}
