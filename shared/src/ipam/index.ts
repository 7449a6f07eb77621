// Persistent IPAM: pools kept in memory, every allocation made durable (one store key per address)
// before the caller hears about it, so no address is ever handed to two owners, not even across a
// crash. The store group-commits, so concurrent allocations share syncs. Memory changes at once (so a
// concurrent allocation never picks the same address) and is put back when the write fails.
//
// Addresses an IPAM outside the agent handed out (a delegated CNI IPAM plugin's own range) that lie
// in no pool are recorded as external reservations: the node knows every address its endpoints use.
import type { IpamPoolView } from '../types.ts';
import type { Store } from '../store/index.ts';
import * as alloc from './allocator.ts';
import { ownerKey, parseOwnerKey, type IpamOwner } from './owner.ts';
import { cidrContains, familyOf, normalizeIp, parseCidr, usableCount, type Family } from '../net/index.ts';

export { IpamError } from './allocator.ts';
export { ownerKey, parseOwnerKey, type IpamOwner } from './owner.ts';
export type { PoolDoc, SubnetState } from './allocator.ts';

const POOLS = 'ipam-pools';
const ALLOCS = 'ipam';
const EXTERNAL = 'ipam-external';
/** Cluster mode: addresses released while held (value: when), so a crash does not end their hold. */
const HELD = 'ipam-held';

export class Ipam {
  private readonly pools = new Map<string, alloc.PoolDoc>();
  /** ip -> owner key of addresses outside every pool (delegated IPAM). */
  private readonly external = new Map<string, string>();
  /** Cluster mode: released addresses the other nodes may still take for their old endpoint. */
  private held?: alloc.HoldCheck;
  /** Told of each address as it is freed in memory (before its write): the hold starts there. */
  private onRelease?: (ip: string) => void;
  /** Addresses with a record under HELD. */
  private readonly heldOnDisk = new Set<string>();

  private constructor(private readonly store: Store) {}

  /** Cluster mode: free addresses `check` names a reason for are not handed out (a requested one is
   *  refused with address_in_use and that reason). Single-node mode has none: a released address
   *  may be reused at once. */
  holdReleased(check: alloc.HoldCheck, onRelease?: (ip: string) => void): void {
    this.onRelease = onRelease;
    // Each release also leaves a record on disk (releaseOwner), dropped once the address is free of
    // its hold: an agent killed before the hold ended restores it (restoredHolds) instead of handing
    // the address out at once while the other nodes may still map it to the endpoint that had it.
    this.held = (ip) => {
      const why = check(ip);
      if (!why && this.heldOnDisk.delete(ip)) void this.store.delete(`${HELD}/${ip}`).catch(() => undefined);
      return why;
    };
  }

  /** Addresses an earlier run released in cluster mode whose hold may not have ended. */
  restoredHolds(): string[] {
    return [...this.heldOnDisk];
  }

  static async open(store: Store): Promise<Ipam> {
    const ipam = new Ipam(store);
    for (const { value } of await store.list<{ name: string; subnets: alloc.SubnetState[] }>(POOLS)) {
      const doc: alloc.PoolDoc = { name: value.name, subnets: value.subnets, allocations: {} };
      for (const { key, value: owner } of await store.list<string>(`${ALLOCS}/${value.name}`)) {
        alloc.setAllocation(doc, key.slice(ALLOCS.length + value.name.length + 2), owner);
      }
      ipam.pools.set(value.name, doc);
    }
    for (const { key, value: owner } of await store.list<string>(EXTERNAL))
      ipam.external.set(key.slice(EXTERNAL.length + 1), owner);
    for (const { key } of await store.list(HELD)) ipam.heldOnDisk.add(key.slice(HELD.length + 1));
    return ipam;
  }

  has(pool: string): boolean {
    return this.pools.has(pool);
  }

