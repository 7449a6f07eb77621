// The policy engine: identities, named policies and the endpoints they apply to, kept in the
// datapath maps. Every change (import, delete, endpoint create/delete/relabel, host address change)
// is taken here one at a time and synced to the maps (engine-sync.ts: desired state, difference,
// rollback). Imports are read off the event loop (parse-offloop.ts), checked (admission.ts) and
// applied in the order they arrived.
// Nothing here touches a syscall directly: the maps are behind PolicyDatapathOps. The queries on
// this state live in engine-view.ts.

import { attachmentId, endpointKey } from '../endpoint/naming.ts';
import { IdentityAllocator } from '../identity/allocator.ts';
import type { Labels } from '../identity/labels.ts';
import { RESERVED } from '../identity/reserved.ts';
import { addressOnly } from '../net/index.ts';
import type { Endpoint } from '../types.ts';
import { refuseUnusable } from './admission.ts';
import type { ApplyStats } from './apply.ts';
import type { EngineEndpoint } from './desired.ts';
import { PolicyMapSync } from './engine-sync.ts';
import { AUDIT_METADATA_KEY, type ChangeResult, type PolicyEngineDeps, PolicyError } from './engine-types.ts';
import { type ParseResult, parsePolicies } from './parse.ts';
import { PolicyParser } from './parse-offloop.ts';
import { type PersistedPolicies, type Plan, PolicyConflictError, PolicyRepository } from './repository.ts';
import { policyNameOfKey, type StoredPolicyProblem, type StorePolicyBackend, storePolicyBackend } from './store-backend.ts';

export * from './engine-types.ts';

const AUDIT_STORE_KEY = 'policy/audit';

