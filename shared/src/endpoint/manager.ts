// Endpoint manager: the recipe that networks one container interface end to end, and undoes it.
// Every failure path rolls back what it did; delete succeeds whatever is already gone.
import type { Endpoint, EndpointIp, EndpointRequest, Network } from '../types.ts';
import type { Store } from '../store/index.ts';
import type { Ipam } from '../ipam/index.ts';
import type { Networks } from '../network/index.ts';
import type { Datapath } from '../bpf/datapath.ts';
import { NetlinkError, type Netlink } from '../netlink/index.ts';
import { openNetns, type NetNs } from '../netns/index.ts';
import { addressOnly, cidrContains, familyOf, hostPrefix, ifNameProblem, interfaceMac, normalizeIp, parseCidr, randomMac } from '../net/index.ts';
import { EndpointError } from './errors.ts';
import { attachmentId, endpointKey, hostVethName, ipamOwner, withDockerRef } from './naming.ts';
import { createVeth, ensureContainerSide, ensureHostSide, inspectContainerSide, type PlumbSpec } from './plumbing.ts';
import { KeyedLock } from './lock.ts';

export interface EndpointManagerDeps {
  store: Store;
  ipam: Ipam;
  networks: Networks;
  datapath: Datapath;
  host: Netlink;
  /** The security identity of a label set, asked before an endpoint's datapath config is written. */
  identityFor: (labels: Record<string, string>) => number | Promise<number>;
  log?: { info(o: object, msg: string): void; warn(o: object, msg: string): void };
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

const STORE_PREFIX = 'endpoints';
const MAX_ENDPOINT_ID = 65535;

export class EndpointManager {
  private readonly byKey = new Map<string, Endpoint>();
  private readonly lock = new KeyedLock();
  private readonly hooks: EndpointHooks[] = [];
  /** Ids of live endpoints and of creates in flight (reserved before their first await). */
  private readonly idsInUse = new Set<number>();

  constructor(private readonly d: EndpointManagerDeps) {}

  addHooks(h: EndpointHooks): void {
    this.hooks.push(h);
  }

  private async runHooks(name: 'beforeAttach' | 'afterDelete' | 'afterLabelsChanged', ep: Endpoint): Promise<void> {
    for (const h of this.hooks) await h[name]?.(ep);
  }

  /** By attachment id (the CNI container id, or the Docker endpoint id) and interface name. */
  get(attachment: string, ifName: string): Endpoint | undefined {
    return this.byKey.get(endpointKey(attachment, ifName));
  }

