// What the leading operator does for the cluster:
//   * pod CIDRs: every node gets a block of --cluster-pool (and of the IPv6 pool when given), the one
//     it asks for back when that is free; blocks are never shared (taken by a transaction that
//     creates the block key) and are released when the node is gone, after a quarantine
//     (quarantine.ts: no ipcache entry of the block left, then --pod-cidr-quarantine);
//   * nodes whose lease expired: their pod CIDRs released, any ipcache entry or identity reference
//     still naming them deleted;
//   * identities no node references, once unreferenced for the grace period (deleted in a
//     transaction that checks the reference prefix is still empty).
// Every write carries the leader guard, so only the current leader changes anything.
import type { Compare, Kv, Op } from '../kvstore/kv.ts';
import {
  blockCidr,
  decode,
  encode,
  type IpcacheRecord,
  type Layout,
  type NodeRecord,
  type PodCidrAllocation,
} from '../kvstore/layout.ts';
import { PrefixMirror } from '../kvstore/mirror.ts';
import type { SessionLog } from '../kvstore/session.ts';
import type { PodCidrPool } from './podcidr.ts';
import { BlockQuarantine } from './quarantine.ts';

export interface OperatorTasksOptions {
  kv: Kv;
  layout: Layout;
  guard: Compare;
  pools: { ipv4?: PodCidrPool; ipv6?: PodCidrPool };
  identityGcIntervalMs: number;
  identityGcGraceMs: number;
  /** How long a gone node's block stays quarantined once no ipcache entry in it is left. */
  podCidrQuarantineMs: number;
  log: SessionLog;
}

export class OperatorTasks {
  private readonly nodes: PrefixMirror<NodeRecord>;
  private readonly allocations: PrefixMirror<PodCidrAllocation>;
  private readonly unreferencedSince = new Map<number, number>();
  /** Nodes told their pool is exhausted: said once until they get a block or go (not every tick). */
  private readonly starved = new Set<string>();
  private timer?: NodeJS.Timeout;
  private quarantineTimer?: NodeJS.Timeout;
  readonly quarantine: BlockQuarantine;
  private busy: Promise<void> = Promise.resolve();
  private stopped = false;
  readonly stats = { allocated: 0, released: 0, identitiesCollected: 0, ipcacheCollected: 0, refsCollected: 0 };

  constructor(private readonly o: OperatorTasksOptions) {
    const L = o.layout;
    this.quarantine = new BlockQuarantine({ ...o, graceMs: o.podCidrQuarantineMs });
    this.nodes = new PrefixMirror<NodeRecord>(o.kv, L.nodes, {
      decode: (v, k) => {
        const r = decode<NodeRecord>(v);
        return r?.name === k ? r : undefined;
      },
      onChange: () => this.schedule(),
      log: o.log,
    });
    this.allocations = new PrefixMirror<PodCidrAllocation>(o.kv, L.podCidrNodes, {
      decode: (v) => decode<PodCidrAllocation>(v),
      onChange: () => this.schedule(),
      log: o.log,
    });
  }

