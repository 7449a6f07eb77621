// Pure allocation logic over one pool's document. No I/O: the persistent IPAM wraps it.
import {
  bigIntToIp,
  cidrContains,
  familyOf,
  ipToBigInt,
  isUsable,
  normalizeIp,
  parseCidr,
  usableRange,
  type Family,
} from '../net/index.ts';
import { MembraneError } from '../errors.ts';

export interface SubnetState {
  cidr: string;
  gateway: string;
  /** Next-fit cursor: the last address handed out, so released addresses are not reused at once. */
  last?: string;
}

export interface PoolDoc {
  name: string;
  subnets: SubnetState[];
  /** ip -> owner. The single source of truth: an address is free iff it is not a key here. */
  allocations: Record<string, string>;
}

export type IpamErrorCode = 'pool_exhausted' | 'address_in_use' | 'address_out_of_range' | 'network_not_found' | 'bad_request';

export class IpamError extends MembraneError<IpamErrorCode> {
  override readonly name = 'IpamError';
}

export function subnetFor(doc: PoolDoc, family: Family): SubnetState | undefined {
  return doc.subnets.find((s) => parseCidr(s.cidr).family === family);
}

/** owner -> its addresses, per pool document: built from `allocations` on first use, then kept by
 *  every write (setAllocation, deleteAllocation), so finding what an owner holds does not walk every
 *  allocation of the pool on each ADD. */
const owners = new WeakMap<PoolDoc, Map<string, Set<string>>>();

function ownerIndex(doc: PoolDoc): Map<string, Set<string>> {
  let index = owners.get(doc);
  if (!index) {
    index = new Map();
    for (const [ip, owner] of Object.entries(doc.allocations)) {
      let ips = index.get(owner);
      if (!ips) index.set(owner, (ips = new Set()));
      ips.add(ip);
    }
    owners.set(doc, index);
  }
  return index;
}

/** Records ip -> owner (every write of `allocations` goes through here or deleteAllocation). */
export function setAllocation(doc: PoolDoc, ip: string, owner: string): void {
  const prev = doc.allocations[ip];
  if (prev === owner) return;
  if (prev !== undefined) deleteAllocation(doc, ip);
  doc.allocations[ip] = owner;
  const index = owners.get(doc);
  if (!index) return; // built from `allocations` when first needed
  let ips = index.get(owner);
  if (!ips) index.set(owner, (ips = new Set()));
  ips.add(ip);
}

export function deleteAllocation(doc: PoolDoc, ip: string): void {
  const owner = doc.allocations[ip];
  if (owner === undefined) return;
  delete doc.allocations[ip];
  const ips = owners.get(doc)?.get(owner);
  if (!ips) return;
  ips.delete(ip);
  if (!ips.size) owners.get(doc)!.delete(owner);
}

/** The addresses an owner holds in this pool. */
export function ownedBy(doc: PoolDoc, owner: string): string[] {
  return [...(ownerIndex(doc).get(owner) ?? [])].filter((ip) => doc.allocations[ip] === owner);
}

/** Address the owner already holds in this family, so a retried request gets the same answer. */
export function heldBy(doc: PoolDoc, owner: string, family: Family): string | undefined {
  return ownedBy(doc, owner).find((ip) => familyOf(ip) === family);
}

/** What an allocation changed in `doc`, so a failed write can undo it (`fresh`: newly recorded). */
export interface Allocation {
  ip: string;
  subnet: SubnetState;
  fresh: boolean;
  /** The next-fit cursor before a picked (not requested) address moved it. */
  lastBefore?: string;
}

/** Why a free address may not be handed out yet (undefined: it may). Cluster mode's: an address whose
 *  withdrawal the other nodes may not have seen (cluster/ipcache.ts quarantined). */
export type HoldCheck = (ip: string) => string | undefined;