  /** Every endpoint, or those of one container (a Docker endpoint once its container is known). */
  list(filter: { containerId?: string } = {}): Endpoint[] {
    return [...this.byKey.values()]
      .filter((e) => !filter.containerId || e.containerId === filter.containerId)
      .sort((a, b) => a.id - b.id);
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

  /** New labels (a new identity); a Docker endpoint also learns its container here. */
  updateLabels(attachment: string, ifName: string, labels: Record<string, string>, container?: { id: string; name: string }): Promise<Endpoint> {
    return this.lock.run(endpointKey(attachment, ifName), async () => {
      const ep = this.requireEndpoint(attachment, ifName);
      const next: Endpoint = { ...ep, labels: { ...labels }, identity: await this.d.identityFor(labels) };
      if (container && ep.docker) {
        next.containerId = container.id;
        next.docker = { ...ep.docker, containerName: container.name };
      }
      await this.d.store.put(storeKey(next), next);
      this.byKey.set(endpointKey(attachment, ifName), next);
      this.d.datapath.upsertEndpoint(datapathConfig(next));
      await this.runHooks('afterLabelsChanged', next);
      return next;
    });
  }

  /** Problems of a live endpoint (empty = healthy): container side, host link, BPF attachment. */
  check(attachment: string, ifName: string): string[] {
    const ep = this.requireEndpoint(attachment, ifName);
    const problems: string[] = [];
    const link = this.d.host.linkByName(ep.hostIfName);
    if (!link) return [`host interface ${ep.hostIfName} is missing`];
    if (!this.d.datapath.isCurrent(link.index)) problems.push(`BPF program is not attached to ${ep.hostIfName}`);
    if (ep.netns) {
      let ns: NetNs | undefined;
      try {
        ns = openNetns(ep.netns);
        problems.push(...inspectContainerSide(plumbSpec(ep, ns)));
      } catch (e) {
        problems.push((e as Error).message);
      } finally {
        ns?.close();
      }
    }
    return problems;
  }

  private async createLocked(req: EndpointRequest): Promise<Endpoint> {
    validateRequest(req);
    const attachment = attachmentId(req);
    const key = endpointKey(attachment, req.ifName);
    const existing = this.byKey.get(key);
    if (existing) {
      if (existing.netns === (req.netns ?? null)) return existing; // a retried ADD gets the same answer
      throw new EndpointError('endpoint_exists', `endpoint ${key} already exists in ${existing.netns ?? 'the host netns'}`);
    }
    const network = this.requireNetwork(req.network ?? 'default');
    const ns = req.netns ? openNetnsOrFail(req.netns) : null;
    const id = this.reserveId();
    const undo: (() => unknown)[] = [() => this.idsInUse.delete(id)];
    try {
      const ips = await this.assignIps(req, network, undo);
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
        labels: { ...(req.labels ?? {}) },
        metadata: { ...(req.metadata ?? {}) },
        identity: await this.d.identityFor(req.labels ?? {}),
        externalIpam: req.externalIpam ?? false,
        createdAt: new Date().toISOString(),
      };
      const spec = plumbSpec(ep, ns);
      // A host veth by this derived name with no endpoint record is what a crashed create left.
      this.d.host.linkDel(ep.hostIfName);
      try {
        ep.hostIfIndex = createVeth(this.d.host, spec);
      } catch (e) {
        if (e instanceof NetlinkError && e.code === 'exists') {
          throw new EndpointError('endpoint_exists', `interface ${req.ifName} already exists in ${req.netns ?? 'the host netns'}`);
        }
        throw e;
      }
      undo.push(() => this.d.host.linkDel(ep.hostIfName));
      ensureContainerSide(spec);
      ensureHostSide(this.d.host, ep.hostIfIndex, spec);
      // Config before attach: the program must know the endpoint before its first packet.
      this.d.datapath.upsertEndpoint(datapathConfig(ep));
      undo.push(() => this.d.datapath.removeEndpoint(ep.hostIfIndex, plainIps(ep)));
      undo.push(() => this.runHooks('afterDelete', ep));
      await this.runHooks('beforeAttach', ep);
      this.d.datapath.attach(ep.hostIfIndex);
      await this.d.store.put(storeKey(ep), ep);
      this.byKey.set(key, ep);
      return ep;
    } catch (e) {
      for (const step of undo.reverse()) {
        try { await step(); } catch (err) { this.d.log?.warn({ err, endpoint: key }, 'rollback step failed'); }
      }
      throw e;
    } finally {
      ns?.close();
    }
  }

  private async assignIps(req: EndpointRequest, network: Network, undo: (() => unknown)[]): Promise<EndpointIp[]> {
    const owner = ipamOwner(attachmentId(req), req.ifName);
    const requested = (req.ips ?? []).map((ip, i) => {
      if (!familyOf(ip)) throw new EndpointError('bad_request', `ips: "${ip}" is not an IP address`, { field: `ips.${i}` });
      return normalizeIp(ip);
    });
    const out: EndpointIp[] = [];
    if (req.externalIpam) {
      if (!requested.length) throw new EndpointError('bad_request', 'externalIpam needs the allocated addresses in "ips"', { field: 'ips' });
      for (const ip of requested) {
        const fam = familyOf(ip)!;
        const subnet = network.subnets.find((s) => cidrContains(parseCidr(s.cidr), ip)) ?? network.subnets.find((s) => s.family === fam);
        if (!subnet) throw new EndpointError('bad_request', `network "${network.name}" has no IPv${fam} subnet for ${ip}`);
        out.push({ address: hostPrefix(ip, fam), gateway: subnet.gateway, family: fam, subnet: subnet.cidr });
      }
      return out;
    }
    undo.push(() => this.d.ipam.releaseOwner(owner));
    for (const s of network.subnets) {
      const want = requested.find((ip) => familyOf(ip) === s.family);
      const a = await this.d.ipam.allocate(network.name, owner, want ? { ip: want } : { family: s.family });
      out.push({ address: hostPrefix(a.ip, s.family), gateway: a.gateway, family: s.family, subnet: a.subnet });
    }
    for (const ip of requested) {
      if (!out.some((o) => o.address.startsWith(ip + '/'))) {
        throw new EndpointError('bad_request', `requested address ${ip} has no matching subnet in network "${network.name}"`, { field: 'ips' });
      }
    }
    return out;
  }

