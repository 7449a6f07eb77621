// Bringing one endpoint back after an agent restart: keep what works, repair what is missing (the
// host veth, the container side, the BPF attachment), drop what is gone. It follows the create
// recipe's order (create.ts) so a repaired endpoint is never open. Failures throw: the manager keeps
// the endpoint and reports it unhealthy.
import type { Endpoint } from '../types.ts';
import type { Store } from '../store/index.ts';
import type { Ipam } from '../ipam/index.ts';
import type { Networks } from '../network/index.ts';
import type { Datapath, LocalEndpointsIndex } from '../bpf/datapath.ts';
import { NetlinkError, type Link, type Netlink } from '../netlink/index.ts';
import { forbiddenNetnsReason, NetnsError, openNetns, type NetNs } from '../netns/index.ts';
import { datapathConfig, keyOf, plainIps, plumbSpec, storeKey } from './recipe.ts';
import { ensureRecorded, type AddressBook } from './addresses.ts';
import { attachmentId, ipamOwner } from './naming.ts';
import { createVeth, ensureContainerSide, ensureHostSide, inspectContainerSide } from './plumbing.ts';

export type RestoreOutcome = 'kept' | 'repaired' | 'dropped';

/** What a restore did with one endpoint; `verify`: its container side is still to be checked
 *  (verifyContainerSide), after the API is up. */
export interface Restored {
  outcome: RestoreOutcome;
  verify?: boolean;
}

/** What a restore uses: the node's parts, and the manager's own ways to remove an endpoint. */
export interface RestoreDeps {
  store: Store;
  ipam: Ipam;
  networks: Networks;
  datapath: Datapath;
  host: Netlink;
  addresses: AddressBook;
  beforeAttach: (ep: Endpoint) => Promise<void>;
  /** Removes the endpoint as a DEL would. */
  teardown: (ep: Endpoint) => Promise<void>;
  /** Removes the endpoint of a netns that no longer exists (counted apart). */
  removeGone: (ep: Endpoint) => Promise<void>;
  /** Follows the endpoint's runtime for labels again. */
  watch: (ep: Endpoint) => void;
}

/**
 * What restoring every endpoint in a row reads once instead of once per endpoint: the host's links
 * (one dump, not a lookup or two per endpoint) and where local_endpoints points (one walk of the map,
 * not one per endpoint). Links the restore itself creates are added; nothing else changes the host's
 * endpoint links while the agent restores (the API is not serving yet).
 */
export class RestoreView {
  private readonly byName = new Map<string, Link>();
  private readonly indexes = new Set<number>();
  readonly locals: LocalEndpointsIndex;

  constructor(d: Pick<RestoreDeps, 'host' | 'datapath'>) {
    for (const link of d.host.linkList()) this.add(link);
    this.locals = d.datapath.indexLocalEndpoints();
  }

  linkByName(name: string): Link | null {
    return this.byName.get(name) ?? null;
  }

  hasIndex(index: number): boolean {
    return this.indexes.has(index);
  }

  add(link: Link): void {
    this.byName.set(link.name, link);
    this.indexes.add(link.index);
  }
}

/** Live lookups for one endpoint at a time (the upkeep's retries), the view's for a whole restore. */
function links(d: RestoreDeps, view?: RestoreView) {
  return {
    byName: (name: string) => (view ? view.linkByName(name) : d.host.linkByName(name)),
    exists: (index: number) => (view ? view.hasIndex(index) : d.host.linkByIndex(index) !== null),
  };
}

/**
 * Brings one endpoint back. In a whole restore (a view), an endpoint whose host end is still there
 * with its recorded index gets its host side and datapath now and its container side later
 * (verifyContainerSide, while the API serves, the endpoint reported `verifying` until then): a veth
 * pair dies with either end, so its container end, and the netns it lives in, are still there. The
 * container side is what a restore checks with a netlink socket opened in each container's netns,
 * most of its time per endpoint; the datapath keeps forwarding and enforcing meanwhile.
 */
export async function restoreEndpoint(d: RestoreDeps, ep: Endpoint, view?: RestoreView): Promise<Restored> {
  if (view && ep.netns && view.linkByName(ep.hostIfName)?.index === ep.hostIfIndex) {
    return { outcome: await restoreLocked(d, ep, view, false), verify: true };
  }
  return { outcome: await restoreLocked(d, ep, view, true) };
}

/** The container side of an endpoint restored without it: its netns gone (removed as a DEL would),
 *  not a container's any more (thrown: unhealthy), or checked and repaired. */
