// How the engine's state reaches the datapath maps: a full sync (build the desired content, apply
// the difference), the shortcuts for a replica's ADD and an endpoint's DEL, the touch-up of a restored endpoint, and the
// patch of FQDN ipcache entries. It keeps what the last successful apply wrote and rolls the CIDR
// table and the caches back when a build or an apply fails, so a failed change leaves the maps as
// they were and the next sync compares all. engine.ts and engine-events.ts decide when (one change at a time);
// this decides how.
import { normalizeCidr } from '../net/index.ts';
import type { IdentityAllocator } from '../identity/allocator.ts';
import { applyDesired, type ApplyStats } from './apply.ts';
import { buildDesired, l7KindsOf, type Desired, type EngineEndpoint } from './desired.ts';
import { desiredWithEndpoint, desiredWithoutEndpoint } from './desired-endpoint.ts';
import type { PolicyEngineDeps } from './engine-types.ts';
import { PolicyView } from './engine-view.ts';
import { fqdnIpcacheDiff } from './fqdn-ipcache.ts';
import type { PolicyRepository } from './repository.ts';
import { EP_FLAGS } from './map-codec.ts';
import { endpointFlags } from './selection.ts';
import type { PolicyRecord } from './types.ts';

export class PolicyMapSync extends PolicyView {
  protected hostAddrs: string[];
  /** The policy entries the last successful apply wrote, by endpoint (none: the next apply compares all). */
  private applied?: Desired['policy'];
  /** What the last successful apply was built from (an ADD derives the next one: desiredWithEndpoint). */
  private last?: Desired;
  /** The records the CIDR table was last synced to (by a sync that was applied). */
  private cidrsRecords?: PolicyRecord[];
  /** Set once activateProxies succeeded; else the last records found to need no proxy. */
  private proxiesActive = false;
  private proxiesNotNeededFor?: PolicyRecord[];

  protected constructor(d: PolicyEngineDeps, identities: IdentityAllocator, repo: PolicyRepository) {
    super(d, identities, repo);
    this.hostAddrs = d.hostAddresses();
  }

  /** True while a stored policy could not be read (engine.ts): the set in memory lacks it, so nothing
   *  is built from it. The maps keep their last enforced state (which had that policy); endpoints
   *  that come or change meanwhile get default deny (heldEndpoint). */
  protected held(): boolean {
    return false;
  }

  /** Computes the desired maps for `records` and applies the difference. Throws with nothing changed. */
  protected sync(records: PolicyRecord[] = this.repo.list()): ApplyStats {
    if (this.held()) return HELD;
    this.proxiesFor(records);
    // The CIDR table and the FQDN state follow the records; a sync that is abandoned takes their
    // changes back.
    this.cidrs.checkpoint();
    this.d.fqdn?.checkpoint();
    let desired: Desired;
    try {
      desired = buildDesired(
        {
          records,
          endpoints: [...this.endpoints.values()],
          labelsOf: (id) => this.identities.labelsOf(id),
          hostAddresses: this.hostAddrs,
          cidrs: this.cidrs,
          proxyPorts: this.d.proxyPorts?.(),
          remote: this.remote,
          fqdn: this.d.fqdn,
        },
        this.compileCache,
      );
    } catch (e) {
      // A build that stopped half way may have edited what the cache describes: start over next time.
      this.compileCache.current = undefined;
      this.applied = undefined;
      this.last = undefined;
      this.cidrsRecords = undefined;
      this.cidrs.undo();
      this.d.fqdn?.undo();
      throw e;
    }
    let stats: ApplyStats;
    try {
      stats = this.apply(desired);
    } catch (e) {
      this.cidrsRecords = undefined;
      // The maps hold neither this build's ipcache nor (edited in place) the one before: whole next time.
      if (this.compileCache.current) this.compileCache.current.ipcache = undefined;
      this.cidrs.undo();
      this.d.fqdn?.undo();
      throw e;
    }
    this.cidrs.keep();
    this.d.fqdn?.keep();
    this.cidrsRecords = records;
    return stats;
  }

  /** A new endpoint whose identity the node already has changes nothing but its own entries: the
   *  next desired state is derived from the last one instead of built whole, when it can be. */
  protected syncEndpointAdded(e: EngineEndpoint, known: boolean): void {
    if (this.held()) {
      this.heldEndpoint(e);
      return;
    }
    const records = this.repo.list();
    this.proxiesFor(records);
    const desired =
      !known && this.last && this.applied && records === this.cidrsRecords
        ? desiredWithEndpoint(
            this.last,
            e,
            {
              records,
              labelsOf: (id) => this.identities.labelsOf(id),
              proxyPorts: this.d.proxyPorts?.(),
              cidrs: this.cidrs,
              fqdn: this.d.fqdn,
            },
            this.compileCache,
          )
        : undefined;
    if (desired) this.apply(desired);
    else this.sync();
  }

  /** An endpoint gone (already out of `endpoints`) whose identity stays in the universe changes
   *  nothing but its own entries, flags and addresses: derived from the last state when it can be. */
  protected syncEndpointRemoved(gone: EngineEndpoint): void {
    if (this.held()) return; // its config goes with it; entries of others stay as last enforced
    const records = this.repo.list();
    this.proxiesFor(records);
    const desired =
      this.last && this.applied && records === this.cidrsRecords
        ? desiredWithoutEndpoint(
            this.last,
            gone,
            this.endpoints.values(),
            {
              records,
              proxyPorts: this.d.proxyPorts?.(),
              cidrs: this.cidrs,
              fqdn: this.d.fqdn,
              hostAddresses: this.hostAddrs,
              remote: this.remote,
            },
            this.compileCache,
          )
        : undefined;
    if (desired) this.apply(desired);
    else this.sync();
  }