  private async deleteLocked(attachment: string, ifName: string): Promise<boolean> {
    const key = endpointKey(attachment, ifName);
    const ep = this.byKey.get(key);
    if (!ep) {
      // Unknown to us, but a crashed ADD may have left its link and addresses: the names are derived.
      this.d.host.linkDel(hostVethName(attachment, ifName));
      await this.d.ipam.releaseOwner(ipamOwner(attachment, ifName));
      return false;
    }
    await this.teardown(ep);
    return true;
  }

  private async teardown(ep: Endpoint): Promise<void> {
    const ifindexShared = [...this.byKey.values()].some((o) => o !== ep && o.hostIfIndex === ep.hostIfIndex);
    this.d.datapath.removeEndpoint(ifindexShared ? 0 : ep.hostIfIndex, plainIps(ep));
    // Deleting the host end removes the container end, the routes and the proxy entries with it.
    this.d.host.linkDel(ep.hostIfName);
    if (!ep.externalIpam) await this.d.ipam.releaseOwner(ipamOwner(attachmentId(ep), ep.ifName));
    await this.d.store.delete(storeKey(ep));
    this.byKey.delete(keyOf(ep));
    this.idsInUse.delete(ep.id);
    await this.runHooks('afterDelete', ep);
  }

  /**
   * After an agent restart: keep what works, repair what is missing, drop what is gone. Addresses
   * owned by an endpoint that never finished creating are released, and its link removed.
   */
  async restore(): Promise<{ kept: number; repaired: number; dropped: number }> {
    const result = { kept: 0, repaired: 0, dropped: 0 };
    for (const { value } of await this.d.store.list<Endpoint>(STORE_PREFIX)) {
      const ep = withDockerRef(value);
      this.byKey.set(keyOf(ep), ep);
      this.idsInUse.add(ep.id);
    }
    for (const ep of [...this.byKey.values()]) {
      const outcome = await this.lock.run(keyOf(ep), () => this.restoreOne(ep));
      result[outcome]++;
    }
    for (const { ip, owner: o } of this.d.ipam.allocations()) {
      if (o?.kind === 'endpoint' && !this.byKey.has(endpointKey(o.attachment, o.ifName))) {
        this.d.log?.warn({ ip, owner: o }, 'releasing address of an endpoint that never finished');
        this.d.host.linkDel(hostVethName(o.attachment, o.ifName));
        await this.d.ipam.releaseOwner(o);
      }
    }
    return result;
  }

  private async restoreOne(ep: Endpoint): Promise<'kept' | 'repaired' | 'dropped'> {
    let ns: NetNs | null = null;
    try {
      if (ep.netns) {
        try { ns = openNetns(ep.netns); } catch {
          this.d.log?.info({ endpoint: keyOf(ep) }, 'netns is gone: dropping endpoint');
          await this.teardown(ep);
          return 'dropped';
        }
      }
      const spec = plumbSpec(ep, ns);
      let link = this.d.host.linkByName(ep.hostIfName);
      let repaired = false;
      if (!link) {
        if (!ns) { await this.teardown(ep); return 'dropped'; }
        createVeth(this.d.host, spec);
        link = this.d.host.linkByName(ep.hostIfName);
        repaired = true;
      }
      if (!link) throw new Error(`cannot recreate ${ep.hostIfName}`);
      const before = inspectContainerSide(spec);
      if (before.length) { ensureContainerSide(spec); repaired = true; }
      ensureHostSide(this.d.host, link.index, spec);
      const wasCurrent = this.d.datapath.isCurrent(link.index);
      if (link.index !== ep.hostIfIndex) {
        // The old index may belong to another interface by now: only forget it when nothing has it.
        if (!this.d.host.linkByIndex(ep.hostIfIndex)) this.d.datapath.removeEndpoint(ep.hostIfIndex, []);
        ep.hostIfIndex = link.index;
        await this.d.store.put(storeKey(ep), ep);
      }
      this.d.datapath.upsertEndpoint(datapathConfig(ep));
      await this.runHooks('beforeAttach', ep);
      this.d.datapath.attach(link.index);
      return repaired || !wasCurrent ? 'repaired' : 'kept';
    } finally {
      ns?.close();
    }
  }

