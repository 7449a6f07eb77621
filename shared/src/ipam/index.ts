// Persistent IPAM: pools kept in memory, every allocation made durable (one store key per address)
// before the caller hears about it, so no address is ever handed to two owners, not even across a
// crash. The store group-commits, so concurrent allocations share syncs.
import type { IpamPoolView } from '../types.ts';
import type { Store } from '../store/index.ts';
import * as alloc from './allocator.ts';
import { ownerKey, parseOwnerKey, type IpamOwner } from './owner.ts';
import { cidrContains, normalizeIp, parseCidr, usableCount, type Family } from '../net/index.ts';

export { IpamError } from './allocator.ts';
export { ownerKey, parseOwnerKey, type IpamOwner } from './owner.ts';
export type { PoolDoc, SubnetState } from './allocator.ts';

const POOLS = 'ipam-pools';
const ALLOCS = 'ipam';

export class Ipam {
  private readonly pools = new Map<string, alloc.PoolDoc>();

  private constructor(private readonly store: Store) {}

  static async open(store: Store): Promise<Ipam> {
    const ipam = new Ipam(store);
    for (const { value } of await store.list<{ name: string; subnets: alloc.SubnetState[] }>(POOLS)) {
      const doc: alloc.PoolDoc = { name: value.name, subnets: value.subnets, allocations: {} };
      for (const { key, value: owner } of await store.list<string>(`${ALLOCS}/${value.name}`)) {
        doc.allocations[key.slice(ALLOCS.length + value.name.length + 2)] = owner;
      }
      ipam.pools.set(value.name, doc);
    }
    return ipam;
  }

  has(pool: string): boolean { return this.pools.has(pool); }

  /** Creates the pool, or checks an existing one has the same subnets (idempotent). */
  async ensurePool(name: string, subnets: { cidr: string; gateway: string }[]): Promise<void> {
    const existing = this.pools.get(name);
    if (existing) {
      const want = subnets.map((s) => s.cidr).sort().join(',');
      const have = existing.subnets.map((s) => s.cidr).sort().join(',');
      if (want !== have) throw new alloc.IpamError('bad_request', `pool "${name}" already exists with subnets ${have}`);
      return;
    }
    const doc = { name, subnets: subnets.map((s) => ({ cidr: s.cidr, gateway: normalizeIp(s.gateway) })), allocations: {} };
    this.pools.set(name, doc);
    await this.store.put(`${POOLS}/${name}`, { name, subnets: doc.subnets });
  }

  async deletePool(name: string): Promise<boolean> {
    const doc = this.pools.get(name);
    if (!doc) return false;
    const n = Object.keys(doc.allocations).length;
    if (n > 0) throw new alloc.IpamError('bad_request', `pool "${name}" still has ${n} allocated address(es)`);
    this.pools.delete(name);
    await this.store.delete(`${POOLS}/${name}`);
    return true;
  }

  async allocate(pool: string, owner: IpamOwner, req: { family?: Family; ip?: string } = {}): Promise<{ ip: string; subnet: string; gateway: string }> {
    const doc = this.require(pool);
    const key = ownerKey(owner);
    const { ip, subnet } = alloc.allocate(doc, key, req);
    await this.store.put(allocKey(pool, ip), key);
    return { ip, subnet: subnet.cidr, gateway: subnet.gateway };
  }

  /** Releases everything the owner holds in every pool; idempotent. */
  async releaseOwner(owner: IpamOwner): Promise<number> {
    const key = ownerKey(owner);
    const writes: Promise<unknown>[] = [];
    for (const doc of this.pools.values()) {
      for (const ip of alloc.releaseOwner(doc, key)) writes.push(this.store.delete(allocKey(doc.name, ip)));
    }
    await Promise.all(writes);
    return writes.length;
  }

  async releaseIp(pool: string, ip: string): Promise<boolean> {
    const doc = this.pools.get(pool);
    if (!doc || !alloc.releaseIp(doc, ip)) return false;
    await this.store.delete(allocKey(pool, normalizeIp(ip)));
    return true;
  }

  /** Who holds the address (undefined: free; null: a key this version does not know). */
  ownerOf(pool: string, ip: string): IpamOwner | null | undefined {
    const key = this.pools.get(pool)?.allocations[normalizeIp(ip)];
    return key === undefined ? undefined : parseOwnerKey(key);
  }

  /** Every (pool, ip, owner), for reconciliation against endpoints after a restart (owner null: a key
   *  this version does not know, left alone). */
  allocations(): { pool: string; ip: string; owner: IpamOwner | null }[] {
    const out: { pool: string; ip: string; owner: IpamOwner | null }[] = [];
    for (const doc of this.pools.values()) {
      for (const [ip, key] of Object.entries(doc.allocations)) out.push({ pool: doc.name, ip, owner: parseOwnerKey(key) });
    }
    return out;
  }

  view(): IpamPoolView[] {
    return [...this.pools.values()].map((doc) => {
      const subnets = doc.subnets.map((s) => ({ state: s, cidr: parseCidr(s.cidr) }));
      const subnetOf = (ip: string) => subnets.find((s) => cidrContains(s.cidr, ip))?.state.cidr ?? '';
      const allocations = Object.entries(doc.allocations).map(([ip, owner]) => ({ ip, owner, subnet: subnetOf(ip) }));
      return {
        name: doc.name,
        subnets: subnets.map(({ state, cidr }) => ({
          cidr: state.cidr, gateway: state.gateway,
          size: (usableCount(cidr) - 1n).toString(), // minus the gateway
          allocated: allocations.filter((a) => a.subnet === state.cidr).length,
        })),
        allocations,
      };
    });
  }

  private require(pool: string): alloc.PoolDoc {
    const doc = this.pools.get(pool);
    if (!doc) throw new alloc.IpamError('network_not_found', `IP pool "${pool}" does not exist`);
    return doc;
  }
}

function allocKey(pool: string, ip: string): string {
  return `${ALLOCS}/${pool}/${ip}`;
}