  /** Creates the pool, or checks an existing one has the same subnets (idempotent). */
  async ensurePool(name: string, subnets: { cidr: string; gateway: string }[]): Promise<void> {
    const existing = this.pools.get(name);
    if (existing) {
      const want = subnets
        .map((s) => s.cidr)
        .sort()
        .join(',');
      const have = existing.subnets
        .map((s) => s.cidr)
        .sort()
        .join(',');
      if (want !== have) throw new alloc.IpamError('bad_request', `pool "${name}" already exists with subnets ${have}`);
      return;
    }
    const doc = { name, subnets: subnets.map((s) => ({ cidr: s.cidr, gateway: normalizeIp(s.gateway) })), allocations: {} };
    this.pools.set(name, doc);
    try {
      await this.store.put(`${POOLS}/${name}`, { name, subnets: doc.subnets });
    } catch (e) {
      if (this.pools.get(name) === doc) this.pools.delete(name);
      throw e;
    }
  }

  async deletePool(name: string): Promise<boolean> {
    const doc = this.pools.get(name);
    if (!doc) return false;
    const n = Object.keys(doc.allocations).length;
    if (n > 0) throw new alloc.IpamError('bad_request', `pool "${name}" still has ${n} allocated address(es)`);
    this.pools.delete(name);
    try {
      await this.store.delete(`${POOLS}/${name}`);
    } catch (e) {
      if (!this.pools.has(name)) this.pools.set(name, doc);
      throw e;
    }
    return true;
  }

  async allocate(
    pool: string,
    owner: IpamOwner,
    req: { family?: Family; ip?: string } = {},
  ): Promise<{ ip: string; subnet: string; gateway: string }> {
    const doc = this.require(pool);
    const key = ownerKey(owner);
    const a = alloc.allocate(doc, key, req, this.held);
    if (a.fresh) {
      try {
        await this.store.put(allocKey(pool, a.ip), key);
      } catch (e) {
        alloc.undoAllocation(doc, a);
        throw e;
      }
    }
    return { ip: a.ip, subnet: a.subnet.cidr, gateway: a.subnet.gateway };
  }

  /** The pool whose subnets contain `ip`, if any (pools never overlap). */
  poolContaining(ip: string): string | undefined {
    for (const doc of this.pools.values()) {
      if (doc.subnets.some((s) => cidrContains(parseCidr(s.cidr), ip))) return doc.name;
    }
    return undefined;
  }

  /** Records an address that lies in no pool (a delegated IPAM's) for `owner`; address_in_use when
   *  another owner holds it. */
  async reserveExternal(ip: string, owner: IpamOwner): Promise<void> {
    const addr = normalizeIp(ip);
    const key = ownerKey(owner);
    if (this.poolContaining(addr))
      throw new alloc.IpamError('bad_request', `address ${addr} lies in pool "${this.poolContaining(addr)}": allocate it there`);
    const current = this.external.get(addr);
    if (current === key) return;
    if (current !== undefined)
      throw new alloc.IpamError('address_in_use', `address ${addr} is already in use on this node (held by ${current})`);
    const why = this.held?.(addr);
    if (why) throw new alloc.IpamError('address_in_use', why);
    this.external.set(addr, key);
    try {
      await this.store.put(`${EXTERNAL}/${addr}`, key);
    } catch (e) {
      if (this.external.get(addr) === key) this.external.delete(addr);
      throw e;
    }
  }

  /** Releases everything the owner holds in every pool and outside them; idempotent. */
  async releaseOwner(owner: IpamOwner): Promise<number> {
    const key = ownerKey(owner);
    const freed: { doc?: alloc.PoolDoc; ip: string }[] = [];
    for (const doc of this.pools.values()) for (const ip of alloc.releaseOwner(doc, key)) freed.push({ doc, ip });
    for (const [ip, o] of this.external)
      if (o === key) {
        this.external.delete(ip);
        freed.push({ ip });
      }
    if (this.onRelease) for (const f of freed) this.onRelease(f.ip);
    try {
      await this.writeRelease(
        freed.map((f) => (f.doc ? allocKey(f.doc.name, f.ip) : `${EXTERNAL}/${f.ip}`)),
        freed.map((f) => f.ip),
      );
    } catch (e) {
      // Not released on disk: not released at all (a later release or the restart's reconciliation frees them).
      for (const f of freed) {
        if (f.doc) {
          if (!(f.ip in f.doc.allocations)) alloc.setAllocation(f.doc, f.ip, key);
        } else if (!this.external.has(f.ip)) this.external.set(f.ip, key);
      }
      throw e;
    }
    return freed.length;
  }

