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

export interface ClusterIpcacheOptions {
  session: Session;
  layout: Layout;
  node: string;
  nodeIp: string;
  /** The remote entries changed: prefix ("10.1.2.3/32") -> identity. */
  onRemoteChange(remote: Map<string, number>): void | Promise<void>;
  log?: SessionLog;
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

  constructor(private readonly o: ClusterIpcacheOptions) {
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
    await this.o.onRemoteChange(this.combined);
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
    if (changed) await this.o.onRemoteChange(this.combined);
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
    this.o.session.delete(this.o.layout.ipcacheEntry(ip));
  }

  /** Deletes entries an earlier run of this node left for endpoints that are gone. */
  reconcile(): Promise<number> {
    return this.o.session.reconcile(this.o.layout.ipcache, (_key, value) => decode<IpcacheRecord>(value)?.node === this.o.node);
  }
}
