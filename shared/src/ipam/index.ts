// Persistent IPAM: pools kept in memory, every change made durable (group-committed) before the
// caller hears about it, so no address is ever handed to two owners, not even across a crash.
import type { Family, IpamPoolView } from '../types.ts';
import type { Store } from '../store/index.ts';
import * as alloc from './allocator.ts';
import { cidrSize, normalizeIp, parseCidr, usableCount } from './cidr.ts';

export { IpamError } from './allocator.ts';
export type { PoolDoc, SubnetState } from './allocator.ts';

const PREFIX = 'ipam';

export class Ipam {
  private readonly pools = new Map<string, alloc.PoolDoc>();
  private readonly writers = new Map<string, GroupCommit>();

  private constructor(private readonly store: Store) {}

  static async open(store: Store): Promise<Ipam> {
    const ipam = new Ipam(store);
    for (const { value } of await store.list<alloc.PoolDoc>(PREFIX)) ipam.pools.set(value.name, value);
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
    this.pools.set(name, { name, subnets: subnets.map((s) => ({ cidr: s.cidr, gateway: normalizeIp(s.gateway) })), allocations: {} });
    await this.persist(name);
  }

  async deletePool(name: string): Promise<boolean> {
    const doc = this.pools.get(name);
    if (!doc) return false;
    const n = Object.keys(doc.allocations).length;
    if (n > 0) throw new alloc.IpamError('bad_request', `pool "${name}" still has ${n} allocated address(es)`);
    this.pools.delete(name);
    await this.store.delete(`${PREFIX}/${name}`);
    return true;
  }

  async allocate(pool: string, owner: string, req: { family?: Family; ip?: string } = {}): Promise<{ ip: string; subnet: string; gateway: string }> {
    const doc = this.require(pool);
    const { ip, subnet } = alloc.allocate(doc, owner, req);
    await this.persist(pool);
    return { ip, subnet: subnet.cidr, gateway: subnet.gateway };
  }

  /** Releases everything the owner holds in every pool; idempotent. */
  async releaseOwner(owner: string): Promise<number> {
    let total = 0;
    const touched: string[] = [];
    for (const doc of this.pools.values()) {
      const freed = alloc.releaseOwner(doc, owner);
      if (freed.length) { total += freed.length; touched.push(doc.name); }
    }
    await Promise.all(touched.map((p) => this.persist(p)));
    return total;
  }

  async releaseIp(pool: string, ip: string): Promise<boolean> {
    const doc = this.pools.get(pool);
    if (!doc || !alloc.releaseIp(doc, ip)) return false;
    await this.persist(pool);
    return true;
  }

  ownerOf(pool: string, ip: string): string | undefined {
    return this.pools.get(pool)?.allocations[normalizeIp(ip)];
  }

  /** Every (pool, ip, owner), for reconciliation against endpoints after a restart. */
  allocations(): { pool: string; ip: string; owner: string }[] {
    const out: { pool: string; ip: string; owner: string }[] = [];
    for (const doc of this.pools.values()) {
      for (const [ip, owner] of Object.entries(doc.allocations)) out.push({ pool: doc.name, ip, owner });
    }
    return out;
  }

  view(): IpamPoolView[] {
    return [...this.pools.values()].map((doc) => ({
      name: doc.name,
      subnets: doc.subnets.map((s) => {
        const c = parseCidr(s.cidr);
        return {
          cidr: s.cidr, gateway: s.gateway,
          size: (usableCount(c) - 1n).toString(), // minus the gateway
          allocated: Object.keys(doc.allocations).filter((ip) => cidrSize(c) > 0n && isIn(c, ip)).length,
        };
      }),
      allocations: Object.entries(doc.allocations).map(([ip, owner]) => ({ ip, owner, subnet: subnetOf(doc, ip) })),
    }));
  }

  private require(pool: string): alloc.PoolDoc {
    const doc = this.pools.get(pool);
    if (!doc) throw new alloc.IpamError('network_not_found', `IP pool "${pool}" does not exist`);
    return doc;
  }

  private persist(pool: string): Promise<void> {
    let w = this.writers.get(pool);
    if (!w) {
      w = new GroupCommit(async () => {
        const doc = this.pools.get(pool);
        if (doc) await this.store.put(`${PREFIX}/${pool}`, doc);
      });
      this.writers.set(pool, w);
    }
    return w.commit();
  }
}

function isIn(c: ReturnType<typeof parseCidr>, ip: string): boolean {
  try {
    const n = BigInt(0) + ipToBig(ip, c.family);
    return n >= c.base && n < c.base + cidrSize(c);
  } catch { return false; }
}

function ipToBig(ip: string, family: Family): bigint {
  if ((ip.includes(':') ? 6 : 4) !== family) throw new Error('family');
  return parseCidr(`${ip}/${family === 4 ? 32 : 128}`).base;
}

function subnetOf(doc: alloc.PoolDoc, ip: string): string {
  return doc.subnets.find((s) => isIn(parseCidr(s.cidr), ip))?.cidr ?? '';
}

/**
 * Coalesces writes: every commit() resolves after a write that started after the call, so it covers
 * every change made before it; callers arriving during a write share the next one.
 */
export class GroupCommit {
  private inFlight: Promise<void> | null = null;
  private next: Promise<void> | null = null;

  constructor(private readonly write: () => Promise<void>) {}

  commit(): Promise<void> {
    if (!this.inFlight) {
      this.inFlight = this.write().finally(() => { this.inFlight = null; });
      return this.inFlight;
    }
    if (!this.next) {
      const after = this.inFlight.catch(() => undefined);
      this.next = after.then(() => {
        this.next = null;
        return this.commit();
      });
    }
    return this.next;
  }
}
