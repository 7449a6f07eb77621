// An agent in cluster mode: connects to the cluster store, registers the node, gets its pod CIDR
// from the operator, and plugs the cluster backends (identities, policies) and the ipcache sync into
// the policy engine and the endpoint lifecycle. Loaded only when --kvstore is given: the single-node
// path never imports it.
import fs from 'node:fs';
import path from 'node:path';
import { Router } from 'express';
import type { ClusterStatusView, Endpoint, NetworkSpec } from '../types.ts';
import type { EndpointHooks } from '../endpoint/manager.ts';
import type { PolicyEngine } from '../policy/engine.ts';
import { connectEtcd, type KvOptions } from '../kvstore/kv.ts';
import { decode, layout, type Layout, type NodeRecord, type PodCidrAllocation } from '../kvstore/layout.ts';
import { Session, type SessionLog } from '../kvstore/session.ts';
import { writeFileAtomic } from '../io/atomic-write.ts';
import { VERSION } from '../version.ts';
import { ClusterIdentities } from './identities.ts';
import { ClusterIpcache } from './ipcache.ts';
import { StoreCutoff } from './cutoff.ts';
import { ClusterNodes, waitForPodCidrs, type NodeView } from './nodes.ts';
import { ClusterPolicies } from './policies.ts';
import type { Datapath } from '../bpf/datapath.ts';
import type { Netlink } from '../netlink/index.ts';
import { defaultGateway, parseCidr, type Family } from '../net/index.ts';
import { ClusterRouting } from '../routing/routing.ts';
import { tunnelOverhead, type RoutingMode } from '../routing/plan.ts';

export interface ClusterModeConfig {
  cluster: string;
  kv: KvOptions;
  nodeName: string;
  nodeIp: string;
  stateDir: string;
  leaseTtlSeconds: number;
  /** Native routing: cut off from the store this long, the other nodes' endpoints leave the datapath
   *  until the ipcache is listed again (0 or absent: kept as last known). */
  maxStaleMs?: number;
  /** How long the agent waits for the store and for its pod CIDR at start. */
  startTimeoutMs: number;
  /** How long an endpoint with a new label set waits for the store before it fails. */
  allocateTimeoutMs: number;
  /** How pods reach other nodes' pods (shared/src/routing). */
  routing: ClusterRoutingConfig;
  /** Where this node's flow observer serves, published for the relay. */
  observer?: NodeRecord['observer'];
}

export interface ClusterRoutingConfig {
  mode: RoutingMode;
  tunnelDevice: string;
  tunnelPort: number;
  /** The interface holding --node-ip: its MTU bounds the pods' (minus the tunnel's overhead). */
  underlay: { family: Family; device: string; mtu: number; address?: string };
}

export type ClusterStatus = ClusterStatusView;

const POD_CIDR_FILE = 'cluster-pod-cidrs.json';

export class ClusterMode {
  readonly L: Layout;
  readonly identities: ClusterIdentities;
  readonly policies: ClusterPolicies;
  readonly ipcache: ClusterIpcache;
  readonly nodes: ClusterNodes;
  private engine?: PolicyEngine;
  private record!: NodeRecord;
  private podCidrs!: PodCidrAllocation;
  private refreshTimer?: NodeJS.Timeout;
  private routing?: ClusterRouting;
  /** At start: from listing the cluster's identities, policies and endpoints to the engine's first
   *  full sync done (the local endpoints' restore runs in between). */
  private startSyncT0?: number;
  private startSync?: { entries: number; ms: number };
  /** Relabeled pods whose new ipcache record the store has not taken (native routing). */
  private readonly unpublished = new Map<string, Endpoint>();
  /** What a node cut off from the store does (cutoff.ts). */
  private readonly cutoff: StoreCutoff;