  async start(): Promise<void> {
    await this.loadBlocks();
    await this.quarantine.load();
    await this.nodes.start();
    await this.allocations.start();
    this.schedule();
    this.timer = setInterval(() => {
      this.schedule(true);
    }, this.o.identityGcIntervalMs);
    this.timer.unref();
    // Quarantines end on a clock, not on a change: looked at about 4 times per grace period.
    this.quarantineTimer = setInterval(
      () => {
        if (this.quarantine.size) this.schedule();
      },
      Math.min(1000, Math.max(100, this.o.podCidrQuarantineMs / 4)),
    );
    this.quarantineTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.quarantineTimer);
    await this.nodes.stop();
    await this.allocations.stop();
    await this.busy;
  }

  /** One reconcile at a time; changes that arrive meanwhile are covered by the next. */
  private schedule(withGc = false): void {
    this.busy = this.busy.then(async () => {
      if (this.stopped) return;
      try {
        await this.reconcileNodes();
        // A block out of quarantine may be what a waiting node needs.
        if (await this.quarantine.check()) await this.reconcileNodes();
        if (withGc) await this.collectIdentities();
      } catch (e) {
        this.o.log.warn({ err: (e as Error).message }, 'operator reconcile failed; retrying on the next change or tick');
      }
    });
  }

  private async loadBlocks(): Promise<void> {
    const { items } = await this.o.kv.list(this.o.layout.podCidrBlocks);
    for (const it of items) {
      const [fam, t] = it.key.slice(this.o.layout.podCidrBlocks.length).split('/');
      const pool = fam === 'v6' ? this.o.pools.ipv6 : this.o.pools.ipv4;
      const cidr = blockCidr(t);
      if (pool?.contains(cidr)) pool.markTaken(cidr, it.value);
    }
  }

  private async reconcileNodes(): Promise<void> {
    const nodes = this.nodes.items;
    for (const [name, node] of nodes) {
      if (!this.allocations.items.has(name)) await this.allocate(name, node);
    }
    for (const [name, a] of [...this.allocations.items]) {
      if (!nodes.has(name)) await this.removeNode(name, a);
    }
    for (const name of this.starved) if (!nodes.has(name)) this.starved.delete(name);
  }

  private async allocate(name: string, node: NodeRecord): Promise<void> {
    const L = this.o.layout;
    for (let attempt = 0; attempt < 8; attempt++) {
      const alloc: PodCidrAllocation = { nodeId: 0, allocatedAt: new Date().toISOString() };
      const compare: Compare[] = [this.o.guard, { key: L.podCidrNode(name), target: 'version', result: '=', value: 0 }];
      const ops: Op[] = [];
      for (const fam of ['ipv4', 'ipv6'] as const) {
        const pool = this.o.pools[fam];
        if (!pool) continue;
        const requested = node.requestedPodCidrs?.[fam];
        // Its own quarantined block back to a returning node; other nodes never get one (propose).
        const cidr = requested && this.quarantine.nodeOf(requested) === name ? requested : pool.propose(requested);
        if (!cidr) {
          if (!this.starved.has(name)) {
            this.starved.add(name);
            this.o.log.warn(
              { node: name, pool: pool.text, quarantinedBlocks: this.quarantine.size },
              'pod CIDR pool exhausted: the node gets no pod CIDR until a block is free (quarantined blocks come back when their grace ends)',
            );
          }
          return;
        }
        alloc[fam] = cidr;
        if (fam === 'ipv4' || !alloc.nodeId) alloc.nodeId = Number(pool.indexOf(cidr)!) + 1;
        compare.push({ key: L.podCidrBlock(cidr), target: 'version', result: '=', value: 0 });
        ops.push({ type: 'put', key: L.podCidrBlock(cidr), value: name });
        const q = this.quarantine.allocation(name, cidr);
        compare.push(...q.compare);
        ops.push(...q.ops);
      }
      if (!ops.length) return;
      ops.push({ type: 'put', key: L.podCidrNode(name), value: encode(alloc) });
      const res = await this.o.kv.txn(compare, ops, [
        { type: 'get', key: L.podCidrNode(name) },
        ...(alloc.ipv4 ? [{ type: 'get' as const, key: L.podCidrBlock(alloc.ipv4) }] : []),
        ...(alloc.ipv6 ? [{ type: 'get' as const, key: L.podCidrBlock(alloc.ipv6) }] : []),
      ]);
      if (res.succeeded) {
        for (const fam of ['ipv4', 'ipv6'] as const) {
          const cidr = alloc[fam];
          if (!cidr) continue;
          this.o.pools[fam]!.markTaken(cidr, name);
          this.quarantine.reclaimed(cidr);
        }
        this.stats.allocated++;
        this.starved.delete(name);
        this.o.log.info({ node: name, ...alloc }, 'pod CIDR allocated');
        return;
      }
      if (res.gets[0]?.length) return; // allocated meanwhile
      // A block was taken behind our back (another leader before us): learn it, propose again.
      let i = 1;
      for (const fam of ['ipv4', 'ipv6'] as const) {
        const cidr = alloc[fam];
        if (!cidr) continue;
        const owner = res.gets[i++]?.[0]?.value;
        if (owner) this.o.pools[fam]!.markTaken(cidr, owner);
      }
      if (!(await this.stillLeader())) return;
    }
  }

  /** A node whose record is gone (its lease expired): free its blocks, drop what still names it. */
  private async removeNode(name: string, a: PodCidrAllocation): Promise<void> {
    const L = this.o.layout;
    const ops: Op[] = [{ type: 'delete', key: L.podCidrNode(name) }];
    const blocks = [a.ipv4, a.ipv6].filter((c): c is string => !!c);
    for (const cidr of blocks) ops.push({ type: 'delete', key: L.podCidrBlock(cidr) });
    // The blocks go into quarantine in the same transaction (no moment in which they are free).
    ops.push(...this.quarantine.ops(name, blocks));
    const res = await this.o.kv.txn([this.o.guard, { key: L.node(name), target: 'version', result: '=', value: 0 }], ops);
    if (!res.succeeded) return; // came back, or we are not the leader any more
    this.quarantine.added(name, blocks);
    this.stats.released++;
    this.o.log.info({ node: name, ...a }, 'node gone: pod CIDR released');
    await this.collectNodeLeftovers(name);
  }

  /** ipcache entries and identity references naming a node that is not registered. */
  private async collectNodeLeftovers(name: string): Promise<void> {
    const L = this.o.layout;
    const { items } = await this.o.kv.list(L.ipcache);
    for (const it of items) {
      if (decode<IpcacheRecord>(it.value)?.node !== name) continue;
      const r = await this.o.kv.txn(
        [
          this.o.guard,
          { key: L.node(name), target: 'version', result: '=', value: 0 },
          { key: it.key, target: 'mod', result: '=', value: it.modRevision },
        ],
        [{ type: 'delete', key: it.key }],
      );
      if (r.succeeded) this.stats.ipcacheCollected++;
    }
    const refs = await this.o.kv.list(L.identityRefs, { keysOnly: true });
    for (const it of refs.items) {
      if (!it.key.endsWith(`/${name}`)) continue;
      const r = await this.o.kv.txn(
        [this.o.guard, { key: L.node(name), target: 'version', result: '=', value: 0 }],
        [{ type: 'delete', key: it.key }],
      );
      if (r.succeeded) this.stats.refsCollected++;
    }
  }

  private async collectIdentities(): Promise<void> {
    const L = this.o.layout;
    const [ids, refs] = await Promise.all([this.o.kv.list(L.identityIds), this.o.kv.list(L.identityRefs, { keysOnly: true })]);
    const referenced = new Set<number>();
    for (const it of refs.items) referenced.add(Number(it.key.slice(L.identityRefs.length).split('/')[0]));
    const now = Date.now();
    const present = new Set<number>();
    for (const it of ids.items) {
      const id = Number(it.key.slice(L.identityIds.length));
      present.add(id);
      if (referenced.has(id)) {
        this.unreferencedSince.delete(id);
        continue;
      }
      const since = this.unreferencedSince.get(id);
      if (since === undefined) {
        this.unreferencedSince.set(id, now);
        continue;
      }
      if (now - since < this.o.identityGcGraceMs) continue;
      const rec = decode<{ labels: Record<string, string> }>(it.value);
      const ops: Op[] = [{ type: 'delete', key: it.key }];
      const compare: Compare[] = [
        this.o.guard,
        { key: it.key, target: 'mod', result: '=', value: it.modRevision },
        { key: L.identityRefsOf(id), prefix: true, target: 'version', result: '=', value: 0 },
      ];
      if (rec?.labels) {
        // The labels key goes too, but only while it still points at this number.
        compare.push({ key: L.identityLabels(rec.labels), target: 'value', result: '=', value: String(id) });
        ops.push({ type: 'delete', key: L.identityLabels(rec.labels) });
      }
      const res = await this.o.kv.txn(compare, ops);
      this.unreferencedSince.delete(id);
      if (res.succeeded) {
        this.stats.identitiesCollected++;
        this.o.log.info({ identity: id, labels: rec?.labels }, 'identity collected (no node referenced it for the grace period)');
      }
    }
    for (const id of this.unreferencedSince.keys()) if (!present.has(id)) this.unreferencedSince.delete(id);
  }

  private async stillLeader(): Promise<boolean> {
    return !!(await this.o.kv.get(this.o.guard.key));
  }
}
