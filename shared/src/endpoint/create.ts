// The create recipe: everything that happens to a new endpoint between its id being reserved and its
// record being kept, in the order that leaves no window. The manager (manager.ts) serialises creates
// per endpoint, reserves the id, and runs the undo list when a step throws.
import type { Endpoint, EndpointRequest, Network } from '../types.ts';
import type { Store } from '../store/index.ts';
import type { Ipam } from '../ipam/index.ts';
import type { Datapath } from '../bpf/datapath.ts';
import { NetlinkError, type Netlink } from '../netlink/index.ts';
import type { NetNs } from '../netns/index.ts';
import { interfaceMac, randomMac } from '../net/index.ts';
import { RESERVED } from '../identity/reserved.ts';
import type { LabelResolver } from '../labels/resolver.ts';
import { datapathConfig, plainIps, plumbSpec, routesOf, storeKey } from './recipe.ts';
import { assignAddresses, type AddressBook } from './addresses.ts';
import { EndpointError } from './errors.ts';
import { hostVethName, ipamOwner } from './naming.ts';
import { createVeth, deleteHostVeth, ensureContainerSide, ensureHostSide } from './plumbing.ts';

/** What the recipe uses: the node's parts and the hooks of other concerns. */
export interface CreateDeps {
  store: Store;
  ipam: Ipam;
  datapath: Datapath;
  host: Netlink;
  addresses: AddressBook;
  identityFor: (labels: Record<string, string>) => number | Promise<number>;
  beforeAttach: (ep: Endpoint) => Promise<void>;
  afterDelete: (ep: Endpoint) => Promise<void>;
}

/** What the manager settled before the recipe runs. */
export interface CreatePlan {
  req: EndpointRequest;
  /** The endpoint's key and attachment id (naming.ts). */
  key: string;
  attachment: string;
  id: number;
  network: Network;
  /** The container's netns (null: the endpoint's interface stays in the host netns). */
  ns: NetNs | null;
  /** The labels known now; `pending` names the runtime that still owes them. */
  start: ReturnType<LabelResolver['initial']>;
}

/** Each step that changed something pushes its undo here; the caller runs them in reverse on failure. */
export type UndoList = (() => unknown)[];

/**
 * Addresses recorded, the veth created with both ends down, the datapath config and the endpoint's
 * policy (default deny when a policy selects it) written, the programs attached; only then the links
 * come up with addresses and routes, the record is stored, and last other endpoints learn to redirect
 * to it (local_endpoints). Until the host end is up no packet can cross the veth; until
 * local_endpoints has it no redirect reaches it.
 */
export async function createEndpoint(d: CreateDeps, plan: CreatePlan, undo: UndoList): Promise<Endpoint> {
  const { req, key, attachment, id, network, ns, start } = plan;
  const ips = await assignAddresses(
    { ipam: d.ipam, addresses: d.addresses },
    key,
    ipamOwner(attachment, req.ifName),
    req,
    network,
    undo,
  );
  const ep: Endpoint = {
    id,
    containerId: req.docker ? '' : req.containerId,
    ...(req.docker ? { docker: { endpointId: req.docker.endpointId, networkId: req.docker.networkId } } : {}),
    ifName: req.ifName,
    network: network.name,
    netns: req.netns ?? null,
    hostIfName: hostVethName(attachment, req.ifName),
    hostIfIndex: 0,
    hostMac: randomMac(),
    mac: req.mac ? interfaceMac(req.mac) : randomMac(),
    mtu: req.mtu ?? network.mtu,
    ips,
    routes: routesOf(ips, ns !== null),
    labels: start.labels,
    metadata: { ...(req.metadata ?? {}) },
    // A runtime still owes the labels: init until they come, and the link stays down.
    identity: start.pending ? RESERVED.init : await d.identityFor(start.labels),
    ...(start.pending ? { labelsPending: { source: start.pending, since: new Date().toISOString() } } : {}),
    externalIpam: req.externalIpam ?? false,
    createdAt: new Date().toISOString(),
  };
  const spec = plumbSpec(ep, ns);
  // A host veth by this derived name with no endpoint record is what a crashed create left.
  deleteHostVeth(d.host, d.datapath, ep.hostIfName);
  try {
    ep.hostIfIndex = createVeth(d.host, spec);
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'exists') {
      throw new EndpointError('endpoint_exists', `interface ${req.ifName} already exists in ${req.netns ?? 'the host netns'}`);
    }
    throw e;
  }
  undo.push(() => deleteHostVeth(d.host, d.datapath, ep.hostIfName));
  // Config before attach: the program must know the endpoint before its first packet.
  d.datapath.upsertEndpoint(datapathConfig(ep), { publish: false });
  undo.push(() => d.datapath.removeEndpoint(ep.hostIfIndex, plainIps(ep)));
  undo.push(() => d.afterDelete(ep));
  await d.beforeAttach(ep);
  d.datapath.attach(ep.hostIfIndex);
  ensureContainerSide(spec);
  ensureHostSide(d.host, ep.hostIfIndex, spec);
  await d.store.put(storeKey(ep), ep);
  undo.push(() => d.store.delete(storeKey(ep)));
  if (!ep.labelsPending) d.datapath.publishEndpoint(datapathConfig(ep));
  return ep;
}
