// libnetwork remote IpamDriver on the core IPAM (`--ipam-driver membrane`). dockerd asks for the pool
// and the gateway before CreateNetwork exists, so pools live in the plugin state until CreateNetwork
// binds them to a core network; container addresses are then allocated by the core IPAM (the endpoint
// is created with externalIpam) and given back in ReleaseAddress.
import crypto from 'node:crypto';
import {
  bigIntToIp,
  cidrContains,
  cidrCovers,
  cidrLast,
  cidrsOverlap,
  defaultGateway,
  familyOf,
  formatCidr,
  isUsable,
  normalizeIp,
  parseCidr,
  usableRange,
  type Family,
} from '../../shared/src/net/index.ts';
import type { DriverContext } from './network-driver.ts';
import type { IpamOwner } from '../../shared/src/ipam/owner.ts';
import type { PoolRecord } from './state.ts';
import type { RequestAddressRequest, RequestPoolRequest } from './schemas.ts';
import { PluginError, short, wrap } from './errors.ts';
import { kindOf } from '../../shared/src/errors.ts';

const GATEWAY_REQUEST = 'com.docker.network.gateway';
/** Most addresses a --ip-range allocation looks at before giving up. */
const SUBPOOL_SCAN_LIMIT = 65536n;

export function capabilities(): object {
  return { RequiresMACAddress: false, RequiresRequestReplay: false };
}

export function defaultAddressSpaces(name: string): object {
  return { LocalDefaultAddressSpace: `${name}-local`, GlobalDefaultAddressSpace: `${name}-global` };
}

export async function requestPool(ctx: DriverContext, req: RequestPoolRequest): Promise<object> {
  const fam: Family = req.V6 ? 6 : 4;
  if (!req.Pool) {
    if (req.SubPool) throw new PluginError(`--ip-range ${req.SubPool} needs a --subnet`);
    throw new PluginError(
      `membrane IPAM needs an explicit IPv${fam} subnet: add --subnet CIDR${fam === 6 ? ' for IPv6 (or drop --ipv6)' : ''} to docker network create`,
    );
  }
  const c = parseOrFail(req.Pool, 'subnet');
  if (c.family !== fam) throw new PluginError(`subnet ${req.Pool} is not an IPv${fam} subnet`);
  const pool = formatCidr(c);
  if (pool !== req.Pool) throw new PluginError(`subnet ${req.Pool} has host bits set (did you mean ${pool}?)`);
  if (c.bits - c.prefix < 2) throw new PluginError(`subnet ${pool} is too small: it needs room for a gateway and containers`);
  let subPool = '';
  if (req.SubPool) {
    const s = parseOrFail(req.SubPool, 'ip range');
    if (!cidrCovers(c, s)) {
      throw new PluginError(`--ip-range ${req.SubPool} is not inside --subnet ${pool}`);
    }
    subPool = formatCidr(s);
  }
  for (const key of Object.keys(req.Options)) {
    if (key.startsWith('membrane.'))
      throw new PluginError(`unknown IPAM option --ipam-opt ${key}; the ${ctx.name} IPAM driver has none`);
  }
  const addressSpace = req.AddressSpace || `${ctx.name}-local`;
  const poolId = `${addressSpace}/${pool}`;
  for (const other of ctx.state.pools.values()) {
    if (other.poolId === poolId && !other.networkId) continue; // left over by an interrupted create: reuse
    if (cidrsOverlap(c, parseCidr(other.pool))) {
      const owner = other.networkId ? `Docker network ${short(other.networkId)}` : 'a network being created';
      throw new PluginError(
        `subnet ${pool} overlaps subnet ${other.pool} of ${owner}; pick a --subnet that no other network uses`,
      );
    }
  }
  for (const n of ctx.core.networks.list()) {
    for (const s of n.subnets) {
      if (cidrsOverlap(c, parseCidr(s.cidr))) {
        throw new PluginError(
          `subnet ${pool} overlaps subnet ${s.cidr} of membrane network "${n.name}"; pick a --subnet that no other network uses`,
        );
      }
    }
  }
  const rec: PoolRecord = {
    poolId,
    addressSpace,
    pool,
    subPool,
    v6: req.V6,
    options: req.Options,
    pendingAux: [],
    createdAt: new Date().toISOString(),
  };
  await ctx.state.setPool(rec);
  return { PoolID: poolId, Pool: pool, Data: {} };
}

export async function releasePool(ctx: DriverContext, poolId: string): Promise<object> {
  if (ctx.state.pools.has(poolId)) await ctx.state.deletePool(poolId);
  return {};
}