  private constructor(
    readonly cfg: ClusterModeConfig,
    readonly session: Session,
    private readonly log: SessionLog,
  ) {
    this.L = layout(cfg.cluster);
    const common = { session, layout: this.L, node: cfg.nodeName, log };
    this.identities = new ClusterIdentities({ ...common, allocateTimeoutMs: cfg.allocateTimeoutMs });
    this.policies = new ClusterPolicies({
      ...common,
      onRemoteChange: async (s) => {
        await this.engine?.replacePolicies(s);
      },
    });
    this.ipcache = new ClusterIpcache({
      ...common,
      nodeIp: cfg.nodeIp,
      onRemoteChange: (m) => this.engine?.setRemoteEndpoints(m),
    });
    this.nodes = new ClusterNodes(session, this.L, log);
    session.onWritten(() => {
      if (this.unpublished.size) this.releasePublished();
    });
    this.cutoff = new StoreCutoff({
      session,
      ipcache: this.ipcache,
      mirrors: [this.nodes.mirror, this.identities.mirror, this.ipcache.mirror, this.policies.mirror],
      routingMode: cfg.routing.mode,
      maxStaleMs: cfg.maxStaleMs ?? 0,
      log,
    });
    this.identities.onLearn((ids) => {
      void this.engine?.identitiesLearned(ids);
    });
  }

  /** Connects, registers the node and waits for its pod CIDRs (bounded by startTimeoutMs). */
  static async connect(cfg: ClusterModeConfig, log: SessionLog): Promise<ClusterMode> {
    const kv = await connectEtcd(cfg.kv);
    const session = new Session({ kv, leaseTtlSeconds: cfg.leaseTtlSeconds, log });
    try {
      await session.start(cfg.startTimeoutMs);
    } catch (e) {
      kv.close();
      throw new Error(
        `cannot reach the cluster store at ${cfg.kv.endpoints.join(', ')} within ${Math.round(cfg.startTimeoutMs / 1000)} s: ${(e as Error).message}`,
      );
    }
    const m = new ClusterMode(cfg, session, log);
    try {
      await m.register();
      await m.nodes.start();
      await m.policies.start();
    } catch (e) {
      await m.close();
      throw e;
    }
    return m;
  }

