// Endpoint manager: the endpoints of this node, one at a time per endpoint (create, delete, relabel).
// The recipes themselves are in create.ts and restore.ts; restoring them all after a restart and
// their upkeep in recovery.ts. Every failure path rolls back what it did; delete succeeds whatever
// is already gone.
import type { Endpoint, EndpointRequest, Network } from '../types.ts';
import type { Store } from '../store/index.ts';
import type { Ipam } from '../ipam/index.ts';
import type { Networks } from '../network/index.ts';
import type { Datapath } from '../bpf/datapath.ts';
import type { Netlink } from '../netlink/index.ts';
import { datapathConfig, keyOf, openContainerNetns, plainIps, plumbSpec, storeKey, validateRequest } from './recipe.ts';
import { AddressBook } from './addresses.ts';
import { EndpointError } from './errors.ts';
import { attachmentId, endpointKey, hostVethName, ipamOwner } from './naming.ts';
import { deleteHostVeth, ensureHostSide } from './plumbing.ts';
import { KeyedLock } from './lock.ts';
import { EndpointIds } from './ids.ts';
import { endpointProblems } from './health.ts';
import { Reaper } from './reaper.ts';
import { createEndpoint, type CreateDeps, type UndoList } from './create.ts';
import type { RestoreDeps } from './restore.ts';
import { EndpointRecovery, type RestoreSummary } from './recovery.ts';
import type { LabelResolver, LabelSink, RuntimeLabels } from '../labels/resolver.ts';

export interface EndpointManagerDeps {
  store: Store;
  ipam: Ipam;
  networks: Networks;
  datapath: Datapath;
  host: Netlink;
  /** The security identity of a label set, asked before an endpoint's datapath config is written. */
  identityFor: (labels: Record<string, string>) => number | Promise<number>;
  /** Where labels come from (callers, the pod namespace, container runtimes: labels/resolver.ts);
   *  none: the request's labels as given (unit tests). */
  labels?: LabelResolver;
  log?: {
    info(o: object, msg: string): void;
    warn(o: object, msg: string): void;
    error(o: object, msg: string): void;
    debug?(o: object, msg: string): void;
  };
  /** Deleted endpoints' interfaces and flows are removed this long after their DEL (default 0). */
  reapDelayMs?: number;
}

/** What other concerns (policy, conntrack, flows, metrics) observe of an endpoint's life. Hooks of
 *  different concerns do not depend on each other's order. */
export interface EndpointHooks {
  /** Runs after the endpoint's datapath config is written and before its program is attached, so
   *  policy for a new endpoint is in place before its first packet. Throwing fails the create. */
  beforeAttach?: (ep: Endpoint) => Promise<void> | void;
  /** Runs after an endpoint is gone (policy and identity bookkeeping); also on a rolled-back create. */
  afterDelete?: (ep: Endpoint) => Promise<void> | void;
  /** Runs after labels changed (new identity, policy recomputation). */
  afterLabelsChanged?: (ep: Endpoint) => Promise<void> | void;
  /** Runs after a create finished (metrics). */
  afterCreate?: (ep: Endpoint, ms: number) => void;
}

export class EndpointManager {
  private readonly byKey = new Map<string, Endpoint>();
  private readonly lock = new KeyedLock();
  private readonly hooks: EndpointHooks[] = [];
  /** Ids of live endpoints, of creates in flight and of deleted endpoints not reaped yet. */
  private readonly ids = new EndpointIds();
  /** Which endpoint uses each address (live and in flight). */
  private readonly addresses = new AddressBook();
  /** Keys of creates in flight (their IPAM allocations are not orphans). */
  private readonly creating = new Set<string>();
  /** Restore, the unhealthy endpoints and the upkeep (recovery.ts). */
  private readonly recovery: EndpointRecovery;
  /** Endpoints restore could not bring back (kept, reported, retried by the upkeep). */
  private readonly unhealthy: Map<string, { problems: string[]; since: string }>;

  /** Removes deleted endpoints' interfaces and flows after their DEL answered (reaper.ts). */
  private readonly reaper: Reaper;

