// The relay's peers: every node of the cluster (discovered from the node records in etcd, which say
// where each node's observer serves), one observer client each, and whether it answers. A node whose
// record goes is gone; one that stops answering is unavailable until it answers again. Changes are
// told to listeners (GetFlows turns them into node status events).
import type { Kv } from '../kvstore/kv.ts';
import { decode, type Layout, type NodeRecord } from '../kvstore/layout.ts';
import { PrefixMirror } from '../kvstore/mirror.ts';
import { ObserverClient, type ObserverTls } from '../flows/client.ts';
import type { NodeState } from '../flows/types.ts';

/** The name a node's observer certificate carries (scripts/cluster-certs.sh writes it). */
export function observerServerName(cluster: string, node: string): string {
  return `${node}.${cluster}.observer.membrane`;
}

export interface Peer {
  name: string;
  address: string;
  tls: boolean;
  client: ObserverClient;
  state: NodeState;
  lastError?: string;
}

export type PeerEvent = { type: 'added' | 'gone' | 'connected' | 'unavailable'; peer: Peer };

export interface PeerSetOptions {
  kv: Kv;
  layout: Layout;
  cluster: string;
  /** CA and client certificate for nodes whose observer speaks TLS. */
  tls?: Omit<ObserverTls, 'serverName'>;
  /** How often every peer is asked whether it answers. */
  healthIntervalMs?: number;
  log?: { info(o: object, msg: string): void; warn(o: object, msg: string): void };
}

export class PeerSet {
  private readonly peers = new Map<string, Peer>();
  private readonly listeners = new Set<(e: PeerEvent) => void>();
  private readonly mirror: PrefixMirror<NodeRecord>;
  private timer?: NodeJS.Timeout;

  constructor(private readonly o: PeerSetOptions) {
    this.mirror = new PrefixMirror<NodeRecord>(o.kv, o.layout.nodes, {
      decode: (v, key) => {
        const r = decode<NodeRecord>(v);
        return r && r.name === key ? r : undefined;
      },
      onChange: () => this.reconcile(),
      log: o.log,
    });
  }

  /** Resolves once the nodes were listed and asked once. */
  async start(): Promise<void> {
    await this.mirror.start();
    await this.checkAll();
    this.timer = setInterval(() => void this.checkAll(), this.o.healthIntervalMs ?? 5_000);
    this.timer.unref();
  }

  list(): Peer[] {
    return [...this.peers.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Listens to peers coming, going, answering or not; returns the unsubscribe. */
  subscribe(fn: (e: PeerEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** A call to the peer failed: unavailable until it answers again (the health check notices). */
  failed(peer: Peer, err: Error): void {
    peer.lastError = err.message;
    this.setState(peer, 'NODE_UNAVAILABLE');
  }

  /** A call to the peer worked. */
  answered(peer: Peer): void {
    this.setState(peer, 'NODE_CONNECTED');
  }

  private reconcile(): void {
    const want = new Map<string, NodeRecord>();
    for (const n of this.mirror.items.values()) if (n.observer?.address) want.set(n.name, n);
    for (const [name, p] of this.peers) {
      const n = want.get(name);
      if (n && n.observer!.address === p.address && n.observer!.tls === p.tls) continue;
      this.peers.delete(name);
      p.client.close();
      p.state = 'NODE_GONE';
      this.emit({ type: 'gone', peer: p });
    }
    for (const [name, n] of want) {
      if (this.peers.has(name)) continue;
      const { address, tls } = n.observer!;
      if (tls && !this.o.tls) {
        this.o.log?.warn(
          { node: name, address },
          'node serves its observer over TLS and the relay has no --tls-ca-file: skipped',
        );
        continue;
      }
      const client = new ObserverClient(
        address,
        tls ? { tls: { ...this.o.tls!, serverName: observerServerName(this.o.cluster, name) } } : {},
      );
      const peer: Peer = { name, address, tls, client, state: 'NODE_UNAVAILABLE' };
      this.peers.set(name, peer);
      this.emit({ type: 'added', peer });
      void this.check(peer);
    }
  }

  private async checkAll(): Promise<void> {
    await Promise.all(this.list().map((p) => this.check(p)));
  }

  private async check(peer: Peer): Promise<void> {
    try {
      await peer.client.status(2_000);
      if (this.peers.get(peer.name) === peer) this.answered(peer);
    } catch (e) {
      if (this.peers.get(peer.name) === peer) this.failed(peer, e as Error);
    }
  }

  private setState(peer: Peer, state: NodeState): void {
    if (peer.state === state || peer.state === 'NODE_GONE') return;
    peer.state = state;
    if (state === 'NODE_CONNECTED') peer.lastError = undefined;
    this.o.log?.info(
      { node: peer.name, address: peer.address, state, ...(peer.lastError ? { err: peer.lastError } : {}) },
      'relay peer state',
    );
    this.emit({ type: state === 'NODE_CONNECTED' ? 'connected' : 'unavailable', peer });
  }

  private emit(e: PeerEvent): void {
    for (const fn of this.listeners) {
      try {
        fn(e);
      } catch {
        /* a listener's failure is its own */
      }
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.mirror.stop();
    for (const p of this.peers.values()) p.client.close();
    this.peers.clear();
  }
}