  private async register(): Promise<void> {
    const file = path.join(this.cfg.stateDir, POD_CIDR_FILE);
    let previous: PodCidrAllocation | undefined;
    try {
      previous = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch {
      /* first start */
    }
    const now = new Date().toISOString();
    // A restarted agent whose node kept its allocation publishes it at once: a record without pod CIDRs,
    // even for a moment, would make every other node drop its routes to this node's pods.
    let held: PodCidrAllocation | undefined;
    try {
      held = decode<PodCidrAllocation>((await this.session.kv.get(this.L.podCidrNode(this.cfg.nodeName)))?.value ?? '');
    } catch {
      /* asked again below */
    }
    this.record = {
      name: this.cfg.nodeName,
      cluster: this.cfg.cluster,
      addresses: [{ type: 'InternalIP', ip: this.cfg.nodeIp }],
      podCidrs: held ? { ipv4: held.ipv4, ipv6: held.ipv6 } : {},
      nodeId: held?.nodeId ?? 0,
      agentVersion: VERSION,
      registeredAt: now,
      updatedAt: now,
      ...(this.cfg.observer ? { observer: this.cfg.observer } : {}),
      ...(previous ? { requestedPodCidrs: { ipv4: previous.ipv4, ipv6: previous.ipv6 } } : {}),
    };
    this.nodes.publish(this.record);
    this.podCidrs = await waitForPodCidrs(this.session, this.L, this.cfg.nodeName, this.cfg.startTimeoutMs);
    await writeFileAtomic(file, JSON.stringify(this.podCidrs) + '\n');
    // From now on the record asks for the blocks the node has: a record written again after the lease
    // was lost (the agent frozen or cut off longer than its TTL, the operator meanwhile releasing the
    // node) gets the node its own quarantined blocks back instead of the next free ones, which its
    // running pods and the network in its state dir would not be in.
    const own = { ipv4: this.podCidrs.ipv4, ipv6: this.podCidrs.ipv6 };
    this.record = { ...this.record, podCidrs: own, requestedPodCidrs: own, nodeId: this.podCidrs.nodeId };
    this.nodes.publish(this.record);
    // A refreshed updatedAt is how others see the node is alive ("last seen").
    this.refreshTimer = setInterval(() => {
      this.record = { ...this.record, updatedAt: new Date().toISOString() };
      this.nodes.publish(this.record);
    }, 30_000);
    this.refreshTimer.unref();
  }

  /** The agent's networks: the unnamed ("default") one takes the node's pod CIDRs. */
  networks(configured: NetworkSpec[], explicitDefault: boolean): NetworkSpec[] {
    const subnets = [this.podCidrs.ipv4, this.podCidrs.ipv6].filter((s): s is string => !!s);
    const others = configured.filter((n) => n.name !== 'default');
    const def = configured.find((n) => n.name === 'default');
    if (explicitDefault && def) {
      this.log.warn(
        { pools: def.subnets, podCidrs: subnets },
        'cluster mode: --pool for the default network is ignored; it uses the pod CIDRs the operator allocated',
      );
    }
    const mtu = this.podMtu(def?.mtu);
    return [{ name: 'default', subnets, ...(mtu ? { mtu } : {}) }, ...others];
  }

  /** Tunnel mode: pods get the underlay's MTU minus the tunnel's overhead (a larger --mtu is lowered). */
  private podMtu(configured: number | undefined): number | undefined {
    const r = this.cfg.routing;
    if (r.mode !== 'tunnel') return configured;
    const max = r.underlay.mtu - tunnelOverhead(r.underlay.family);
    if (configured && configured > max) {
      this.log.warn(
        { mtu: configured, max, underlay: r.underlay.device },
        `cluster mode: --mtu ${configured} does not fit the tunnel over ${r.underlay.device}; pods get ${max}`,
      );
    }
    return configured && configured < max ? configured : max;
  }

  /** The tunnel device (tunnel mode), the tunnel map and the routes to the other nodes' pod CIDRs, kept
   *  in step with the node records; the other nodes' addresses go into the ipcache as remote-node.
   *  After the datapath is loaded and the node's gateways exist (routes use them as source). */
  startRouting(host: Netlink, datapath: Datapath): ClusterRouting {
    const r = this.cfg.routing;
    const gateways: Partial<Record<Family, string>> = {};
    for (const cidr of [this.podCidrs.ipv4, this.podCidrs.ipv6]) {
      if (!cidr) continue;
      const c = parseCidr(cidr);
      gateways[c.family] = defaultGateway(c);
    }
    const routing = ClusterRouting.start(
      {
        mode: r.mode,
        host,
        datapath,
        self: { name: this.cfg.nodeName, gateways },
        underlay: r.underlay,
        log: this.log,
        tunnel: { device: r.tunnelDevice, port: r.tunnelPort, mtu: r.underlay.mtu - tunnelOverhead(r.underlay.family) },
      },
      this.nodes.mirror.items.values(),
    );
    this.routing = routing;
    void this.ipcache.setNodeAddresses(routing.nodeAddresses());
    this.nodes.onChange((items) => {
      const plan = routing.apply(items.values());
      void this.ipcache.setNodeAddresses(plan.nodeAddresses);
    });
    return routing;
  }

  /** Called by the policy engine's owner once the engine is open (before endpoints are restored).
   *  The other nodes' endpoints are listed now, so the engine's first full sync (after restore) keeps
   *  the remote entries a restarted agent finds pinned instead of dropping and re-adding them: the
   *  datapath keeps classifying remote peers through an agent restart. */
  async attachEngine(engine: PolicyEngine): Promise<void> {
    this.engine = engine;
    this.startSyncT0 = performance.now();
    await this.identities.attach(engine.identities);
    await engine.replacePolicies(this.policies.current());
    await this.ipcache.start();
  }

  /** After restore and the engine's first sync: publish local endpoints, drop leftovers of an earlier
   *  run, and start mirroring the other nodes' endpoints. */
  async afterRestore(endpoints: Endpoint[]): Promise<void> {
    if (this.startSyncT0 !== undefined) {
      this.startSync = { entries: this.ipcache.remoteEntries().size, ms: performance.now() - this.startSyncT0 };
      this.startSyncT0 = undefined;
    }
    for (const ep of endpoints) this.publish(ep);
    try {
      await this.ipcache.reconcile();
      await this.identities.reconcile();
    } catch (e) {
      this.log.warn(
        { err: (e as Error).message },
        'could not clean what an earlier run left in the cluster store; the lease of that run expires it',
      );
    }
  }

  endpointHooks(): EndpointHooks {
    return {
      afterCreate: (ep) => this.publish(ep),
      afterLabelsChanged: (ep) => {
        this.publish(ep);
        this.holdUntilPublished(ep);
      },
      afterDelete: (ep) => {
        this.unpublished.delete(`${ep.containerId}/${ep.ifName}`);
        this.ipcache.withdraw(`${ep.containerId}/${ep.ifName}`);
      },
    };
  }

  /** Native routing: the other nodes take a pod's identity from its address's ipcache entry, so a
   *  relabeled pod (quarantined, say) would speak to them as its old identity until the store has
   *  the new one (for as long as the store is out of reach). Its egress is held (default deny, no
   *  allow entries) until then: fail closed. Created pods need none: their address is unknown to the
   *  others (world) until published, and no other pod's (cluster/ipcache.ts quarantined). */
  private holdUntilPublished(ep: Endpoint): void {
    if (this.cfg.routing.mode !== 'native' || !this.engine || !this.unpublishedIps(ep)) return;
    this.unpublished.set(`${ep.containerId}/${ep.ifName}`, ep);
    void this.engine.holdEgress(ep, true);
  }

  private unpublishedIps(ep: Endpoint): boolean {
    return ep.ips.some((ip) => this.session.pending(this.L.ipcacheEntry(ip.address.split('/')[0])));
  }

  /** After each write the store took: the held pods whose records it has now are released. */
  private releasePublished(): void {
    for (const [key, ep] of this.unpublished) {
      if (this.unpublishedIps(ep)) continue;
      this.unpublished.delete(key);
      void this.engine?.holdEgress(ep, false);
    }
  }

  private publish(ep: Endpoint): void {
    this.ipcache.publish({
      key: `${ep.containerId}/${ep.ifName}`,
      ips: ep.ips.map((ip) => ip.address.split('/')[0]),
      identity: ep.identity,
    });
  }

  status(): ClusterStatus {
    const mirrors = [this.nodes.mirror, this.identities.mirror, this.ipcache.mirror, this.policies.mirror];
    return {
      name: this.cfg.cluster,
      node: this.cfg.nodeName,
      nodeIp: this.cfg.nodeIp,
      podCidrs: this.record.podCidrs,
      nodeId: this.record.nodeId,
      kvstore: {
        type: 'etcd',
        ...this.session.status(),
        watches: mirrors.map((m) => ({ prefix: m.prefix.slice(this.L.base.length), live: m.live, revision: m.revision })),
      },
      nodes: this.nodes.mirror.items.size,
      remoteEndpoints: this.ipcache.remoteEntries().size,
      ...(this.ipcache.withheld ? { remoteEndpointsWithheld: true } : {}),
      ipcacheResync: this.ipcache.mirror.resyncs > 1 ? this.ipcache.mirror.lastResync : this.startSync,
      identitiesReferenced: this.identities.referenced().length,
      ...(this.routing ? { routing: this.routing.status() } : {}),
    };
  }

  /** What the metrics page reports about the store and the last known remote entries. */
  metricsView(): { connected: boolean; lastContactMs?: number; remoteEndpoints: number; ipcacheLive: boolean } {
    const s = this.session.status();
    return {
      connected: s.connected,
      lastContactMs: s.lastContactMs,
      remoteEndpoints: this.ipcache.remoteEntries().size,
      ipcacheLive: this.ipcache.mirror.live,
    };
  }

  listNodes(): NodeView[] {
    return this.nodes.list();
  }

  /** GET /v1/cluster/nodes, GET /v1/cluster/status. */
  router(): Router {
    const r = Router();
    r.get('/nodes', (_req, res) => {
      res.json({ items: this.listNodes() });
    });
    r.get('/status', (_req, res) => {
      res.json(this.status());
    });
    return r;
  }

  /** Stops watching and writing. The lease is left to expire, unless `leave` (then the node and its
   *  entries go at once). */
  async close(opts: { leave?: boolean } = {}): Promise<void> {
    clearInterval(this.refreshTimer);
    this.cutoff.close();
    await Promise.allSettled([this.nodes.stop(), this.identities.stop(), this.ipcache.stop(), this.policies.stop()]);
    await this.session.close({ revoke: opts.leave });
    this.session.kv.close();
  }
}