  constructor(private readonly d: EndpointManagerDeps) {
    d.labels?.bind(this.labelSink);
    this.reaper = new Reaper({
      store: d.store,
      host: d.host,
      datapath: d.datapath,
      log: d.log,
      delayMs: d.reapDelayMs,
      inUse: (hostIfName) => [...this.byKey.values()].some((e) => e.hostIfName === hostIfName),
      released: (id) => {
        if (![...this.byKey.values()].some((e) => e.id === id)) this.ids.release(id);
      },
    });
    this.recovery = new EndpointRecovery({
      node: d,
      byKey: this.byKey,
      creating: this.creating,
      lock: this.lock,
      ids: this.ids,
      reaper: this.reaper,
      recipeDeps: () => this.recipeDeps(),
      teardown: (ep) => this.teardown(ep),
    });
    this.unhealthy = this.recovery.unhealthy;
  }

  /** Reaps what is pending and stops reaping (agent shutdown). */
  closeReaper(): Promise<void> {
    return this.reaper.close();
  }

  addHooks(h: EndpointHooks): void {
    this.hooks.push(h);
  }

  private async runHooks(name: 'beforeAttach' | 'afterDelete' | 'afterLabelsChanged', ep: Endpoint): Promise<void> {
    for (const h of this.hooks) await h[name]?.(ep);
  }

  /** By attachment id (the CNI container id, or the Docker endpoint id) and interface name. */
  get(attachment: string, ifName: string): Endpoint | undefined {
    const ep = this.byKey.get(endpointKey(attachment, ifName));
    return ep && this.withHealth(ep);
  }

  /** Every endpoint, or those of one container (a Docker endpoint once its container is known). */
  list(filter: { containerId?: string } = {}): Endpoint[] {
    return [...this.byKey.values()]
      .filter((e) => !filter.containerId || e.containerId === filter.containerId)
      .sort((a, b) => a.id - b.id)
      .map((e) => this.withHealth(e));
  }

  /** Endpoints restore could not bring back, with what is wrong. */
  unhealthyEndpoints(): { id: number; endpoint: string; problems: string[]; since: string }[] {
    return [...this.unhealthy]
      .flatMap(([key, h]) => {
        const ep = this.byKey.get(key);
        return ep ? [{ id: ep.id, endpoint: key, ...h }] : [];
      })
      .sort((a, b) => a.id - b.id);
  }

  private withHealth(ep: Endpoint): Endpoint {
    const h = this.unhealthy.get(keyOf(ep));
    if (h) return { ...ep, health: { state: 'unhealthy', problems: h.problems, since: h.since } };
    const since = this.recovery.verifying.get(keyOf(ep));
    if (since === undefined) return ep;
    const problems = ['its container side is not verified yet since the agent restarted'];
    return { ...ep, health: { state: 'verifying', problems, since } };
  }

  /** How many endpoints' container sides are still to be verified since the restore. */
  verifyingEndpoints(): number {
    return this.recovery.verifying.size;
  }

  async create(req: EndpointRequest): Promise<Endpoint> {
    const t0 = performance.now();
    const existed = this.get(attachmentId(req), req.ifName);
    const ep = await this.lock.run(endpointKey(attachmentId(req), req.ifName), () => this.createLocked(req));
    if (!existed) for (const h of this.hooks) h.afterCreate?.(ep, performance.now() - t0);
    return ep;
  }

  delete(attachment: string, ifName: string): Promise<boolean> {
    return this.lock.run(endpointKey(attachment, ifName), () => this.deleteLocked(attachment, ifName));
  }

  /** A caller's labels (the API): they replace the caller's labels, the runtime's stay. */
  updateLabels(attachment: string, ifName: string, labels: Record<string, string>): Promise<Endpoint> {
    return this.lock.run(endpointKey(attachment, ifName), async () => {
      const ep = this.requireEndpoint(attachment, ifName);
      return this.relabel(ep, { labels: this.d.labels ? this.d.labels.withCallerLabels(ep, labels) : { ...labels } });
    });
  }

  /** What the label resolver reports: a runtime's labels, or a runtime that did not answer in time
   *  (the link comes up, identity still init). */
  private readonly labelSink: LabelSink = {
    found: (u: RuntimeLabels) =>
      this.lock.run(endpointKey(u.attachment, u.ifName), async () => {
        const ep = this.byKey.get(endpointKey(u.attachment, u.ifName));
        if (!ep) return undefined;
        const change: Partial<Endpoint> & { labels: Record<string, string> } = { labels: this.d.labels!.merge(ep, u) };
        if (u.container && ep.docker)
          Object.assign(change, { containerId: u.container.id, docker: { ...ep.docker, containerName: u.container.name } });
        return this.relabel(ep, change);
      }),
    expired: (attachment: string, ifName: string) =>
      this.lock.run(endpointKey(attachment, ifName), async () => {
        const ep = this.byKey.get(endpointKey(attachment, ifName));
        if (!ep?.labelsPending || ep.labelsPending.expired) return;
        const next: Endpoint = { ...ep, labelsPending: { ...ep.labelsPending, expired: true } };
        await this.d.store.put(storeKey(next), next);
        this.byKey.set(keyOf(next), next);
        this.bringUp(next);
      }),
  };

