// libnetwork remote NetworkDriver on the core. Docker networks become core networks; a Docker endpoint
// becomes a core endpoint named by its Docker endpoint id (Endpoint.docker; the container id, name and
// labels follow once the agent's label resolver learns them from the Docker API: shared/src/labels/
// docker.ts; until then the endpoint is closed and its link down), whose container end is created in the host netns
// (netns omitted) under a temp name that Join hands to dockerd as SrcName: dockerd moves it into the sandbox, renames it
// eth<N> and sets the address Docker's IPAM chose. Routing is L3 (proxy ARP on the host veth), so
// Docker's /24 on eth0 works: the host answers ARP for every peer and routes it by its /32.
import type { Core } from '../../shared/src/core.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import { parseOwnerKey, type IpamOwner } from '../../shared/src/ipam/owner.ts';
import { addressOnly, bigIntToIp, cidrsOverlap, formatCidr, hostPrefix, parseCidr } from '../../shared/src/net/index.ts';
import type { Logger } from 'pino';
import type { DockerState, EndpointRecord } from './state.ts';
import { planNetwork, stripPrefix, coreNetworkName } from './options.ts';
import type { CreateEndpointRequest, CreateNetworkRequest, JoinRequest } from './schemas.ts';
import { PluginError, short, wrap } from './errors.ts';

export interface DriverContext {
  core: Core;
  state: DockerState;
  log: Logger;
  /** Plugin (= Docker driver) name, e.g. "membrane". */
  name: string;
}

/** Container end of the veth while it sits in the host netns: "mbd" + 11 hex of the EndpointID. */
export function tempIfName(endpointId: string): string {
  return `mbd${endpointId.slice(0, 11)}`;
}

export async function createNetwork(ctx: DriverContext, req: CreateNetworkRequest): Promise<object> {
  const plan = planNetwork(req);
  const known = ctx.state.networks.get(req.NetworkID);
  if (known && ctx.core.networks.get(known.coreName)) return {}; // a retried call
  // The core checks overlaps too; checking here lets the message speak of Docker networks.
  for (const n of ctx.core.networks.list()) {
    if (n.name === plan.spec.name) continue;
    for (const s of n.subnets) {
      for (const mine of plan.subnets) {
        if (cidrsOverlap(parseCidr(mine.pool), parseCidr(s.cidr))) {
          throw new PluginError(
            `subnet ${mine.pool} overlaps subnet ${s.cidr} of ${describeCoreNetwork(ctx, n.name)}; pick a --subnet that no other membrane network uses`,
          );
        }
      }
    }
  }
  const pools = [...ctx.state.pools.values()].filter((p) => !p.networkId && plan.subnets.some((s) => s.pool === p.pool));
  let created = false;
  try {
    await ctx.core.networks.create(plan.spec);
    created = true;
    const coreName = plan.spec.name;
    // Our IPAM: bind its pools to the network, then reserve the aux addresses requested before it existed.
    for (const p of pools) {
      for (const ip of p.pendingAux) {
        await ctx.core.ipam.allocate(coreName, auxOwner(coreName), { ip });
      }
      await ctx.state.setPool({ ...p, networkId: req.NetworkID, coreName, pendingAux: [] });
    }
    await ctx.state.setNetwork({
      networkId: req.NetworkID,
      coreName,
      subnets: plan.subnets,
      mtu: plan.options.mtu,
      ipamPools: pools.map((p) => p.poolId),
      createdAt: new Date().toISOString(),
    });
  } catch (e) {
    if (created) {
      await ctx.core.ipam.releaseOwner(auxOwner(plan.spec.name)).catch(() => undefined);
      await ctx.core.networks.delete(plan.spec.name).catch(() => undefined);
    }
    throw wrap(`cannot create membrane network for Docker network ${short(req.NetworkID)}`, e);
  }
  if (Object.keys(plan.options.foreign).length) {
    ctx.log.info(
      { network: req.NetworkID, ignored: plan.options.foreign },
      'ignoring driver options that are not membrane options',
    );
  }
  ctx.log.info(
    { network: short(req.NetworkID), core: plan.spec.name, subnets: plan.spec.subnets, mtu: plan.options.mtu },
    'docker network created',
  );
  return {};
}

