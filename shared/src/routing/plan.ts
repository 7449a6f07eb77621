// How this node reaches the other nodes' pods, computed from the cluster's node records. Pure.
//
//   tunnel mode (the default): every other node's pod CIDRs and its own addresses go into the BPF
//     tunnel map (-> its underlay address); the kernel routes the pod CIDRs into the tunnel device,
//     so the node's own traffic to remote pods is tunnelled as well.
//   native mode: a kernel route per other node's pod CIDR via its underlay address; the underlay
//     carries pod addresses itself. The tunnel map then holds those pod CIDRs only (no node addresses):
//     it tells the datapath which destinations it sends out of the underlay itself (bpf/lib/fib.h).
// Either way every other node's addresses and the gateways of its pod CIDRs are "remote-node" in
// the ipcache: traffic from another node is told apart from this node's own (host) and the world.
import { defaultGateway, familyOf, normalizeCidr, parseCidr, type Family } from '../net/index.ts';
import type { NodeRecord } from '../kvstore/layout.ts';
import { RESERVED } from '../identity/reserved.ts';

export type RoutingMode = 'tunnel' | 'native';
export const ROUTING_MODES: readonly RoutingMode[] = ['tunnel', 'native'];

/** Bytes a VXLAN packet adds (outer Ethernet, IP, UDP, VXLAN): what a pod's MTU gives up for it. */
export function tunnelOverhead(underlay: Family): number {
  return underlay === 4 ? 50 : 70;
}

export interface TunnelTarget {
  node: string;
  nodeId: number;
  /** The node's underlay address (the outer destination). */
  ip: string;
}

export interface RouteWant {
  dst: string;
  /** native: the node's underlay address; tunnel: none (the route points at the tunnel device). */
  via?: string;
  /** This node's gateway of the same family: the source it uses towards remote pods. */
  prefSrc?: string;
  node: string;
}

export interface RoutingPlan {
  /** tunnel map: prefix -> node (native mode: reachable pod CIDRs only). */
  tunnel: Map<string, TunnelTarget>;
  /** kernel routes, by destination. */
  routes: Map<string, RouteWant>;
  /** ipcache entries of the other nodes: prefix -> remote-node. */
  nodeAddresses: Map<string, number>;
  /** Pod CIDRs no route can reach (native mode, no underlay address of their family). */
  unreachable: { node: string; cidr: string }[];
  /** Other nodes' records that hold this node's own address (a node renamed or replaced while the
   *  old record's lease runs): planned without that address, which the datapath refuses as a tunnel
   *  sender anyway (bpf/vxlan_rx.c, bpf/tunnel.c), so their pods are cut off until the record goes. */
  claimsSelf: string[];
}

export interface SelfNode {
  name: string;
  /** This node's gateway address per family (its pod CIDRs' first address), if it has that family. */
  gateways: Partial<Record<Family, string>>;
  /** This node's own underlay address (--node-ip), when known. */
  address?: string;
}

const hostPrefix = (ip: string) => normalizeCidr(ip);

/** The other nodes that can be reached: those with an underlay address and a pod CIDR. */
export function remoteNodes(self: string, nodes: Iterable<NodeRecord>): NodeRecord[] {
  return [...nodes]
    .filter((n) => n.name !== self && n.addresses?.length && (n.podCidrs?.ipv4 || n.podCidrs?.ipv6))
    .sort((a, b) => a.name.localeCompare(b.name));
}

export function planRouting(mode: RoutingMode, self: SelfNode, nodes: Iterable<NodeRecord>): RoutingPlan {
  const plan: RoutingPlan = { tunnel: new Map(), routes: new Map(), nodeAddresses: new Map(), unreachable: [], claimsSelf: [] };
  for (const n of remoteNodes(self.name, nodes)) {
    const ips = n.addresses.map((a) => a.ip).filter((ip) => familyOf(ip));
    if (!ips.length) continue;
    const own = self.address ? hostPrefix(self.address) : undefined;
    if (own && ips.some((ip) => hostPrefix(ip) === own)) plan.claimsSelf.push(n.name);
    const target: TunnelTarget = { node: n.name, nodeId: n.nodeId, ip: ips[0] };
    for (const ip of ips) {
      // Never this node's own address: in the tunnel map its pods' packets to it would go into the
      // tunnel, back to this node, whose datapath refuses itself as a sender.
      if (hostPrefix(ip) === own) continue;
      plan.nodeAddresses.set(hostPrefix(ip), RESERVED['remote-node']);
      if (mode === 'tunnel') plan.tunnel.set(hostPrefix(ip), target);
    }
    for (const cidr of [n.podCidrs.ipv4, n.podCidrs.ipv6]) {
      if (!cidr) continue;
      let c;
      try {
        c = parseCidr(cidr);
      } catch {
        continue;
      } // a damaged record: skipped, never fatal
      const dst = normalizeCidr(cidr);
      plan.nodeAddresses.set(hostPrefix(defaultGateway(c)), RESERVED['remote-node']);
      const prefSrc = self.gateways[c.family];
      if (mode === 'tunnel') {
        plan.tunnel.set(dst, target);
        plan.routes.set(dst, { dst, node: n.name, ...(prefSrc ? { prefSrc } : {}) });
        continue;
      }
      const via = ips.find((ip) => familyOf(ip) === c.family);
      if (!via) {
        plan.unreachable.push({ node: n.name, cidr: dst });
        continue;
      }
      plan.routes.set(dst, { dst, via, node: n.name, ...(prefSrc ? { prefSrc } : {}) });
      // Where the datapath sends pods' packets out of the underlay itself (bpf/lib/fib.h), to the
      // route's gateway: reachable pod CIDRs only.
      plan.tunnel.set(dst, { ...target, ip: via });
    }
  }
  return plan;
}

export function sameTarget(a: TunnelTarget, b: TunnelTarget): boolean {
  return a.ip === b.ip && a.nodeId === b.nodeId;
}

export function sameRoute(a: RouteWant, b: RouteWant): boolean {
  return a.dst === b.dst && a.via === b.via && a.prefSrc === b.prefSrc;
}