  async releaseIp(pool: string, ip: string): Promise<boolean> {
    const doc = this.pools.get(pool);
    const addr = familyOf(ip) ? normalizeIp(ip) : ip;
    const owner = doc?.allocations[addr];
    if (!doc || owner === undefined || !alloc.releaseIp(doc, ip)) return false;
    this.onRelease?.(addr);
    try {
      await this.writeRelease([allocKey(pool, addr)], [addr]);
    } catch (e) {
      if (!(addr in doc.allocations)) alloc.setAllocation(doc, addr, owner);
      throw e;
    }
    return true;
  }

  /** Deletes the allocation keys; while releases are held, records the addresses under HELD in the
   *  same journal record (both or neither after a crash). A freeing batch: a full disk lets it in. */
  private async writeRelease(keys: string[], ips: string[]): Promise<void> {
    if (!this.held || !this.store.batch) {
      await Promise.all(keys.map((k) => this.store.delete(k)));
      return;
    }
    const at = Date.now();
    await this.store.batch(
      [
        ...keys.map((key) => ({ op: 'del' as const, key })),
        ...ips.map((ip) => ({ op: 'put' as const, key: `${HELD}/${ip}`, value: at })),
      ],
      { freeing: true },
    );
    for (const ip of ips) this.heldOnDisk.add(ip);
  }

  /** Who holds the address (undefined: free; null: a key this version does not know). */
  ownerOf(pool: string, ip: string): IpamOwner | null | undefined {
    const key = this.pools.get(pool)?.allocations[normalizeIp(ip)];
    return key === undefined ? undefined : parseOwnerKey(key);
  }

  /** Who holds an address outside every pool (undefined: nobody). */
  externalOwnerOf(ip: string): IpamOwner | null | undefined {
    const key = this.external.get(normalizeIp(ip));
    return key === undefined ? undefined : parseOwnerKey(key);
  }

  /** Every (pool, ip, owner), for reconciliation against endpoints after a restart (owner null: a key
   *  this version does not know, left alone). External reservations have pool null. */
  allocations(): { pool: string | null; ip: string; owner: IpamOwner | null }[] {
    const out: { pool: string | null; ip: string; owner: IpamOwner | null }[] = [];
    for (const doc of this.pools.values()) {
      for (const [ip, key] of Object.entries(doc.allocations)) out.push({ pool: doc.name, ip, owner: parseOwnerKey(key) });
    }
    for (const [ip, key] of this.external) out.push({ pool: null, ip, owner: parseOwnerKey(key) });
    return out;
  }

  /** Addresses outside every pool and their owners (the API's view). */
  externalView(): { ip: string; owner: string }[] {
    return [...this.external].map(([ip, owner]) => ({ ip, owner })).sort((a, b) => a.ip.localeCompare(b.ip));
  }

  view(): IpamPoolView[] {
    return [...this.pools.values()].map((doc) => {
      const subnets = doc.subnets.map((s) => ({ state: s, cidr: parseCidr(s.cidr) }));
      const subnetOf = (ip: string) => subnets.find((s) => cidrContains(s.cidr, ip))?.state.cidr ?? '';
      const allocations = Object.entries(doc.allocations).map(([ip, owner]) => ({ ip, owner, subnet: subnetOf(ip) }));
      return {
        name: doc.name,
        subnets: subnets.map(({ state, cidr }) => ({
          cidr: state.cidr,
          gateway: state.gateway,
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
