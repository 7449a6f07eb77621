// Endpoint addresses shared through the cluster store: each agent publishes its endpoints'
// addresses (address -> identity, node, node address) under its lease, and mirrors everyone else's
// into a map the policy engine writes into the BPF ipcache. Deletes propagate as watch events; an
// agent that was cut off lists again and drops what vanished meanwhile (PrefixMirror).
import { normalizeCidr } from '../net/index.ts';
import { decode, encode, type IpcacheRecord, type Layout } from '../kvstore/layout.ts';
import { PrefixMirror, type MirrorChange } from '../kvstore/mirror.ts';
import type { Session, SessionLog } from '../kvstore/session.ts';

export interface LocalEndpointAddresses {
  /** containerId/ifName */
  key: string;
  ips: string[];
  identity: number;
}

/** How long an address this node withdrew stays out of its IPAM after the cluster store took the
 *  withdrawal: the time the other nodes' watches have to deliver it (milliseconds there, unless a node
 *  is cut off from the store). */
export const RELEASE_QUARANTINE_MS = 5_000;

export interface ClusterIpcacheOptions {
  session: Session;
  layout: Layout;
  node: string;
  nodeIp: string;
  /** The remote entries changed: prefix ("10.1.2.3/32") -> identity. */
  onRemoteChange(remote: Map<string, number>): void | Promise<void>;
  log?: SessionLog;
  /** Default RELEASE_QUARANTINE_MS. */
  quarantineMs?: number;
}

export class ClusterIpcache {
  readonly mirror: PrefixMirror<IpcacheRecord>;
  /** What this node publishes: address -> record. */
  private readonly published = new Map<string, string>();
  private readonly byEndpoint = new Map<string, string[]>();
  /** Other nodes' endpoints, by prefix. */
  private readonly remote = new Map<string, number>();
  /** Other nodes' own addresses (remote-node), set by cluster routing. */
  private readonly nodeAddrs = new Map<string, number>();
  /** What the datapath's ipcache gets: endpoints, and node addresses where no endpoint has them. */
  private readonly combined = new Map<string, number>();
  /** Addresses this node withdrew -> when the store took the withdrawal (0: not yet). Native routing
   *  classifies a remote packet by its source address alone, so until every node has dropped the old
   *  entry, a new pod given the address would be taken for the deleted one: see quarantined(). */
  private readonly released = new Map<string, number>();
  private pruneAt = 256;
  /** Held addresses an earlier run of this agent released (the IPAM's durable holds, restoreHolds). */
  private readonly restored = new Set<string>();
  /** Remote endpoints kept out of the datapath: cut off from the store too long (--kvstore-max-stale). */
  withheld = false;

  constructor(private readonly o: ClusterIpcacheOptions) {
    o.session.onWritten((keys) => {
      const now = Date.now();
      for (const k of keys) {
        if (!k.startsWith(o.layout.ipcache)) continue;
        const ip = k.slice(o.layout.ipcache.length);
        if (this.released.get(ip) === 0 && !o.session.owns(k)) this.released.set(ip, now);
      }
    });
    this.mirror = new PrefixMirror<IpcacheRecord>(o.session.kv, o.layout.ipcache, {
      decode: (v) => {
        const r = decode<IpcacheRecord>(v);
        return r && Number.isInteger(r.identity) && typeof r.node === 'string' ? r : undefined;
      },
      onChange: (c) => this.apply(c),
      log: o.log,
    });
  }

  start(): Promise<void> {
    return this.mirror.start();
  }
  stop(): Promise<void> {
    return this.mirror.stop();
  }

  /** Entries of other nodes, by prefix. */
  remoteEntries(): Map<string, number> {
    return this.remote;
  }

  /** Remote entries with their node, for `membrane` output and part 2's tunnel lookups. */
  remoteRecords(): [string, IpcacheRecord][] {
    return [...this.mirror.items].filter(([, r]) => r.node !== this.o.node);
  }