export async function deleteNetwork(ctx: DriverContext, networkId: string): Promise<object> {
  const rec = ctx.state.networks.get(networkId);
  const coreName = rec?.coreName ?? coreNetworkName(networkId);
  // Endpoints dockerd forgot to delete (it crashed, or we were down) must not keep the network alive.
  const stale = new Set([...ctx.state.endpoints.values()].filter((e) => e.networkId === networkId).map((e) => e.endpointId));
  for (const ep of ctx.core.endpoints.list()) if (ep.docker?.networkId === networkId) stale.add(ep.docker.endpointId);
  for (const id of stale) await deleteEndpoint(ctx, networkId, id);
  if (ctx.core.networks.get(coreName)) {
    await ctx.core.ipam.releaseOwner(auxOwner(coreName));
    // Addresses our IPAM handed out and dockerd never released (it releases them before DeleteNetwork).
    for (const pool of ctx.core.ipam.pools().filter((p) => p.name === coreName)) {
      for (const a of pool.allocations.filter((x) => {
        const o = parseOwnerKey(x.owner);
        return o?.kind === 'docker-address' && o.network === coreName;
      })) {
        await ctx.core.ipam.releaseIp(coreName, a.ip);
      }
    }
    try {
      await ctx.core.networks.delete(coreName);
    } catch (e) {
      throw wrap(`cannot delete membrane network ${coreName} of Docker network ${short(networkId)}`, e);
    }
  }
  for (const p of [...ctx.state.pools.values()].filter((x) => x.networkId === networkId)) {
    await ctx.state.setPool({ ...p, networkId: undefined, coreName: undefined });
  }
  if (rec) await ctx.state.deleteNetwork(networkId);
  ctx.log.info({ network: short(networkId), core: coreName }, 'docker network deleted');
  return {};
}

export async function createEndpoint(ctx: DriverContext, req: CreateEndpointRequest): Promise<object> {
  const net = requireNetwork(ctx, req.NetworkID, 'create an endpoint');
  const what = `cannot create endpoint ${short(req.EndpointID)} on Docker network ${short(req.NetworkID)}`;
  const ips = [
    stripPrefix(req.Interface.Address, `${what}: IPv4 address`),
    stripPrefix(req.Interface.AddressIPv6, `${what}: IPv6 address`),
  ].filter(Boolean);
  if (!ips.length) throw new PluginError(`${what}: dockerd sent no address (the network's IPAM gave none)`);
  const ifName = tempIfName(req.EndpointID);
  const existing = ctx.state.endpoints.get(req.EndpointID);
  let ep: Endpoint;
  try {
    ep = await ctx.core.endpoints.create({
      containerId: '',
      docker: { endpointId: req.EndpointID, networkId: req.NetworkID },
      ifName,
      network: net.coreName,
      ips,
      externalIpam: true,
      ...(req.Interface.MacAddress ? { mac: req.Interface.MacAddress } : {}),
      metadata: { 'docker:plugin': ctx.name },
    });
  } catch (e) {
    throw wrap(what, e);
  }
  const rec: EndpointRecord = existing ?? recordOf(ep, req.NetworkID);
  // Not awaited: the record can be rebuilt from the core endpoint (see endpointRecord), so a crash
  // before the write loses nothing, and dockerd does not wait for an fsync.
  saveLater(ctx, ctx.state.setEndpoint(rec), req.EndpointID);
  // Fill only what dockerd left empty (answering a field it set fails the container start).
  return { Interface: req.Interface.MacAddress ? {} : { MacAddress: ep.mac } };
}

export async function deleteEndpoint(ctx: DriverContext, networkId: string, endpointId: string): Promise<object> {
  const rec = ctx.state.endpoints.get(endpointId);
  const ifName = rec?.ifName ?? tempIfName(endpointId);
  try {
    await ctx.core.endpoints.delete(endpointId, ifName);
  } catch (e) {
    throw wrap(`cannot delete endpoint ${short(endpointId)} of Docker network ${short(networkId)}`, e);
  }
  // A record that outlives a crash here is dropped at the next start (the core endpoint is gone).
  if (rec) saveLater(ctx, ctx.state.deleteEndpoint(endpointId), endpointId);
  return {};
}

export function endpointOperInfo(ctx: DriverContext, endpointId: string): object {
  const rec = endpointRecord(ctx, endpointId);
  const ep = rec && ctx.core.endpoints.get(rec.endpointId, rec.ifName);
  if (!rec || !ep) return { Value: {} };
  return {
    Value: {
      'membrane.endpoint-id': String(ep.id),
      'membrane.network': ep.network,
      'membrane.host-interface': ep.hostIfName,
      'membrane.identity': String(ep.identity),
      ...(ep.docker?.containerName ? { 'membrane.container': ep.docker.containerName } : {}),
    },
  };
}

