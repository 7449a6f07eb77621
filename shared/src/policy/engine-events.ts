// What happens to the policy engine from outside its API: endpoints that come, go, are relabeled or
// have their egress held, host addresses that change, DNS answers (toFQDNs) and, in cluster mode,
// other nodes' endpoints, identities and policy sets. Each is taken one at a time on the engine's
// change queue (serial) and synced to the maps (engine-sync.ts says how). The API-facing changes
// (policy import and delete, audit mode) are in engine.ts and go through the same queue.
import { attachmentId, endpointKey } from '../endpoint/naming.ts';
import type { IdentityAllocator } from '../identity/allocator.ts';
import type { Labels } from '../identity/labels.ts';
import { RESERVED } from '../identity/reserved.ts';
import { addressOnly } from '../net/index.ts';
import type { Endpoint } from '../types.ts';
import type { ApplyStats } from './apply.ts';
import type { EngineEndpoint } from './desired.ts';
import { PolicyMapSync } from './engine-sync.ts';
import { AUDIT_METADATA_KEY, type PolicyEngineDeps } from './engine-types.ts';
import type { PersistedPolicies, PolicyRepository } from './repository.ts';

/** A refused sync that nobody waits on is tried again after this long, doubling up to the max. */
const SYNC_RETRY_MS = { min: 500, max: 10_000 };

export class PolicyEvents extends PolicyMapSync {
  /** Audit as the endpoint's metadata asked for at creation (an API override wins). */
  protected readonly metaAudit = new Map<string, boolean>();
  /** Audit as the API set it, by endpoint key (stored; engine.ts's setAudit changes it). */
  protected auditOverrides: Record<string, boolean>;
  /** Endpoints whose egress is held (holdEgress). */
  private readonly egressHeld = new Set<string>();
  /** Set by start(): before it, endpoints are restored (their pinned entries kept), not synced. */
  protected started = false;
  private chain: Promise<unknown> = Promise.resolve();
  private remoteSyncQueued = false;
  private retryTimer?: NodeJS.Timeout;
  private retryDelay: number;
  private retriesStopped = false;

  protected constructor(
    d: PolicyEngineDeps,
    identities: IdentityAllocator,
    repo: PolicyRepository,
    audit: Record<string, boolean>,
  ) {
    super(d, identities, repo);
    this.auditOverrides = audit;
    this.retryDelay = (d.syncRetryMs ?? SYNC_RETRY_MS).min;
  }

  /** One change at a time; a failed change does not block the next. */
  protected serial<T>(fn: () => Promise<T> | T): Promise<T> {
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
      if (this.started && !this.held()) this.syncOrRetry('egress hold');
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
      if (this.started) this.syncOrRetry('host addresses');
      return true;
    });
  }

  // ---- toFQDNs ---------------------------------------------------------------------------------

  /** The FQDN entries of these ipcache prefixes changed (a DNS answer, an expiry). Resolves once the
   *  maps hold them: only the ipcache entries when the identities are known, a full sync when a new
   *  identity needs policy entries first, or when a CIDR rule names one of the addresses (its CIDR
   *  identity goes while DNS taught it, and comes back after: hidden-addresses.ts). */
  fqdnChanged(prefixes: string[], newIdentity: boolean): Promise<void> {
    return this.serial(() => {
      if (!this.started || !this.d.fqdn) return;
      if (newIdentity || prefixes.some((p) => this.cidrs.hides(p) || this.cidrs.idOf(p) !== undefined)) {
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
      if (this.started) this.syncOrRetry("other nodes' endpoints");
    });
  }

  /** The cluster's policy set changed (another node's import, or ours coming back through the watch). */
  replacePolicies(state: PersistedPolicies): Promise<boolean> {
    return this.serial(() => {
      if (!this.repo.replace(state)) return false;
      if (this.started) {
        const stats = this.syncOrRetry('cluster policies');
        this.d.log?.info({ revision: this.repo.revision, ...stats }, 'cluster policies applied');
      }
      return true;
    });
  }

  /** Identities unheld for the grace period are deleted (called periodically). */
  sweepIdentities(): Promise<number[]> {
    return this.serial(() => this.identities.sweep());
  }

  // ---- changes nobody waits on ------------------------------------------------------------------

  /** A sync for a change already taken (the cluster's policy set, other nodes' endpoints, host
   *  addresses, an egress hold) that no caller can be told failed: a refused map write (ENOMEM, say)
   *  would otherwise leave the maps at the old state until some unrelated change synced them. So it is
   *  tried again, with back-off, until a sync succeeds. Throws what the sync threw. */
  protected syncOrRetry(what: string): ApplyStats {
    try {
      const stats = this.sync();
      this.retryDelay = (this.d.syncRetryMs ?? SYNC_RETRY_MS).min;
      return stats;
    } catch (err) {
      this.retryLater(what, err as Error);
      throw err;
    }
  }

  private retryLater(what: string, err: Error): void {
    if (this.retriesStopped) return;
    this.d.log?.warn(
      { err: err.message, change: what, retryInMs: this.retryDelay },
      'applying a policy change to the maps failed; trying again',
    );
    if (this.retryTimer) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(delay * 2, (this.d.syncRetryMs ?? SYNC_RETRY_MS).max);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.serial(() => {
        if (this.started && !this.held() && !this.retriesStopped) this.syncOrRetry(`retry of ${what}`);
      }).catch(() => undefined);
    }, delay);
    this.retryTimer.unref?.();
  }

  /** The engine closes: no more tries. */
  protected stopRetries(): void {
    this.retriesStopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
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
