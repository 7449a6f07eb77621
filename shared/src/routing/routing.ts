// Cluster routing on one node: keeps the tunnel map, the tunnel device and the kernel routes to the
// other nodes' pod CIDRs in step with the cluster's node records (plan.ts says what they should be).
// Each change is applied as a difference, in an order that never strands a packet: tunnel entries
// before the routes that send traffic to them, routes removed before their entries. What an earlier
// run left (entries and routes of nodes that are gone) goes at start: our routes carry their own
// protocol number, so the node's other routes are never touched.
import type { Datapath } from '../bpf/datapath.ts';
import type { NodeRecord } from '../kvstore/layout.ts';
import type { Netlink } from '../netlink/index.ts';
import type { Family } from '../net/index.ts';
import { attachUnderlay, detachUnderlay, ensureTunnelDevice, removeTunnelDevice } from './device.ts';
import { TunnelMaps } from './maps.ts';
import {
  planRouting,
  sameRoute,
  sameTarget,
  type RouteWant,
  type RoutingMode,
  type RoutingPlan,
  type SelfNode,
  type TunnelTarget,
} from './plan.ts';

/** rtm_protocol of the routes to other nodes' pod CIDRs (an unassigned number: ours alone). */
export const RTPROT_MEMBRANE_CLUSTER = 196;

export interface RoutingLog {
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
}

export interface ClusterRoutingOptions {
  mode: RoutingMode;
  host: Netlink;
  datapath: Datapath;
  self: SelfNode;
  /** address: the node's own (--node-ip); tunnel mode's receive short-cut takes only datagrams to it. */
  underlay: { family: Family; device: string; mtu: number; address?: string };
  /** Tunnel mode: the device, its UDP port and MTU (underlay MTU minus the VXLAN overhead). */
  tunnel: { device: string; port: number; mtu: number };
  log?: RoutingLog;
}

export interface RoutingStatus {
  mode: RoutingMode;
  /** Tunnel mode: "vxlan membrane_vxlan :8472 mtu 1450". */
  device?: { name: string; port: number; mtu: number; ifindex: number };
  underlay: { device: string; mtu: number };
  nodes: number;
  routes: number;
  tunnelEntries: number;
  unreachable: { node: string; cidr: string }[];
  lastError?: string;
}

export class ClusterRouting {
  private tunnelIfindex = 0;
  /** What the tunnel map and our routes hold now. */
  private readonly tunnel = new Map<string, TunnelTarget>();
  private readonly routes = new Map<string, RouteWant>();
  private plan: RoutingPlan = { tunnel: new Map(), routes: new Map(), nodeAddresses: new Map(), unreachable: [], claimsSelf: [] };
  private readonly maps: TunnelMaps;
  private lastError?: string;
  private reported = new Set<string>();

  private constructor(private readonly o: ClusterRoutingOptions) {
    this.maps = new TunnelMaps(o.datapath);
  }

  /** Sets up the device (tunnel mode) or removes a stale one (native), then applies `nodes`. */
  static start(o: ClusterRoutingOptions, nodes: Iterable<NodeRecord>): ClusterRouting {
    const r = new ClusterRouting(o);
    if (o.mode === 'tunnel') {
      r.tunnelIfindex = ensureTunnelDevice(o.host, o.datapath, { name: o.tunnel.device, port: o.tunnel.port, mtu: o.tunnel.mtu });
    } else if (removeTunnelDevice(o.host, o.tunnel.device, o.datapath.pinDir)) {
      o.log?.info({ device: o.tunnel.device }, 'native routing: removed the tunnel device an earlier run left');
    }
    // Everything a previous run left is "current": apply() removes what the cluster no longer has.
    for (const [prefix, t] of r.maps.read()) r.tunnel.set(prefix, { node: '?', ...t });
    for (const fam of [4, 6] as const) {
      for (const rt of o.host.routeList({ family: fam })) {
        if (rt.protocol === RTPROT_MEMBRANE_CLUSTER)
          r.routes.set(rt.dst, {
            dst: rt.dst,
            node: '?',
            ...(rt.gateway ? { via: rt.gateway } : {}),
            ...(rt.prefSrc ? { prefSrc: rt.prefSrc } : {}),
          });
      }
    }
    // The device's ifindex (or 0: overlay off) before any entry can send traffic to it.
    // Native: the datapath sends pods' packets to the pod CIDRs in tunnel_map out of the underlay device
    // (bpf/lib/fib.h); without its ifindex (no such link) they take the host stack's forwarding path.
    // Tunnel mode over IPv4: other nodes' datagrams for this node's pods are taken apart on the underlay
    // device (bpf/vxlan_rx.c) rather than by the kernel's VXLAN receive path (the tunnel device then
    // gets only what the short-cut leaves: the node's own traffic, IPv6 inside, anything unusual).
    const underlayLink = o.host.linkByName(o.underlay.device);
    const underlayIfindex = underlayLink?.index ?? 0;
    const rx = o.mode === 'tunnel' && o.underlay.family === 4 && o.underlay.address && underlayIfindex;
    r.maps.setConfig({
      tunnelIfindex: r.tunnelIfindex,
      underlay: o.underlay.family,
      ...(o.mode === 'native' ? { native: { underlayIfindex } } : {}),
      ...(rx ? { rx: { underlayIfindex, port: o.tunnel.port, nodeIpv4: o.underlay.address! } } : {}),
    });
    r.apply(nodes);
    // Native: other nodes' packets for this node's pods enter them from the underlay device's tc ingress
    // (bpf/underlay.c) instead of through the stack's forwarding path; tunnel mode: the short-cut above.
    if (underlayLink && (o.mode === 'native' || rx)) attachUnderlay(o.datapath, underlayLink.index);
    else if (underlayLink && detachUnderlay(o.datapath, underlayLink.index))
      o.log?.info({ device: o.underlay.device }, 'removed the underlay receive program an earlier run left');
    return r;
  }