export async function join(ctx: DriverContext, req: JoinRequest): Promise<object> {
  const what = `cannot attach endpoint ${short(req.EndpointID)} of Docker network ${short(req.NetworkID)}`;
  requireNetwork(ctx, req.NetworkID, 'attach a container');
  const rec = endpointRecord(ctx, req.EndpointID);
  const ep = rec && ctx.core.endpoints.get(rec.endpointId, rec.ifName);
  if (!rec || !ep)
    throw new PluginError(
      `${what}: the endpoint does not exist (it was never created, or the agent lost it); restart the container`,
    );
  const v4 = ep.ips.find((i) => i.family === 4);
  const v6 = ep.ips.find((i) => i.family === 6);
  const updated: EndpointRecord = { ...rec, sandboxKey: req.SandboxKey, joined: true };
  saveLater(ctx, ctx.state.setEndpoint(updated), req.EndpointID);
  return {
    InterfaceName: { SrcName: rec.ifName, DstPrefix: 'eth' },
    ...(v4 ? { Gateway: v4.gateway } : {}),
    ...(v6 ? { GatewayIPv6: v6.gateway } : {}),
    ...(v6 ? { StaticRoutes: v6HalfRoutes(v6.subnet, v6.gateway) } : {}),
  };
}

/**
 * dockerd puts the IPv6 address on eth0 with the subnet's prefix, so the container would solicit its
 * peers directly, and the host veth only proxies NDP for the gateway. Two routes for the halves of
 * the subnet via the gateway are more specific than the on-link prefix: all peer traffic goes to the
 * gateway (the host), which routes it by /128, just as proxy ARP does for IPv4. The gateway itself
 * gets an on-link /128 first (RouteType 1, installed with the interface): without it the gateway
 * falls inside the first half, is no longer on-link, and the kernel refuses the second half
 * ("no route to host").
 */
export function v6HalfRoutes(subnet: string, gateway: string): { Destination: string; RouteType: 0 | 1; NextHop?: string }[] {
  const c = parseCidr(subnet);
  if (c.prefix >= 127) return [];
  const half = BigInt(c.bits - c.prefix - 1);
  const lo = formatCidr({ ...c, prefix: c.prefix + 1 });
  const hi = `${bigIntToIp(c.base + (1n << half), 6)}/${c.prefix + 1}`;
  return [
    { Destination: hostPrefix(gateway, 6), RouteType: 1 },
    ...[lo, hi].map((d) => ({ Destination: d, RouteType: 0 as const, NextHop: gateway })),
  ];
}

export async function leave(ctx: DriverContext, endpointId: string): Promise<object> {
  const rec = ctx.state.endpoints.get(endpointId);
  if (rec?.joined) saveLater(ctx, ctx.state.setEndpoint({ ...rec, joined: false }), endpointId);
  return {};
}

/** The plugin's record of an endpoint, rebuilt from the core endpoint if a crash lost the write. */
export function endpointRecord(ctx: DriverContext, endpointId: string): EndpointRecord | undefined {
  const rec = ctx.state.endpoints.get(endpointId);
  if (rec) return rec;
  const ep = ctx.core.endpoints.get(endpointId, tempIfName(endpointId));
  if (!ep?.docker || ep.docker.endpointId !== endpointId) return undefined;
  const rebuilt = recordOf(ep, ep.docker.networkId);
  saveLater(ctx, ctx.state.setEndpoint(rebuilt), endpointId);
  return rebuilt;
}

function recordOf(ep: Endpoint, networkId: string): EndpointRecord {
  return {
    endpointId: ep.docker!.endpointId,
    networkId,
    ifName: ep.ifName,
    addresses: ep.ips.map((i) => addressOnly(i.address)),
    joined: false,
    createdAt: ep.createdAt,
  };
}

function saveLater(ctx: DriverContext, p: Promise<void>, endpointId: string): void {
  p.catch((err) =>
    ctx.log.error({ err, endpoint: endpointId }, 'cannot save docker endpoint state (it is rebuilt from the core at need)'),
  );
}

function requireNetwork(ctx: DriverContext, networkId: string, doing: string) {
  const net = ctx.state.networks.get(networkId);
  if (!net) {
    throw new PluginError(
      `cannot ${doing}: Docker network ${short(networkId)} is unknown to the membrane plugin "${ctx.name}" (its state was lost?); remove it with "docker network rm" and create it again`,
    );
  }
  if (!ctx.core.networks.get(net.coreName)) {
    throw new PluginError(
      `cannot ${doing}: membrane network ${net.coreName} of Docker network ${short(networkId)} is gone from the agent; remove the Docker network and create it again`,
    );
  }
  return net;
}

function describeCoreNetwork(ctx: DriverContext, coreName: string): string {
  const docker = [...ctx.state.networks.values()].find((n) => n.coreName === coreName);
  return docker ? `Docker network ${short(docker.networkId)} (membrane network ${coreName})` : `membrane network "${coreName}"`;
}

export function auxOwner(coreName: string): IpamOwner {
  return { kind: 'docker-aux', network: coreName };
}