/** Lets the I/O that arrived meanwhile (a CNI ADD's request) run before the next stretch of work. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

export class PolicyEngine extends PolicyMapSync {
  /** Audit as the endpoint's metadata asked for at creation (an API override wins). */
  private readonly metaAudit = new Map<string, boolean>();
  /** Endpoints whose egress is held (holdEgress). */
  private readonly egressHeld = new Set<string>();
  private auditOverrides: Record<string, boolean>;
  private started = false;
  private chain: Promise<unknown> = Promise.resolve();
  /** Imports and deletes, in the order they arrived (an import waits here after its reading). */
  private policyOrder: Promise<unknown> = Promise.resolve();
  private readonly parser: PolicyParser;
  private remoteSyncQueued = false;

  private constructor(
    d: PolicyEngineDeps,
    identities: IdentityAllocator,
    repo: PolicyRepository,
    audit: Record<string, boolean>,
  ) {
    super(d, identities, repo);
    this.auditOverrides = audit;
    this.parser = new PolicyParser({ minBytes: d.parseOffloadBytes, log: d.log });
  }

  static async open(d: PolicyEngineDeps): Promise<PolicyEngine> {
    const identities = await IdentityAllocator.open({
      store: d.store,
      backend: d.identityBackend,
      graceMs: d.identityGraceMs,
      randomIds: !!d.identityBackend,
      labelFilter: d.labelFilter,
    });
    const local = d.policyBackend ? undefined : storePolicyBackend(d.store, d.log);
    const repo = await PolicyRepository.open(d.policyBackend ?? local!);
    const audit = (await d.store.get<Record<string, boolean>>(AUDIT_STORE_KEY)) ?? {};
    const engine = new PolicyEngine(d, identities, repo, audit);
    engine.storedPolicyProblems = local?.problems ?? [];
    engine.local = local;
    return engine;
  }

  /** Stored policies that could not be loaded at start (left in the store; the others were). Live:
   *  re-importing or deleting one takes it off. */
  storedPolicyProblems: readonly StoredPolicyProblem[] = [];
  private local?: StorePolicyBackend;

  /** Fail closed while a stored policy is unreadable (it may have been a deny, or the only policy
   *  selecting a pod): the maps are not rebuilt from the others (engine-sync.ts). */
  protected override held(): boolean {
    return this.storedPolicyProblems.length > 0;
  }

  /** The policy names whose stored records are unreadable. */
  damagedPolicyNames(): string[] {
    return this.storedPolicyProblems.map((p) => policyNameOfKey(p.key));
  }

  /** While held, a change must be about the damaged policies only. */
  private refuseWhileHeld(names: string[], what: string): void {
    if (!this.held()) return;
    const damaged = this.damagedPolicyNames();
    if (names.length && names.every((n) => damaged.includes(n))) return;
    const keys = this.storedPolicyProblems.map((p) => `${p.key} (${p.reason})`).join('; ');
    throw new PolicyError(
      'policy_store_damaged',
      `${what} refused: stored ${damaged.length === 1 ? 'policy' : 'policies'} ${keys} could not be read, so the policy maps are held at their last enforced state; import ${damaged.map((n) => `"${n}"`).join(', ')} again (membrane policy import) or delete ${damaged.length === 1 ? 'it' : 'them'} (membrane policy delete) first`,
    );
  }

  /** Stops the parser's worker thread, if one runs. */
  close(): Promise<void> {
    return this.parser.close();
  }

  /** One change at a time; a failed change does not block the next. */
  private serial<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Policy changes in arrival order: revisions follow the order the requests came in. */
  private inOrder<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.policyOrder.then(fn, fn);
    this.policyOrder = run.catch(() => undefined);
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
      const known = this.endpoints.has(e.key);
      this.endpoints.set(e.key, e);
      this.identities.hold(e.key, e.identity);
      this.mirror.flags.delete(e.hostIfIndex); // a fresh config: read it again
      if (this.started) this.syncEndpointAdded(e, known);
      else this.writeRestoredEndpoint(e);
    });
  }

  endpointDeleted(ep: Endpoint): Promise<void> {
    return this.serial(() => {
      const key = endpointKey(attachmentId(ep), ep.ifName);
      const gone = this.endpoints.get(key);
      if (!gone || !this.endpoints.delete(key)) return;
      this.metaAudit.delete(key);
      this.egressHeld.delete(key);
      this.identities.release(key);
      this.mirror.flags.delete(ep.hostIfIndex);
      if (this.started) this.syncEndpointRemoved(gone);
    });
  }

  /** Holds (or releases) an endpoint's egress: default deny, no allow entries (desired.ts). Cluster
   *  mode's, native routing: other nodes classify its packets by the identity they last learned. */
  holdEgress(ep: Endpoint, held: boolean): Promise<void> {
    const key = endpointKey(attachmentId(ep), ep.ifName);
    if (held === this.egressHeld.has(key)) return Promise.resolve();
    if (held) this.egressHeld.add(key);
    else this.egressHeld.delete(key);
    return this.serial(() => {
      const e = this.endpoints.get(key);
      if (!e || !!e.egressHeld === this.egressHeld.has(key)) return;
      this.endpoints.set(key, { ...e, egressHeld: this.egressHeld.has(key) });
      if (this.started && !this.held()) this.sync();
    });
  }

  endpointLabelsChanged(ep: Endpoint): Promise<void> {
    return this.serial(() => {
      const e = this.toEngineEndpoint(ep);
      if (!this.endpoints.has(e.key)) return;
      this.endpoints.set(e.key, e);
      this.identities.hold(e.key, e.identity);
      if (this.started && this.held()) this.heldEndpoint(e);
      else if (this.started) this.sync();
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
      this.refuseWhileHeld([], 'audit mode change');
      const next = { ...this.auditOverrides };
      if (on === null) delete next[key];
      else next[key] = on;
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

  /** Reads policy text inline, on the event loop (small texts: the CLI, tests); `opts.namespace`:
   *  for documents that name none (membrane policy import -n). */
  validate(text: string, opts: { namespace?: string } = {}): ParseResult {
    return parsePolicies(text, { ...opts, cluster: this.d.cluster ?? 'default' });
  }

  /** The same, big texts read in the worker thread (the loop stays free for CNI ADDs). */
  parse(text: string, opts: { namespace?: string } = {}): Promise<ParseResult> {
    return this.parser.parse(text, { ...opts, cluster: this.d.cluster ?? 'default' });
  }

  /** Reading starts at once (off the loop); the change waits for earlier imports and deletes. A bad
   *  document is refused with its issues and changes nothing. */
  importText(text: string, opts: { namespace?: string } = {}): Promise<ChangeResult> {
    const t0 = performance.now();
    let parseMs = 0;
    const reading = this.parse(text, opts).then((r) => {
      parseMs = performance.now() - t0;
      return r;
    });
    return this.inOrder(async () => {
      const parsed = await reading;
      await nextTurn(); // taking in the result was one stretch of the loop; computing the maps is another
      refuseUnusable(parsed, this.d.proxyPorts?.());
      this.refuseWhileHeld(
        parsed.policies.map((p) => p.name),
        'policy import',
      );
      return this.serial(() =>
        this.retryOnConflict(() => this.change(this.repo.planImport(parsed.policies, parsed.sources), t0, parseMs)),
      );
    });
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
    return this.inOrder(() =>
      this.serial(async () => {
        if (this.held() && names !== 'all') {
          this.refuseWhileHeld(names, 'policy delete');
          return this.forgetDamaged(names, t0);
        }
        this.refuseWhileHeld([], 'policy delete');
        return this.retryOnConflict(async () => {
          const plan = this.repo.planDelete(names);
          if (names !== 'all' && plan.unknown.length === names.length) {
            throw new PolicyError('policy_not_found', `no policy named ${plan.unknown.map((n) => `"${n}"`).join(', ')}`);
          }
          return { ...(await this.change(plan, t0, 0)), unknown: plan.unknown };
        });
      }),
    );
  }

  /** Deleting unreadable stored policies (held: every name is one); once none is left, the maps are
   *  built from the set again. */
  private async forgetDamaged(names: string[], t0: number): Promise<ChangeResult & { unknown: string[] }> {
    for (const p of [...this.storedPolicyProblems]) if (names.includes(policyNameOfKey(p.key))) await this.local!.forget(p.key);
    const changes = names.map((name) => ({ name, change: 'deleted' as const, revision: this.repo.revision }));
    return { ...this.heldResult(changes, 'unreadable stored policy deleted', t0, 0), unknown: [] };
  }

  /** A change made while held: the store took it; the maps are synced from the whole set once nothing
   *  is unreadable any more (sync() does nothing before). */
  private heldResult(changes: ChangeResult['changes'], msg: string, t0: number, parseMs: number): ChangeResult {
    const stats = this.sync();
    const ms = performance.now() - t0;
    this.d.log?.info({ revision: this.repo.revision, changes, held: this.held(), ...stats }, msg);
    return {
      revision: this.repo.revision,
      changes,
      stats,
      enforcedMs: ms,
      totalMs: ms,
      timings: { parseMs, syncMs: 0, storeMs: ms },
    };
  }

  /** Maps first, then the store; if the store write fails the maps go back (no partial state). Held
   *  (re-importing an unreadable policy): the store first, then the maps once nothing is unreadable. */
  private async change(plan: Plan, t0: number, parseMs: number): Promise<ChangeResult> {
    if (this.held()) {
      await this.repo.commit(plan);
      return this.heldResult(plan.changes, 'policy changed', t0, parseMs);
    }
    const before = this.repo.list();
    const t1 = performance.now();
    const stats = this.sync(plan.records);
    const enforcedMs = performance.now() - t0;
    const syncMs = performance.now() - t1;
    await nextTurn(); // and encoding the store write a third: requests waiting meanwhile get in between
    try {
      await this.repo.commit(plan);
    } catch (e) {
      this.sync(before);
      throw e;
    }
    const timings = { parseMs, syncMs, storeMs: performance.now() - t0 - enforcedMs };
    this.d.log?.info(
      { revision: this.repo.revision, changes: plan.changes, ...stats, enforcedMs: Math.round(enforcedMs), timings },
      'policy changed',
    );
    return { revision: this.repo.revision, changes: plan.changes, stats, enforcedMs, totalMs: performance.now() - t0, timings };
  }

  // ---- toFQDNs ---------------------------------------------------------------------------------

  /** The FQDN entries of these ipcache prefixes changed (a DNS answer, an expiry). Resolves once the
   *  maps hold them: only the ipcache entries when the identities are known, a full sync when a new
   *  identity needs policy entries first. */
  fqdnChanged(prefixes: string[], newIdentity: boolean): Promise<void> {
    return this.serial(() => {
      if (!this.started || !this.d.fqdn) return;
      if (newIdentity) {
        this.sync();
        return;
      }
      this.writeFqdnIpcache(prefixes);
    });
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

  /** Identities unheld for the grace period are deleted (called periodically). */
  sweepIdentities(): Promise<number[]> {
    return this.serial(() => this.identities.sweep());
  }

  // ---- helpers ---------------------------------------------------------------------------------

  private toEngineEndpoint(ep: Endpoint): EngineEndpoint {
    const key = endpointKey(attachmentId(ep), ep.ifName);
    const metaAudit = ep.metadata?.[AUDIT_METADATA_KEY] === 'true';
    this.metaAudit.set(key, metaAudit);
    return {
      key,
      id: ep.id,
      hostIfIndex: ep.hostIfIndex,
      identity: ep.identity || RESERVED.init,
      ips: ep.ips.map((ip) => addressOnly(ip.address)),
      audit: this.auditOverrides[key] ?? metaAudit,
      ...(this.egressHeld.has(key) ? { egressHeld: true } : {}),
    };
  }
}