  /** Applies one change to the remote map in place (a burst of 10,000 entries must not cost
   *  10,000 rebuilds of the whole map). */
  private async apply(c: MirrorChange<IpcacheRecord>): Promise<void> {
    const prefix = (addr: string) => {
      try {
        return normalizeCidr(addr);
      } catch {
        return undefined;
      }
    };
    for (const [addr, r] of c.upserts) {
      const p = prefix(addr);
      if (!p) continue;
      if (r.node === this.o.node) this.unsetRemote(p);
      else {
        this.remote.set(p, r.identity);
        this.combined.set(p, r.identity);
      }
    }
    for (const addr of c.deletes) {
      const p = prefix(addr);
      if (p) this.unsetRemote(p);
    }
    // A list after the first one follows an outage: what changed meanwhile is corrected only now.
    if (c.resync && this.mirror.resyncs > 1 && (c.upserts.length || c.deletes.length))
      this.o.log?.info(
        { upserts: c.upserts.length, deletes: c.deletes.length },
        'ipcache listed again after the store was out of reach: entries changed meanwhile corrected',
      );
    if (c.resync && this.withheld) return this.restoreRemote();
    await this.deliver();
  }

  /** What the datapath gets: every entry, or only the other nodes' own addresses while withheld. */
  private deliver(): void | Promise<void> {
    return this.o.onRemoteChange(this.withheld ? this.nodeAddrs : this.combined);
  }

  /** Cut off from the store too long: the other nodes' endpoints leave the datapath (their packets
   *  get no identity but world) until restoreRemote. Returns how many left. */
  withholdRemote(): number {
    if (this.withheld) return 0;
    this.withheld = true;
    void this.deliver();
    return this.remote.size;
  }

  /** The ipcache was listed again (or its watch never broke): every entry back. */
  async restoreRemote(): Promise<void> {
    if (!this.withheld) return;
    this.withheld = false;
    this.o.log?.info({ remoteEndpoints: this.remote.size }, "the other nodes' endpoints are back in the datapath");
    await this.deliver();
  }

  private unsetRemote(p: string): void {
    this.remote.delete(p);
    const node = this.nodeAddrs.get(p);
    if (node === undefined) this.combined.delete(p);
    else this.combined.set(p, node);
  }

  /** The other nodes' addresses (prefix -> remote-node), from cluster routing; applied in place. */
  async setNodeAddresses(addrs: Map<string, number>): Promise<void> {
    let changed = false;
    for (const p of [...this.nodeAddrs.keys()]) {
      if (addrs.has(p)) continue;
      this.nodeAddrs.delete(p);
      if (!this.remote.has(p)) {
        this.combined.delete(p);
        changed = true;
      }
    }
    for (const [p, id] of addrs) {
      if (this.nodeAddrs.get(p) === id) continue;
      this.nodeAddrs.set(p, id);
      if (!this.remote.has(p)) {
        this.combined.set(p, id);
        changed = true;
      }
    }
    if (changed) await this.deliver();
  }

  /** Publishes (or republishes with a new identity) one local endpoint's addresses. */
  publish(ep: LocalEndpointAddresses): void {
    const before = this.byEndpoint.get(ep.key) ?? [];
    for (const ip of before) if (!ep.ips.includes(ip)) this.withdrawOne(ip);
    for (const ip of ep.ips) {
      const value = encode({
        identity: ep.identity,
        node: this.o.node,
        nodeIp: this.o.nodeIp,
        endpoint: ep.key,
      } satisfies IpcacheRecord);
      if (this.published.get(ip) === value) continue;
      this.published.set(ip, value);
      this.released.delete(ip);
      this.o.session.set(this.o.layout.ipcacheEntry(ip), value);
    }
    this.byEndpoint.set(ep.key, [...ep.ips]);
  }

  withdraw(key: string): void {
    for (const ip of this.byEndpoint.get(key) ?? []) this.withdrawOne(ip);
    this.byEndpoint.delete(key);
  }

