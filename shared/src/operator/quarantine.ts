// A gone node's pod-CIDR blocks are not handed to another node at once. Native routing classifies a
// packet from another node by its source address's ipcache entry alone, and the other nodes drop the
// gone node's entries only when their watch delivers the deletes: a node that is slow or cut off from
// the store keeps mapping the gone node's addresses to its pods' identities. A new node given the
// block at once could give those addresses to its own pods, which would then pass that node's policy
// as the gone pods. So a freed block is quarantined: a key of its own (podcidrs/quarantine/, naming
// the gone node; a later leader finds it) until no ipcache entry in the block is left in the store,
// then for the grace period (--pod-cidr-quarantine). The same node coming back may take its own block
// at once (the addresses are its own; its agent holds the ones it released, ipam/index.ts).
import type { Compare, Kv, Op } from '../kvstore/kv.ts';
import { blockCidr, type Layout } from '../kvstore/layout.ts';
import type { SessionLog } from '../kvstore/session.ts';
import { cidrContains, familyOf, parseCidr, type Cidr } from '../net/index.ts';
import type { PodCidrPool } from './podcidr.ts';

/** The pool's owner name of a quarantined block: no node name has a '~' (layout.ts NODE_NAME). */
const owner = (node: string) => `~quarantine:${node}`;

export interface BlockQuarantineOptions {
  kv: Kv;
  layout: Layout;
  guard: Compare;
  pools: { ipv4?: PodCidrPool; ipv6?: PodCidrPool };
  graceMs: number;
  log: SessionLog;
}

interface Held {
  node: string;
  cidr: Cidr;
  /** Since when the store has had no ipcache entry in the block (undefined: it still has some). */
  clearSince?: number;
}

export class BlockQuarantine {
  private readonly held = new Map<string, Held>();
  readonly stats = { quarantined: 0, released: 0 };

  constructor(private readonly o: BlockQuarantineOptions) {}

  get size(): number {
    return this.held.size;
  }

  private poolOf(cidr: string): PodCidrPool | undefined {
    return cidr.includes(':') ? this.o.pools.ipv6 : this.o.pools.ipv4;
  }

  /** The quarantines an earlier leader left (their grace starts again: when it began is not kept). */
  async load(): Promise<void> {
    const { items } = await this.o.kv.list(this.o.layout.podCidrQuarantines);
    for (const it of items) {
      const cidr = blockCidr(it.key.slice(this.o.layout.podCidrQuarantines.length).split('/')[1] ?? '');
      const pool = this.poolOf(cidr);
      if (!pool?.contains(cidr)) continue;
      this.held.set(cidr, { node: it.value, cidr: parseCidr(cidr) });
      pool.markTaken(cidr, owner(it.value));
    }
  }

  /** What removing `node` writes besides freeing its blocks: one quarantine key per block. */
  ops(node: string, cidrs: string[]): Op[] {
    return cidrs.map((c) => ({ type: 'put' as const, key: this.o.layout.podCidrQuarantine(c), value: node }));
  }

  /** The removal's transaction succeeded: the blocks stay taken in the pools, by the quarantine. */
  added(node: string, cidrs: string[]): void {
    for (const c of cidrs) {
      this.held.set(c, { node, cidr: parseCidr(c) });
      this.poolOf(c)?.markTaken(c, owner(node));
      this.stats.quarantined++;
    }
    if (cidrs.length) this.o.log.info({ node, blocks: cidrs, graceMs: this.o.graceMs }, 'pod CIDR quarantined');
  }

  /** The gone node whose quarantined block `cidr` is, if any. */
  nodeOf(cidr: string): string | undefined {
    return this.held.get(cidr)?.node;
  }

  /** What allocating `cidr` to `node` adds to the transaction: the returning node takes its own
   *  quarantined block back (the key goes); any other node only while there is no quarantine key
   *  (the store judges, not this leader's memory). */
  allocation(node: string, cidr: string): { compare: Compare[]; ops: Op[] } {
    const key = this.o.layout.podCidrQuarantine(cidr);
    if (this.held.get(cidr)?.node === node) return { compare: [], ops: [{ type: 'delete', key }] };
    return { compare: [{ key, target: 'version', result: '=', value: 0 }], ops: [] };
  }

  /** The allocation of a quarantined block to its own node succeeded. */
  reclaimed(cidr: string): void {
    this.held.delete(cidr);
  }

  /** Ends the quarantines whose blocks have had no ipcache entry for the grace period; how many. */
  async check(now = Date.now()): Promise<number> {
    if (!this.held.size) return 0;
    let ended = 0;
    const L = this.o.layout;
    const { items } = await this.o.kv.list(L.ipcache, { keysOnly: true });
    const addrs = items.map((i) => i.key.slice(L.ipcache.length)).filter((a) => familyOf(a));
    for (const [c, h] of [...this.held]) {
      if (addrs.some((a) => cidrContains(h.cidr, a))) {
        h.clearSince = undefined;
        continue;
      }
      h.clearSince ??= now;
      if (now - h.clearSince < this.o.graceMs) continue;
      const key = L.podCidrQuarantine(c);
      const res = await this.o.kv.txn(
        [this.o.guard, { key, target: 'value', result: '=', value: h.node }],
        [{ type: 'delete', key }],
      );
      if (!res.succeeded && (await this.o.kv.get(key))) continue; // not the leader any more: the next one ends it
      this.held.delete(c);
      this.poolOf(c)?.markFree(c);
      this.stats.released++;
      ended++;
      this.o.log.info({ node: h.node, block: c, graceMs: this.o.graceMs }, 'pod CIDR quarantine over: the block is free');
    }
    return ended;
  }
}
