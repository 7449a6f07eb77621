// Bringing the node's endpoints back after an agent restart and keeping them so: restore every
// endpoint (restore.ts), report and retry the ones that cannot be brought back, remove the endpoints
// of netns that are gone and the addresses of creates that never finished. The manager owns the
// endpoints; this concern works on them through the manager's lock and its teardown.
import type { Endpoint } from '../types.ts';
import { keyOf, STORE_PREFIX } from './recipe.ts';
import { endpointKey, hostVethName, withDockerRef } from './naming.ts';
import { deleteHostVeth } from './plumbing.ts';
import { netnsGone } from './gone.ts';
import {
  pruneDatapath,
  restoreEndpoint,
  RestoreView,
  verifyContainerSide,
  type RestoreDeps,
  type RestoreOutcome,
} from './restore.ts';
import type { KeyedLock } from './lock.ts';
import type { EndpointIds } from './ids.ts';
import type { Reaper } from './reaper.ts';
import type { EndpointManagerDeps } from './manager.ts';

/** What recovery uses of the manager: its endpoints, lock and ids, and its own ways to remove one. */
export interface RecoveryDeps {
  node: Pick<EndpointManagerDeps, 'store' | 'ipam' | 'host' | 'datapath' | 'log'>;
  byKey: Map<string, Endpoint>;
  /** Keys of creates in flight (their IPAM allocations are not orphans). */
  creating: ReadonlySet<string>;
  lock: KeyedLock;
  ids: EndpointIds;
  reaper: Reaper;
  recipeDeps(): RestoreDeps;
  /** Removes an endpoint as a DEL would. */
  teardown(ep: Endpoint): Promise<void>;
}

export interface RestoreSummary {
  kept: number;
  repaired: number;
  dropped: number;
  unhealthy: number;
  /** Kept or repaired, their container side verified after the API is up (verifyRestored). */
  verifying: number;
}

export class EndpointRecovery {
  /** Endpoints restore could not bring back (kept, reported, retried by the upkeep). */
  readonly unhealthy = new Map<string, { problems: string[]; since: string }>();
  /** Endpoints whose container side is not verified yet since the restore (key: since when). */
  readonly verifying = new Map<string, string>();
  /** Endpoints removed because their netns was gone (a runtime that never sent DEL): a metric. */
  goneRemoved = 0;
  private verification?: { stop: boolean; done: Promise<void> };

  constructor(private readonly d: RecoveryDeps) {}

  /**
   * After an agent restart: keep what works, repair what is missing, drop what is gone. One broken
   * endpoint never stops the others (nor the agent): it is kept, reported unhealthy (endpoint list,
   * status) and repaired later when it can be. Addresses owned by an endpoint that never finished
   * creating are released, and its link removed.
   */
  async restoreAll(): Promise<RestoreSummary> {
    const result = { kept: 0, repaired: 0, dropped: 0, unhealthy: 0, verifying: 0 };
    const { byKey, node } = this.d;
    // Endpoints deleted before a crash and not reaped yet: their ids stay taken until they are.
    for (const id of await this.d.reaper.resume()) this.d.ids.take(id);
    for (const { key, value } of await node.store.list<Endpoint>(STORE_PREFIX)) {
      try {
        const ep = withDockerRef(value);
        byKey.set(keyOf(ep), ep);
        this.d.ids.take(ep.id);
      } catch (err) {
        node.log?.error({ err, key }, 'unreadable endpoint record: skipped');
      }
    }
    // The host's links and local_endpoints read once for all of them, not once per endpoint.
    const view = new RestoreView(this.d.recipeDeps());
    const since = new Date().toISOString();
    for (const ep of [...byKey.values()]) {
      const r = await this.restoreIsolated(ep, view);
      result[r.outcome]++;
      if (r.verify) {
        this.verifying.set(keyOf(ep), since);
        result.verifying++;
      }
    }
    await this.releaseOrphans();
    pruneDatapath({ datapath: node.datapath, log: node.log }, new Set([...byKey.values()].map((e) => e.hostIfIndex)));
    this.d.reaper.kick();
    return result;
  }

  /** Restores one endpoint; any failure marks it unhealthy instead of escaping. */
  private async restoreIsolated(
    ep: Endpoint,
    view?: RestoreView,
  ): Promise<{ outcome: RestoreOutcome | 'unhealthy'; verify?: boolean }> {
    const key = keyOf(ep);
    try {
      const r = await this.d.lock.run(key, () => restoreEndpoint(this.d.recipeDeps(), ep, view));
      if (r.outcome !== 'dropped' && this.unhealthy.delete(key)) this.d.node.log?.info({ endpoint: key }, 'endpoint repaired');
      return r;
    } catch (err) {
      this.markUnhealthy(ep, err);
      return { outcome: 'unhealthy' };
    }
  }