  private withdrawOne(ip: string): void {
    if (!this.published.delete(ip)) return;
    this.release(ip);
    this.o.session.delete(this.o.layout.ipcacheEntry(ip));
  }

  private release(ip: string): void {
    this.released.set(ip, 0);
    if (this.released.size < this.pruneAt) return;
    // Amortized: the quarantines that ended go once the map has doubled.
    const now = Date.now();
    for (const [a, at] of this.released) if (at && now - at >= this.quarantineMs) this.released.delete(a);
    this.pruneAt = Math.max(256, 2 * this.released.size);
  }

  private get quarantineMs(): number {
    return this.o.quarantineMs ?? RELEASE_QUARANTINE_MS;
  }

  /** Why `ip` may not be given to an endpoint yet, or undefined: this node withdrew it and the store
   *  has not taken the withdrawal, or took it less than the quarantine ago (the other nodes may still
   *  map it to the endpoint that had it). */
  quarantined(ip: string): string | undefined {
    let at = this.released.get(ip);
    if (at === undefined) return undefined;
    if (at === 0 && this.withdrawalSeen(ip)) {
      at = Date.now();
      this.released.set(ip, at);
    }
    if (at === 0 || this.o.session.pending(this.o.layout.ipcacheEntry(ip)))
      return `address ${ip} was released and its withdrawal has not reached the cluster store yet (the other nodes still take it for the endpoint that had it); try again later`;
    const left = this.quarantineMs - (Date.now() - at);
    if (left > 0)
      return this.restored.has(ip)
        ? `address ${ip} was released before this agent restarted: the other nodes may still take it for the endpoint that had it; try again in ${left} ms`
        : `address ${ip} was released ${Date.now() - at} ms ago: the other nodes may still take it for the endpoint that had it; try again in ${left} ms`;
    this.released.delete(ip);
    this.restored.delete(ip);
    return undefined;
  }

  /** Addresses an earlier run of this agent released (the IPAM keeps them on disk, so a crash does
   *  not end their hold): held like withdrawn ones until this run sees the store without this node's
   *  entry for them, then for the quarantine (counted from then: when the earlier run's withdrawal
   *  reached the store is not known). */
  restoreHolds(ips: Iterable<string>): number {
    let n = 0;
    for (const ip of ips) {
      if (this.released.has(ip) || this.published.has(ip)) continue;
      this.released.set(ip, 0);
      this.restored.add(ip);
      n++;
    }
    return n;
  }

  /** The IPAM freed `ip` (in memory, before its write and before the endpoint's delete hooks withdraw
   *  it): held from now, so no allocation in between takes it. */
  hold(ip: string): void {
    this.restored.delete(ip);
    this.release(ip);
  }

  /** A hold with no withdrawal of this run to wait for (an earlier run's, restoreHolds; an address
   *  never published; or one still published while the IPAM frees it) is confirmed once no endpoint
   *  here publishes it, no write of it waits in this run's session and the store, as listed and
   *  watched, has no entry of this node for it (reconcile deletes an earlier run's leftovers, which
   *  the watch then reports). */
  private withdrawalSeen(ip: string): boolean {
    if (this.published.has(ip) || this.mirror.resyncs === 0) return false;
    return !this.o.session.pending(this.o.layout.ipcacheEntry(ip)) && this.mirror.items.get(ip)?.node !== this.o.node;
  }

  /** Deletes entries an earlier run of this node left for endpoints that are gone (their addresses
   *  are quarantined as withdrawn ones). */
  reconcile(): Promise<number> {
    return this.o.session.reconcile(this.o.layout.ipcache, (key, value) => {
      const mine = decode<IpcacheRecord>(value)?.node === this.o.node;
      const ip = key.slice(this.o.layout.ipcache.length);
      if (mine && !this.o.session.owns(key) && !this.released.has(ip)) this.release(ip);
      return mine;
    });
  }
}
