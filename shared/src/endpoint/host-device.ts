// The node side of every network: a device holding each network's gateway addresses, so the gateway
// is a local address of the node (pinging it reaches the node and never leaves it). It is one end of
// a veth pair, like cilium_host/cilium_net: dummy devices are not in every kernel (not in this CI's),
// veth is, since every endpoint needs it anyway.
import type { Network } from '../types.ts';
import type { Netlink } from '../netlink/index.ts';
import { setSysctlPath } from '../sysctl/index.ts';
import { hostPrefix } from '../net/index.ts';

export function ensureHostDevice(host: Netlink, name: string): number {
  let link = host.linkByName(name);
  if (!link) {
    host.vethAdd({ name, up: true, peer: { name: hostDevicePeer(name), up: true } });
    link = host.linkByName(name);
  }
  if (!link) throw new Error(`host device ${name} could not be created`);
  if (!link.up) host.linkSetUp(link.index);
  return link.index;
}

export function hostDevicePeer(name: string): string {
  return `${name.slice(0, 13)}_n`;
}

export function ensureGateways(host: Netlink, hostDevice: string, network: Network): void {
  const index = ensureHostDevice(host, hostDevice);
  for (const s of network.subnets) {
    host.addrAdd(index, hostPrefix(s.gateway, s.family), { noDad: true });
  }
}

export function removeGateways(host: Netlink, hostDevice: string, network: Network): void {
  const link = host.linkByName(hostDevice);
  if (!link) return;
  for (const s of network.subnets) host.addrDel(link.index, hostPrefix(s.gateway, s.family));
}

/** Routing between endpoints and to the node needs forwarding; IPv6 only when a network uses it,
 *  because turning it on makes the kernel ignore router advertisements on the node's own links. */
export function enableForwarding(ipv6: boolean): void {
  setSysctlPath('/proc/sys/net/ipv4/ip_forward', '1');
  if (ipv6) setSysctlPath('/proc/sys/net/ipv6/conf/all/forwarding', '1');
}