  /** Restoring: the pinned maps hold the entries already; only this endpoint's flags and addresses
   *  may be new (a recreated veth). One full sync follows when the engine starts. */
  protected writeRestoredEndpoint(e: EngineEndpoint): void {
    if (this.held()) {
      // Its pinned flags are the last enforced state; without any (a new config), default deny.
      if (this.d.ops.readEndpointFlags(e.hostIfIndex) === undefined) this.heldEndpoint(e);
      return;
    }
    const flags = endpointFlags(this.selection(e), e.audit);
    this.d.ops.writeEndpointFlags(e.hostIfIndex, flags);
    this.mirror.flags.set(e.hostIfIndex, flags);
    const upsert = e.ips
      .map((ip) => [normalizeCidr(ip), e.identity] as [string, number])
      .filter(([p, id]) => this.mirror.ipcache.get(p) !== id);
    if (upsert.length) {
      this.d.ops.writeIpcache(upsert, []);
      for (const [p, id] of upsert) this.mirror.ipcache.set(p, id);
    }
  }

  /** While held: an endpoint that comes (or changes labels) may be one the unreadable policy selects,
   *  so it gets default deny both ways, and its address its identity. */
  protected heldEndpoint(e: EngineEndpoint): void {
    const flags = EP_FLAGS.ingressLookup | EP_FLAGS.egressLookup | EP_FLAGS.ingressDefaultDeny | EP_FLAGS.egressDefaultDeny;
    this.d.ops.writeEndpointFlags(e.hostIfIndex, flags);
    this.mirror.flags.set(e.hostIfIndex, flags);
    const upsert = e.ips.map((ip) => [normalizeCidr(ip), e.identity] as [string, number]);
    this.d.ops.writeIpcache(upsert, []);
    for (const [p, id] of upsert) this.mirror.ipcache.set(p, id);
    this.generation++;
    // A relabeled endpoint's established flows are asked again under default deny.
    this.d.ops.changed?.(this.mirror, {
      policyKeys: [],
      flagIfindexes: [e.hostIfIndex],
      ipcachePrefixes: upsert.map(([p]) => p),
    });
    this.d.onChange?.();
  }

  /** Writes the FQDN ipcache entries of these prefixes when their identities already have policy
   *  entries: only the addresses change. */
  protected writeFqdnIpcache(prefixes: string[]): void {
    if (!this.d.fqdn || this.held()) return;
    // A sync failed since the last one applied (a refused import): the FQDN state and the CIDR table
    // were taken back with the maps, but the desired state the diff edits was not kept (the maps hold
    // the one before it). A full sync rebuilds it.
    if (!this.cidrsRecords) {
      this.sync();
      return;
    }
    const owned = (p: string) =>
      this.hostAddrs.some((h) => normalizeCidr(h) === p) ||
      this.remote.has(p) ||
      [...this.endpoints.values()].some((e) => e.ips.some((ip) => normalizeCidr(ip) === p));
    const diff = fqdnIpcacheDiff(prefixes, { fqdn: this.d.fqdn, cidrs: this.cidrs, current: this.mirror.ipcache, owned });
    if (!diff.upsert.length && !diff.remove.length) return;
    // Established flows to a removed address are revalidated like after any ipcache change.
    this.d.ops.writeIpcache(diff.upsert, diff.remove);
    // The desired state an ADD derives from holds them too (buildDesired would).
    const next = this.compileCache.current?.ipcache;
    for (const m of [this.mirror.ipcache, this.last?.ipcache, next?.map]) {
      for (const [p, id] of diff.upsert) m?.set(p, id);
      for (const p of diff.remove) m?.delete(p);
    }
    // The next build edits that ipcache at the prefixes whose sources changed (ipcache-delta.ts):
    // its record of the DNS entries must hold these, or an address written here whose FQDN identity
    // goes later (a policy change) keeps that dead identity in the ipcache.
    for (const p of [...diff.upsert.map(([p]) => p), ...diff.remove]) {
      const id = this.d.fqdn.entryOf(p);
      if (id === undefined) next?.others.delete(p);
      else next?.others.set(p, id);
    }
    this.generation++;
    this.d.ops.changed?.(this.mirror, {
      policyKeys: [],
      flagIfindexes: [],
      ipcachePrefixes: [...diff.upsert.map(([p]) => p), ...diff.remove],
    });
    this.d.onChange?.();
  }

  /** Before anything built from `records` is written: a proxy entry (only L7 and DNS rules make one)
   *  must find the proxies' routing and socket lookup in place. Throws with nothing changed. */
  private proxiesFor(records: PolicyRecord[]): void {
    if (this.proxiesActive || !this.d.activateProxies || records === this.proxiesNotNeededFor) return;
    if (!l7KindsOf(records).size) {
      this.proxiesNotNeededFor = records;
      return;
    }
    this.d.activateProxies();
    this.proxiesActive = true;
  }

  /** Applies the difference to `desired`; throws with nothing changed (the next sync compares all). */
  private apply(desired: Desired): ApplyStats {
    let stats: ApplyStats;
    try {
      stats = applyDesired(this.d.ops, this.mirror, desired, this.applied);
    } catch (e) {
      this.applied = undefined;
      this.last = undefined;
      throw e;
    }
    this.applied = desired.policy;
    this.last = desired;
    this.generation++;
    this.d.onChange?.();
    return stats;
  }
}

const HELD: ApplyStats = { policyUpserts: 0, policyRemovals: 0, ipcacheUpserts: 0, ipcacheRemovals: 0, flagChanges: 0 };