/** Picks an address and records it in `doc`. Throws IpamError naming the pool. */
export function allocate(doc: PoolDoc, owner: string, req: { family?: Family; ip?: string }, hold?: HoldCheck): Allocation {
  if (req.ip !== undefined) return allocateRequested(doc, owner, req.ip, hold);
  const family = req.family ?? 4;
  const subnet = subnetFor(doc, family);
  if (!subnet) throw new IpamError('bad_request', `pool "${doc.name}" has no IPv${family} subnet`);
  const held = heldBy(doc, owner, family);
  if (held) return { ip: held, subnet, fresh: false };

  const c = parseCidr(subnet.cidr);
  const { first, last } = usableRange(c);
  const gateway = ipToBigInt(subnet.gateway);
  const span = last - first + 1n;
  let cursor = subnet.last && cidrContains(c, subnet.last) ? ipToBigInt(subnet.last) + 1n : first;
  // One pass over the range starting after the cursor; bounded by span so a full pool ends the loop.
  const limit = span < 1_000_000n ? span : 1_000_000n;
  let heldReason: string | undefined;
  for (let i = 0n; i < limit; i++) {
    if (cursor > last || cursor < first) cursor = first;
    if (cursor !== gateway) {
      const ip = bigIntToIp(cursor, c.family);
      if (!(ip in doc.allocations)) {
        const why = hold?.(ip);
        if (why) heldReason ??= why;
        else {
          const lastBefore = subnet.last;
          setAllocation(doc, ip, owner);
          subnet.last = ip;
          return { ip, subnet, fresh: true, ...(lastBefore ? { lastBefore } : {}) };
        }
      }
    }
    cursor++;
  }
  // The only free addresses are held: a retry succeeds once their hold ends (CNI: try again later).
  if (heldReason) throw new IpamError('address_in_use', `IP pool "${doc.name}": no free address that is not held: ${heldReason}`);
  throw new IpamError(
    'pool_exhausted',
    `IP pool "${doc.name}" is exhausted: no free IPv${family} address left in ${subnet.cidr}`,
  );
}

function allocateRequested(doc: PoolDoc, owner: string, requested: string, hold?: HoldCheck): Allocation {
  const family = familyOf(requested);
  if (!family) throw new IpamError('bad_request', `requested address "${requested}" is not an IP address`);
  const ip = normalizeIp(requested);
  const subnet = doc.subnets.find((s) => cidrContains(parseCidr(s.cidr), ip));
  if (!subnet) {
    throw new IpamError(
      'address_out_of_range',
      `address ${ip} is outside pool "${doc.name}" (${doc.subnets.map((s) => s.cidr).join(', ')})`,
    );
  }
  if (!isUsable(parseCidr(subnet.cidr), ip))
    throw new IpamError('address_out_of_range', `address ${ip} is reserved in ${subnet.cidr} (network or broadcast address)`);
  if (ip === normalizeIp(subnet.gateway))
    throw new IpamError('address_in_use', `address ${ip} is the gateway of pool "${doc.name}"`);
  const current = doc.allocations[ip];
  if (current !== undefined && current !== owner) {
    throw new IpamError('address_in_use', `address ${ip} in pool "${doc.name}" is already allocated to ${current}`);
  }
  if (current === owner) return { ip, subnet, fresh: false };
  const why = hold?.(ip);
  if (why) throw new IpamError('address_in_use', why);
  setAllocation(doc, ip, owner);
  return { ip, subnet, fresh: true };
}

/** Undoes an allocation whose write failed. */
export function undoAllocation(doc: PoolDoc, a: Allocation): void {
  if (!a.fresh) return;
  deleteAllocation(doc, a.ip);
  if (a.subnet.last === a.ip) {
    if (a.lastBefore === undefined) delete a.subnet.last;
    else a.subnet.last = a.lastBefore;
  }
}

export function releaseOwner(doc: PoolDoc, owner: string): string[] {
  const freed = ownedBy(doc, owner);
  for (const ip of freed) deleteAllocation(doc, ip);
  return freed;
}

export function releaseIp(doc: PoolDoc, ip: string): boolean {
  const key = familyOf(ip) ? normalizeIp(ip) : ip;
  if (!(key in doc.allocations)) return false;
  deleteAllocation(doc, key);
  return true;
}
