// The kernel-side recipe of an endpoint: veth (container end created directly in the container's
// netns), addresses, routes, proxy ARP/NDP. Every step is an idempotent "ensure" so restore can re-run it.
import type { EndpointIp } from '../types.ts';
import type { NetNs } from '../netns/index.ts';
import { openNetlink, type Link, type Netlink } from '../netlink/index.ts';
import { addressOnly, hostPrefix, normalizeIfAddr } from '../net/index.ts';
import { setSysctlPath } from '../sysctl/index.ts';
import type { Datapath } from '../bpf/datapath.ts';

export interface PlumbSpec {
  hostIfName: string;
  hostMac: string;
  ifName: string;
  mac: string;
  mtu: number;
  ips: EndpointIp[];
  /** null: the container end stays in the host netns for the runtime to move (Docker). */
  netns: NetNs | null;
  /** Leave the host end down and unrouted (the endpoint's labels are pending: labels/resolver.ts). */
  holdDown?: boolean;
}

/**
 * Both ends are created down: the kernel refuses IFF_UP on a peer at creation (ENOTCONN on 6.18),
 * the host end must be configured (no DAD on its link-local, which answers NDP) before it is up, and
 * nothing may pass before the endpoint's program and policy are in place. The container end comes up
 * in ensureContainerSide, through the handle opened in its netns anyway.
 */
export function createVeth(host: Netlink, spec: PlumbSpec): number {
  host.vethAdd({
    name: spec.hostIfName,
    mac: spec.hostMac,
    mtu: spec.mtu,
    up: false,
    peer: { name: spec.ifName, netns: spec.netns ?? undefined, mac: spec.mac, mtu: spec.mtu, up: false },
  });
  const link = host.linkByName(spec.hostIfName);
  if (!link) throw new Error(`veth ${spec.hostIfName} vanished right after it was created`);
  return link.index;
}

/** Host side, before the link is up: proxy ARP/NDP answers the container's gateway from the host veth. */
function prepareHostSide(spec: PlumbSpec): void {
  setSysctlPath(`/proc/sys/net/ipv4/conf/${spec.hostIfName}/proxy_arp`, '1');
  // Proxy answers are delayed up to 0.8 s by default; the gateway must answer at once.
  setSysctlPath(`/proc/sys/net/ipv4/neigh/${spec.hostIfName}/proxy_delay`, '0');
  if (spec.ips.some((ip) => ip.family === 6)) {
    // NDP answers come from the link-local address: skip the ~2 s of duplicate address detection.
    setSysctlPath(`/proc/sys/net/ipv6/conf/${spec.hostIfName}/accept_dad`, '0');
    setSysctlPath(`/proc/sys/net/ipv6/conf/${spec.hostIfName}/proxy_ndp`, '1');
    setSysctlPath(`/proc/sys/net/ipv6/neigh/${spec.hostIfName}/proxy_delay`, '0');
  }
}

/** Host side: prepared, up, the IPv6 gateway's proxy entry, and the /32 + /128 routes to the endpoint.
 *  Only once the endpoint's program and policy are in place: up is when packets can pass. `known`:
 *  the link as a dump just showed it (restore); up means it was prepared already (this is the only
 *  place that brings a host end up, and it prepares it first), so its sysctls are not written again. */
/** Deletes a host veth by name (false: there was none). The kernel detaches its tcx links with it;
 *  their pins go too, else each one keeps a detached link allocated in the bpffs dir until the next
 *  agent start sweeps it (bpf/tcx.ts). */
export function deleteHostVeth(
  host: Pick<Netlink, 'linkByName' | 'linkDel'>,
  dp: Pick<Datapath, 'releaseDetached'>,
  name: string,
): boolean {
  const link = host.linkByName(name);
  if (!link) return false;
  const deleted = host.linkDel(link.index);
  dp.releaseDetached(link.index);
  return deleted;
}

export function ensureHostSide(host: Netlink, hostIfIndex: number, spec: PlumbSpec, known?: Link): void {
  if (!(known?.up && known.index === hostIfIndex && !spec.holdDown)) prepareHostSide(spec);
  // Labels pending: no link, no routes (the kernel refuses routes through a down device) until they
  // arrive; the container's first packets wait in its neighbour queue meanwhile.
  if (spec.holdDown) return;
  const link = known?.index === hostIfIndex ? known : host.linkByIndex(hostIfIndex);
  if (link && !link.up) host.linkSetUp(hostIfIndex);
  for (const ip of spec.ips) if (ip.family === 6) host.neighProxyAdd(hostIfIndex, ip.gateway);
  for (const ip of spec.ips) {
    host.routeAdd({ dst: hostRouteOf(ip), family: ip.family, index: hostIfIndex, scope: 'link' });
  }
}

/** Container side: /32 (/128) address, an on-link route to the gateway and the default route through it. */
export function ensureContainerSide(spec: PlumbSpec): void {
  if (!spec.netns) return;
  const nl = openNetlink(spec.netns);
  try {
    const link = nl.linkByName(spec.ifName);
    if (!link) throw new Error(`interface ${spec.ifName} not found in ${spec.netns.path}`);
    if (!link.up) nl.linkSetUp(link.index);
    for (const ip of spec.ips) {
      nl.addrAdd(link.index, ip.address, { noDad: true });
      nl.routeAdd({ dst: hostPrefix(ip.gateway, ip.family), family: ip.family, index: link.index, scope: 'link' });
      nl.routeAdd({ dst: 'default', family: ip.family, gateway: ip.gateway, index: link.index });
    }
  } finally {
    nl.close();
  }
}

export function hostRouteOf(ip: EndpointIp): string {
  return hostPrefix(addressOnly(ip.address), ip.family);
}

/** What is missing on the container side (empty when healthy); used by restore and CHECK. */
export function inspectContainerSide(spec: PlumbSpec): string[] {
  if (!spec.netns) return [];
  const problems: string[] = [];
  const nl = openNetlink(spec.netns);
  try {
    const link = nl.linkByName(spec.ifName);
    if (!link) return [`interface ${spec.ifName} is missing in ${spec.netns.path}`];
    if (!link.up) problems.push(`interface ${spec.ifName} is down`);
    if (link.mac.toLowerCase() !== spec.mac.toLowerCase())
      problems.push(`interface ${spec.ifName} has MAC ${link.mac}, expected ${spec.mac}`);
    const addrs = new Set(nl.addrList({ index: link.index }).map((a) => normalizeIfAddr(a.cidr)));
    for (const ip of spec.ips)
      if (!addrs.has(normalizeIfAddr(ip.address))) problems.push(`address ${ip.address} is missing on ${spec.ifName}`);
    for (const fam of [4, 6] as const) {
      const ips = spec.ips.filter((ip) => ip.family === fam);
      if (!ips.length) continue;
      const routes = nl.routeList({ index: link.index, family: fam });
      if (!routes.some((r) => r.dst === 'default')) problems.push(`IPv${fam} default route is missing on ${spec.ifName}`);
    }
  } finally {
    nl.close();
  }
  return problems;
}