  private markUnhealthy(ep: Endpoint, err: unknown): void {
    const key = keyOf(ep);
    const problems = [(err as Error)?.message ?? String(err)];
    const first = !this.unhealthy.has(key);
    this.unhealthy.set(key, { problems, since: this.unhealthy.get(key)?.since ?? new Date().toISOString() });
    if (first) this.d.node.log?.error({ err, endpoint: key, id: ep.id }, 'endpoint is unhealthy: kept, will retry the repair');
  }

  /**
   * The container sides restoreAll left for later, one endpoint at a time under its lock (the API
   * serves in between): checked and repaired, the endpoint dropped when its netns is gone, reported
   * unhealthy when it cannot be. Resolves with what it did; stopVerifying() ends it early.
   */
  verifyRestored(): Promise<Record<RestoreOutcome | 'unhealthy', number>> {
    const counts = { kept: 0, repaired: 0, dropped: 0, unhealthy: 0 };
    const run = { stop: false, done: Promise.resolve() };
    const work = (async () => {
      for (const key of [...this.verifying.keys()]) {
        // Back to the event loop between endpoints: the API's requests are served in between (an
        // await on the lock alone only runs microtasks).
        await new Promise((resolve) => setImmediate(resolve));
        if (run.stop) break;
        await this.d.lock.run(key, async () => {
          const ep = this.d.byKey.get(key);
          if (!ep || !this.verifying.has(key)) return; // deleted meanwhile
          try {
            counts[await verifyContainerSide(this.d.recipeDeps(), ep)]++;
          } catch (err) {
            this.markUnhealthy(ep, err);
            counts.unhealthy++;
          } finally {
            this.verifying.delete(key);
          }
        });
      }
      return counts;
    })();
    run.done = work.then(() => undefined);
    this.verification = run;
    return work;
  }

  /** Agent shutdown: no further endpoint is verified; waits for the one in progress. */
  async stopVerifying(): Promise<void> {
    if (!this.verification) return;
    this.verification.stop = true;
    await this.verification.done.catch(() => undefined);
  }

  /** Addresses held for endpoints that neither exist nor are being created (a create that crashed,
   *  a rollback that could not write): released, with the link a crashed create may have left. */
  async releaseOrphans(): Promise<number> {
    const { byKey, creating, node } = this.d;
    let released = 0;
    for (const { ip, owner: o } of node.ipam.allocations()) {
      if (o?.kind !== 'endpoint') continue;
      const key = endpointKey(o.attachment, o.ifName);
      if (byKey.has(key) || creating.has(key)) continue;
      node.log?.warn({ ip, owner: o }, 'releasing address of an endpoint that never finished');
      try {
        await this.d.lock.run(key, async () => {
          if (byKey.has(key) || creating.has(key)) return;
          deleteHostVeth(node.host, node.datapath, hostVethName(o.attachment, o.ifName));
          released += await node.ipam.releaseOwner(o);
        });
      } catch (err) {
        node.log?.warn({ err, ip, owner: o }, 'cannot release it yet');
      }
    }
    return released;
  }

  /** Endpoints whose netns no longer exists (`ctr run -d --cni` never sends DEL; a runtime that
   *  crashed): removed with everything they hold, as a DEL would. Returns how many. */
  async collectGone(): Promise<number> {
    let removed = 0;
    for (const ep of [...this.d.byKey.values()]) {
      if (!ep.netns || !netnsGone(ep.netns)) continue;
      const key = keyOf(ep);
      await this.d.lock
        .run(key, async () => {
          const now = this.d.byKey.get(key);
          if (!now?.netns || !netnsGone(now.netns)) return; // deleted or re-created meanwhile
          await this.removeGone(now);
          removed++;
        })
        .catch((err) => this.d.node.log?.warn({ err, endpoint: key }, 'cannot remove the endpoint of a gone netns yet'));
    }
    return removed;
  }

  async removeGone(ep: Endpoint): Promise<void> {
    this.d.node.log?.info({ endpoint: keyOf(ep), id: ep.id, netns: ep.netns }, 'netns is gone: endpoint removed');
    await this.d.teardown(ep);
    this.goneRemoved++;
  }

  /** Periodic upkeep: unhealthy endpoints are tried again, endpoints of gone netns removed, orphaned addresses released. */
  startUpkeep(intervalMs = 30_000): () => void {
    let running = false;
    const timer = setInterval(() => {
      if (running) return;
      running = true;
      void (async () => {
        for (const key of [...this.unhealthy.keys()]) {
          const ep = this.d.byKey.get(key);
          if (ep)
            await this.restoreIsolated(ep); // no view: everything checked, the container side too
          else this.unhealthy.delete(key);
        }
        await this.collectGone();
        await this.releaseOrphans();
      })()
        .catch((err) => this.d.node.log?.warn({ err }, 'endpoint upkeep failed'))
        .finally(() => {
          running = false;
        });
    }, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }
}