  private requireNetwork(name: string): Network {
    const n = this.d.networks.get(name);
    if (!n) throw new EndpointError('network_not_found', `network "${name}" does not exist`);
    return n;
  }

  private requireEndpoint(attachment: string, ifName: string): Endpoint {
    const ep = this.get(attachment, ifName);
    if (!ep) throw new EndpointError('endpoint_not_found', `endpoint ${endpointKey(attachment, ifName)} does not exist`);
    return ep;
  }

  private reserveId(): number {
    for (let id = 1; id <= MAX_ENDPOINT_ID; id++) {
      if (!this.idsInUse.has(id)) { this.idsInUse.add(id); return id; }
    }
    throw new EndpointError('bad_request', 'no endpoint id left (65535 endpoints on this node)');
  }
}

function validateRequest(req: EndpointRequest): void {
  if (!attachmentId(req)) throw new EndpointError('bad_request', 'containerId is required', { field: 'containerId' });
  const ifProblem = ifNameProblem(req.ifName);
  if (ifProblem) throw new EndpointError('bad_request', `ifName "${req.ifName}" is not a valid interface name: it ${ifProblem}`, { field: 'ifName' });
  if (req.mac !== undefined) {
    try { interfaceMac(req.mac); } catch (e) { throw new EndpointError('bad_request', `mac: ${(e as Error).message}`, { field: 'mac' }); }
  }
  if (req.mtu !== undefined && (!Number.isInteger(req.mtu) || req.mtu < 576 || req.mtu > 65535)) {
    throw new EndpointError('bad_request', `mtu ${req.mtu} is out of range (576-65535)`, { field: 'mtu' });
  }
}

function openNetnsOrFail(path: string): NetNs {
  try {
    return openNetns(path);
  } catch (e) {
    throw new EndpointError('netns_not_found', (e as Error).message);
  }
}

function routesOf(ips: EndpointIp[], inContainer: boolean): Endpoint['routes'] {
  if (!inContainer) return [];
  return ips.map((ip) => ({ dst: ip.family === 4 ? '0.0.0.0/0' : '::/0', gw: ip.gateway }));
}

function plumbSpec(ep: Endpoint, ns: NetNs | null): PlumbSpec {
  return { hostIfName: ep.hostIfName, hostMac: ep.hostMac, ifName: ep.ifName, mac: ep.mac, mtu: ep.mtu, ips: ep.ips, netns: ns };
}

function plainIps(ep: Endpoint): string[] {
  return ep.ips.map((ip) => addressOnly(ip.address));
}

function datapathConfig(ep: Endpoint) {
  const gateway6 = ep.ips.find((ip) => ip.family === 6)?.gateway;
  return {
    hostIfindex: ep.hostIfIndex, endpointId: ep.id, identity: ep.identity, flags: 0, hostMac: ep.hostMac, containerMac: ep.mac,
    ips: plainIps(ep), ...(gateway6 ? { gateway6 } : {}),
  };
}

function storeKey(ep: Endpoint): string {
  // Container ids are hex for every runtime we know, but stay safe for any string.
  return `${STORE_PREFIX}/${Buffer.from(keyOf(ep)).toString('base64url')}`;
}

function keyOf(ep: Endpoint): string {
  return endpointKey(attachmentId(ep), ep.ifName);
}