  /** New labels: identity, datapath config and policy first; then a pending endpoint's link. */
  private async relabel(ep: Endpoint, change: Partial<Endpoint> & { labels: Record<string, string> }): Promise<Endpoint> {
    const next: Endpoint = { ...ep, ...change, identity: await this.d.identityFor(change.labels) };
    delete next.labelsPending;
    await this.d.store.put(storeKey(next), next);
    this.byKey.set(keyOf(next), next);
    // An unhealthy endpoint's interface is gone or not ours: nothing may redirect to it.
    this.d.datapath.upsertEndpoint(datapathConfig(next), { publish: !this.unhealthy.has(keyOf(next)) && !ep.labelsPending });
    await this.runHooks('afterLabelsChanged', next);
    if (ep.labelsPending) {
      this.d.labels?.settled(attachmentId(next), next.ifName);
      this.bringUp(next);
      // What waiting for the runtime added to the container's start (bench:docker reports it).
      this.d.log?.debug?.(
        { endpoint: keyOf(next), source: ep.labelsPending.source, heldMs: Date.now() - Date.parse(ep.labelsPending.since) },
        'labels arrived: link up',
      );
    }
    return next;
  }

  /** A held endpoint's host side comes up and is routed, then others may redirect to it. */
  private bringUp(ep: Endpoint): void {
    const link = this.d.host.linkByName(ep.hostIfName);
    if (!link || this.unhealthy.has(keyOf(ep))) return;
    ensureHostSide(this.d.host, link.index, plumbSpec(ep, null));
    this.d.datapath.publishEndpoint(datapathConfig(ep));
  }

  /** Problems of a live endpoint (empty = healthy): container side, host link, BPF attachment. */
  check(attachment: string, ifName: string): string[] {
    const ep = this.requireEndpoint(attachment, ifName);
    const unhealthy = this.unhealthy.get(keyOf(ep));
    if (unhealthy) return unhealthy.problems;
    return endpointProblems(this.d, ep);
  }

  /** A retried ADD gets the same answer; a new endpoint gets an id and goes through the recipe
   *  (create.ts), every step undone if one fails. */
  private async createLocked(req: EndpointRequest): Promise<Endpoint> {
    validateRequest(req);
    const start = this.d.labels ? this.d.labels.initial(req) : { labels: { ...(req.labels ?? {}) } };
    const attachment = attachmentId(req);
    const key = endpointKey(attachment, req.ifName);
    const existing = this.byKey.get(key);
    if (existing) {
      if (existing.netns === (req.netns ?? null)) return existing; // a retried ADD gets the same answer
      throw new EndpointError('endpoint_exists', `endpoint ${key} already exists in ${existing.netns ?? 'the host netns'}`);
    }
    const network = this.requireNetwork(req.network ?? 'default');
    const ns = req.netns ? openContainerNetns(req.netns) : null;
    const id = this.ids.reserve();
    const undo: UndoList = [() => this.ids.release(id)];
    this.creating.add(key);
    try {
      const ep = await createEndpoint(this.recipeDeps(), { req, key, attachment, id, network, ns, start }, undo);
      this.byKey.set(key, ep);
      this.d.labels?.watch(ep);
      return ep;
    } catch (e) {
      for (const step of undo.reverse()) {
        try {
          await step();
        } catch (err) {
          this.d.log?.warn({ err, endpoint: key }, 'rollback step failed');
        }
      }
      throw e;
    } finally {
      this.creating.delete(key);
      ns?.close();
    }
  }

  private async deleteLocked(attachment: string, ifName: string): Promise<boolean> {
    const key = endpointKey(attachment, ifName);
    const ep = this.byKey.get(key);
    if (!ep) {
      // Unknown to us, but a crashed ADD may have left its link and addresses: the names are derived.
      deleteHostVeth(this.d.host, this.d.datapath, hostVethName(attachment, ifName));
      await this.d.ipam.releaseOwner(ipamOwner(attachment, ifName));
      return false;
    }
    await this.teardown(ep);
    return true;
  }

