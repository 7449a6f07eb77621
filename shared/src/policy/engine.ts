// The policy engine's API-facing side: opening it from the store, policy import and delete, audit
// mode, and the hold while a stored policy is unreadable. Imports are read off the event loop
// (parse-offloop.ts), checked (admission.ts) and applied in the order they arrived, one change at a
// time with everything else (engine-events.ts: endpoints, host addresses, DNS, cluster mode), and
// synced to the maps (engine-sync.ts: desired state, difference, rollback).
// Nothing here touches a syscall directly: the maps are behind PolicyDatapathOps. The queries on
// this state live in engine-view.ts.

import { IdentityAllocator } from '../identity/allocator.ts';
import { endpointKey } from '../endpoint/naming.ts';
import { refuseUnusable } from './admission.ts';
import { PolicyEvents } from './engine-events.ts';
import { type ChangeResult, type PolicyEngineDeps, PolicyError } from './engine-types.ts';
import { type ParseResult, parsePolicies } from './parse.ts';
import { PolicyParser } from './parse-offloop.ts';
import { type Plan, PolicyConflictError, PolicyRepository } from './repository.ts';
import { policyNameOfKey, type StoredPolicyProblem, type StorePolicyBackend, storePolicyBackend } from './store-backend.ts';

export * from './engine-types.ts';

const AUDIT_STORE_KEY = 'policy/audit';

/** Lets the I/O that arrived meanwhile (a CNI ADD's request) run before the next stretch of work. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

export class PolicyEngine extends PolicyEvents {
  /** Imports and deletes, in the order they arrived (an import waits here after its reading). */
  private policyOrder: Promise<unknown> = Promise.resolve();
  private readonly parser: PolicyParser;

  private constructor(
    d: PolicyEngineDeps,
    identities: IdentityAllocator,
    repo: PolicyRepository,
    audit: Record<string, boolean>,
  ) {
    super(d, identities, repo, audit);
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

  /** Stops the parser's worker thread, if one runs, and the retries of refused syncs. */
  close(): Promise<void> {
    this.stopRetries();
    return this.parser.close();
  }

  /** Policy changes in arrival order: revisions follow the order the requests came in. */
  private inOrder<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.policyOrder.then(fn, fn);
    this.policyOrder = run.catch(() => undefined);
    return run;
  }

  // ---- audit mode ------------------------------------------------------------------------------

  /** Sets (or with null clears) an endpoint's audit override; stored, so it outlives a restart. The
   *  maps change first and go back if the store write fails. */
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
}