export async function verifyContainerSide(d: RestoreDeps, ep: Endpoint): Promise<RestoreOutcome> {
  let ns: NetNs;
  try {
    ns = openNetns(ep.netns!);
  } catch (e) {
    if (!(e instanceof NetnsError && e.code === 'netns_not_found')) throw e;
    await d.removeGone(ep);
    return 'dropped';
  }
  try {
    const why = forbiddenNetnsReason(ns);
    if (why) throw new Error(`its netns ${ep.netns} is now ${why}: left alone`);
    const spec = plumbSpec(ep, ns);
    if (!inspectContainerSide(spec).length) return 'kept';
    ensureContainerSide(spec);
    return 'repaired';
  } finally {
    ns.close();
  }
}

async function restoreLocked(
  d: RestoreDeps,
  ep: Endpoint,
  view: RestoreView | undefined,
  withContainer: boolean,
): Promise<RestoreOutcome> {
  const host = links(d, view);
  let ns: NetNs | null = null;
  try {
    if (ep.netns && withContainer) {
      try {
        ns = openNetns(ep.netns);
      } catch (e) {
        if (!(e instanceof NetnsError && e.code === 'netns_not_found')) throw e;
        await d.removeGone(ep);
        return 'dropped';
      }
      const why = forbiddenNetnsReason(ns);
      if (why) throw new Error(`its netns ${ep.netns} is now ${why}: left alone`);
    }
    const network = d.networks.get(ep.network);
    if (!network) throw new Error(`its network "${ep.network}" is gone`);
    const unrecorded = await ensureRecorded(
      { ipam: d.ipam, addresses: d.addresses },
      keyOf(ep),
      ipamOwner(attachmentId(ep), ep.ifName),
      plainIps(ep),
      network,
      ep.docker !== undefined,
    );
    if (unrecorded.length) throw new Error(`its addresses are not its own: ${unrecorded.join('; ')}`);
    // Without the container side (verified later) ns is null here: nothing below enters the netns.
    const spec = plumbSpec(ep, ns);
    let link = host.byName(ep.hostIfName);
    let repaired = false;
    if (!link) {
      if (!ns) {
        await d.teardown(ep);
        return 'dropped';
      }
      // Its stale datapath entries point at an interface that is gone: traffic to it must not go there.
      if (!host.exists(ep.hostIfIndex)) d.datapath.removeEndpoint(ep.hostIfIndex, plainIps(ep));
      try {
        createVeth(d.host, spec);
      } catch (e) {
        if (e instanceof NetlinkError && e.code === 'exists') {
          throw new Error(
            `host interface ${ep.hostIfName} vanished and cannot be recreated: ${ep.ifName} already exists in ${ep.netns} and is not ours`,
          );
        }
        throw e;
      }
      link = d.host.linkByName(ep.hostIfName);
      if (link) view?.add(link);
      repaired = true;
    }
    if (!link) throw new Error(`cannot recreate ${ep.hostIfName}`);
    const wasCurrent = d.datapath.isCurrent(link.index);
    if (link.index !== ep.hostIfIndex) {
      // The old index may belong to another interface by now: only forget it when nothing has it.
      if (!host.exists(ep.hostIfIndex)) d.datapath.removeEndpoint(ep.hostIfIndex, []);
      await d.store.put(storeKey(ep), { ...ep, hostIfIndex: link.index });
      ep.hostIfIndex = link.index;
    }
    // The create recipe's order: config, policy, program, links, then redirects to it.
    d.datapath.upsertEndpoint(datapathConfig(ep), { publish: false });
    await d.beforeAttach(ep);
    // Programs reused across the restart (bpf/datapath.ts) are attached already: no netlink round trip.
    if (!wasCurrent) d.datapath.attach(link.index);
    if (withContainer && inspectContainerSide(spec).length) {
      ensureContainerSide(spec);
      repaired = true;
    }
    ensureHostSide(d.host, link.index, spec, link);
    if (!spec.holdDown) d.datapath.publishEndpoint(datapathConfig(ep), view?.locals);
    d.watch(ep);
    return repaired || !wasCurrent ? 'repaired' : 'kept';
  } finally {
    ns?.close();
  }
}

/** Datapath entries of interfaces no endpoint has (a create that crashed, a record the journal lost). */
export function pruneDatapath(
  d: Pick<RestoreDeps, 'datapath'> & { log?: { warn(o: object, msg: string): void } },
  liveIfindexes: Set<number>,
): void {
  for (const ifindex of d.datapath.listEndpointIfindexes()) {
    if (liveIfindexes.has(ifindex)) continue;
    d.log?.warn({ ifindex }, 'removing datapath entries of an interface no endpoint has');
    d.datapath.removeEndpoint(ifindex, []);
  }
}