  /**
   * What a DEL waits for: the endpoint can neither send nor receive (no datapath config: its programs
   * drop everything; no local_endpoints entry: nothing redirects to it) and its addresses are free
   * on disk. The host veth (deleting it removes the container end, routes and proxy entries) and the
   * flows bound to its id go afterwards (reaper.ts); the id stays reserved until then.
   */
  private async teardown(ep: Endpoint): Promise<void> {
    const key = keyOf(ep);
    const ifindexShared = [...this.byKey.values()].some((o) => o !== ep && o.hostIfIndex === ep.hostIfIndex);
    this.d.datapath.removeEndpoint(ifindexShared ? 0 : ep.hostIfIndex, plainIps(ep));
    // The record, its addresses and the reap record go in one write (the same batch). If the
    // deletions fail, the endpoint stays known and a retried delete finishes it.
    const [reap, ...deletions] = await Promise.allSettled([
      this.reaper.record(ep),
      this.d.store.delete(storeKey(ep)),
      this.d.ipam.releaseOwner(ipamOwner(attachmentId(ep), ep.ifName)),
    ]);
    const failed = deletions.find((r) => r.status === 'rejected');
    if (failed) {
      await this.reaper.cancel(ep.id);
      throw failed.reason;
    }
    this.byKey.delete(key);
    this.unhealthy.delete(key);
    this.recovery.verifying.delete(key);
    this.addresses.release(key, plainIps(ep));
    this.d.labels?.forget(ep);
    if (reap.status === 'rejected') {
      // A full state disk keeps room for deletions, not for new records: reap now instead.
      this.d.log?.warn({ err: reap.reason, endpoint: key }, 'no room for the reap record: removing the interface now');
      this.reaper.reapNow(ep);
    }
    await this.runHooks('afterDelete', ep);
    this.reaper.kick();
  }

  /** After an agent restart: every endpoint kept, repaired, dropped or reported unhealthy (recovery.ts). */
  restore(): Promise<RestoreSummary> {
    return this.recovery.restoreAll();
  }

  /** The container sides restore left for later, verified while the API serves (recovery.ts). */
  verifyRestored(): ReturnType<EndpointRecovery['verifyRestored']> {
    return this.recovery.verifyRestored();
  }

  stopVerifying(): Promise<void> {
    return this.recovery.stopVerifying();
  }

  /** Addresses of creates that never finished, released (recovery.ts). */
  releaseOrphans(): Promise<number> {
    return this.recovery.releaseOrphans();
  }

  /** Endpoints of netns that are gone, removed as a DEL would (recovery.ts). */
  collectGone(): Promise<number> {
    return this.recovery.collectGone();
  }

  /** Endpoints removed because their netns was gone: a metric. */
  get goneRemoved(): number {
    return this.recovery.goneRemoved;
  }

  /** Periodic upkeep: unhealthy endpoints retried, gone ones removed, orphaned addresses released. */
  startUpkeep(intervalMs = 30_000): () => void {
    return this.recovery.startUpkeep(intervalMs);
  }

  /** The node's parts and the manager's own steps, as the create and restore recipes use them. */
  private recipeDeps(): CreateDeps & RestoreDeps {
    const d = this.d;
    return {
      store: d.store,
      ipam: d.ipam,
      networks: d.networks,
      datapath: d.datapath,
      host: d.host,
      addresses: this.addresses,
      identityFor: d.identityFor,
      beforeAttach: (ep) => this.runHooks('beforeAttach', ep),
      afterDelete: (ep) => this.runHooks('afterDelete', ep),
      teardown: (ep) => this.teardown(ep),
      removeGone: (ep) => this.recovery.removeGone(ep),
      watch: (ep) => d.labels?.watch(ep),
    };
  }

  private requireNetwork(name: string): Network {
    const n = this.d.networks.get(name);
    if (!n) throw new EndpointError('network_not_found', `network "${name}" does not exist`);
    return n;
  }

  private requireEndpoint(attachment: string, ifName: string): Endpoint {
    const ep = this.byKey.get(endpointKey(attachment, ifName));
    if (!ep) throw new EndpointError('endpoint_not_found', `endpoint ${endpointKey(attachment, ifName)} does not exist`);
    return ep;
  }
}