export async function requestAddress(ctx: DriverContext, req: RequestAddressRequest): Promise<object> {
  const pool = requirePool(ctx, req.PoolID);
  const c = parseCidr(pool.pool);
  const answer = (ip: string) => ({ Address: `${ip}/${c.prefix}`, Data: {} });
  let wanted = '';
  if (req.Address) {
    if (familyOf(req.Address) !== c.family) throw new PluginError(`address ${req.Address} is not an IPv${c.family} address`);
    wanted = normalizeIp(req.Address);
    if (!cidrContains(c, wanted)) throw new PluginError(`address ${wanted} is outside subnet ${pool.pool}`);
    if (!isUsable(c, wanted)) throw new PluginError(`address ${wanted} is the network or broadcast address of ${pool.pool}`);
  }
  if (req.Options.RequestAddressType === GATEWAY_REQUEST) {
    if (pool.coreName) {
      const gw = ctx.core.networks.get(pool.coreName)?.subnets.find((s) => s.cidr === pool.pool)?.gateway;
      if (gw && (!wanted || wanted === gw)) return answer(gw);
    }
    const gw = wanted || defaultGateway(c);
    await ctx.state.setPool({ ...pool, gateway: gw });
    return answer(gw);
  }
  if (!pool.coreName) {
    // Before CreateNetwork the only non-gateway requests are --aux-address reservations.
    if (!wanted) throw new PluginError(`pool ${pool.pool} belongs to no network yet, so it cannot hand out addresses`);
    if (wanted === pool.gateway) throw new PluginError(`aux address ${wanted} is the gateway of ${pool.pool}`);
    if (!pool.pendingAux.includes(wanted)) await ctx.state.setPool({ ...pool, pendingAux: [...pool.pendingAux, wanted] });
    return answer(wanted);
  }
  const owner: IpamOwner = { kind: 'docker-address', network: pool.coreName, lease: crypto.randomBytes(4).toString('hex') };
  const what = `cannot allocate an address in subnet ${pool.pool} of Docker network ${short(pool.networkId ?? '')}`;
  try {
    if (wanted) {
      try {
        return answer((await ctx.core.ipam.allocate(pool.coreName, owner, { ip: wanted })).ip);
      } catch (e) {
        if (kindOf(e) === 'address_in_use')
          throw new PluginError(`${what}: address ${wanted} is already in use on this network (pick another --ip)`);
        throw e;
      }
    }
    if (pool.subPool) return answer(await allocateInRange(ctx, pool, owner));
    return answer((await ctx.core.ipam.allocate(pool.coreName, owner, { family: c.family })).ip);
  } catch (e) {
    throw wrap(what, e);
  }
}

/** --ip-range: the first free address of the sub-range (the core allocator knows only whole subnets). */
async function allocateInRange(ctx: DriverContext, pool: PoolRecord, owner: IpamOwner): Promise<string> {
  const coreName = pool.coreName!;
  const sub = parseCidr(pool.subPool);
  const whole = usableRange(parseCidr(pool.pool));
  // The whole sub-range counts (as with Docker's own IPAM), minus the subnet's reserved addresses.
  const subLast = cidrLast(sub);
  // biome-ignore lint/complexity/useMathMinMax: BigInt, which Math.max does not take
  const first = sub.base > whole.first ? sub.base : whole.first;
  // biome-ignore lint/complexity/useMathMinMax: BigInt, which Math.min does not take
  const last = subLast < whole.last ? subLast : whole.last;
  const taken = new Set(
    ctx.core.ipam
      .pools()
      .filter((p) => p.name === coreName)
      .flatMap((p) => p.allocations.map((a) => a.ip)),
  );
  const gw = ctx.core.networks.get(coreName)?.subnets.find((s) => s.cidr === pool.pool)?.gateway;
  if (gw) taken.add(gw);
  let tries = 0n;
  for (let n = first; n <= last && tries < SUBPOOL_SCAN_LIMIT; n++, tries++) {
    const ip = bigIntToIp(n, sub.family);
    if (taken.has(ip)) continue;
    try {
      return (await ctx.core.ipam.allocate(coreName, owner, { ip })).ip;
    } catch (e) {
      if (kindOf(e) !== 'address_in_use') throw e;
    }
  }
  throw new PluginError(`no free address left in --ip-range ${pool.subPool} of subnet ${pool.pool}`);
}

export async function releaseAddress(ctx: DriverContext, poolId: string, address: string): Promise<object> {
  const pool = ctx.state.pools.get(poolId);
  if (!pool) return {};
  if (!familyOf(address)) throw new PluginError(`cannot release "${address}" from pool ${pool.pool}: not an IP address`);
  const ip = normalizeIp(address);
  if (ip === pool.gateway) return {}; // the core network owns its gateway; it goes with the network
  if (!pool.coreName) {
    if (pool.pendingAux.includes(ip)) await ctx.state.setPool({ ...pool, pendingAux: pool.pendingAux.filter((a) => a !== ip) });
    return {};
  }
  try {
    await ctx.core.ipam.releaseIp(pool.coreName, ip);
  } catch (e) {
    if (kindOf(e) !== 'network_not_found') throw wrap(`cannot release address ${ip} of subnet ${pool.pool}`, e);
  }
  return {};
}

function requirePool(ctx: DriverContext, poolId: string): PoolRecord {
  const pool = ctx.state.pools.get(poolId);
  if (!pool)
    throw new PluginError(
      `address pool ${poolId} is unknown to the ${ctx.name} IPAM driver (its state was lost?); remove the Docker network and create it again`,
    );
  return pool;
}

function parseOrFail(text: string, what: string) {
  try {
    return parseCidr(text);
  } catch (e) {
    throw new PluginError(`invalid ${what}: ${(e as Error).message}`);
  }
}