  /** Brings maps and routes in line with the cluster's nodes; errors are logged and retried next time. */
  apply(nodes: Iterable<NodeRecord>): RoutingPlan {
    const plan = planRouting(this.o.mode, { ...this.o.self, address: this.o.underlay.address }, nodes);
    this.plan = plan;
    const errors: string[] = [];
    const attempt = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        errors.push(`${what}: ${(e as Error).message}`);
      }
    };
    const upserts = [...plan.tunnel].filter(([p, t]) => {
      const cur = this.tunnel.get(p);
      return !cur || !sameTarget(cur, t);
    });
    attempt('tunnel map', () => {
      this.maps.write(upserts, []);
      for (const [p, t] of upserts) this.tunnel.set(p, t);
    });
    for (const [dst, want] of plan.routes) {
      const cur = this.routes.get(dst);
      if (cur && sameRoute(cur, want)) continue;
      attempt(`route ${dst}`, () => {
        this.o.host.routeAdd(this.routeSpec(want));
        this.routes.set(dst, want);
      });
    }
    for (const dst of [...this.routes.keys()]) {
      if (plan.routes.has(dst)) continue;
      attempt(`route ${dst}`, () => {
        this.o.host.routeDel({ dst, index: 0, protocol: RTPROT_MEMBRANE_CLUSTER });
        this.routes.delete(dst);
      });
    }
    const stale = [...this.tunnel.keys()].filter((p) => !plan.tunnel.has(p));
    attempt('tunnel map', () => {
      this.maps.write([], stale);
      for (const p of stale) this.tunnel.delete(p);
    });
    this.lastError = errors.length ? errors.join('; ') : undefined;
    if (errors.length) this.o.log?.warn({ errors }, 'cluster routing: some changes failed; retrying on the next node change');
    for (const u of plan.unreachable) {
      const key = `${u.node} ${u.cidr}`;
      if (this.reported.has(key)) continue;
      this.reported.add(key);
      this.o.log?.warn(
        u,
        `native routing: node ${u.node} has no underlay address of ${u.cidr}'s family; its pods there are unreachable`,
      );
    }
    for (const node of plan.claimsSelf) {
      const key = `claims-self ${node}`;
      if (this.reported.has(key)) continue;
      this.reported.add(key);
      this.o.log?.warn(
        { node, address: this.o.underlay.address },
        `node record ${node} holds this node's own address ${this.o.underlay.address}: a stale record? its pods are unreachable until it goes`,
      );
    }
    return plan;
  }

  private routeSpec(want: RouteWant) {
    const common = { dst: want.dst, protocol: RTPROT_MEMBRANE_CLUSTER, ...(want.prefSrc ? { prefSrc: want.prefSrc } : {}) };
    return want.via
      ? { ...common, gateway: want.via, index: 0 }
      : { ...common, index: this.tunnelIfindex, scope: 'link' as const };
  }

  /** Other nodes' addresses and pod CIDR gateways: the ipcache's remote-node entries. */
  nodeAddresses(): Map<string, number> {
    return this.plan.nodeAddresses;
  }

  status(): RoutingStatus {
    return {
      mode: this.o.mode,
      ...(this.o.mode === 'tunnel'
        ? {
            device: { name: this.o.tunnel.device, port: this.o.tunnel.port, mtu: this.o.tunnel.mtu, ifindex: this.tunnelIfindex },
          }
        : {}),
      underlay: { device: this.o.underlay.device, mtu: this.o.underlay.mtu },
      nodes: new Set([...this.plan.routes.values()].map((r) => r.node)).size,
      routes: this.routes.size,
      tunnelEntries: this.tunnel.size,
      unreachable: this.plan.unreachable,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }
}
