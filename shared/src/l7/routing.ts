// How diverted packets reach the proxy's sockets: the datapath marks them (bpf/lib/proxy.h, same
// numbers) and a policy routing rule sends marked packets to a table whose only route makes every
// destination local, so the stack delivers them to the socket the datapath assigned (a SYN) or to
// the proxy's accepted socket with that 4-tuple (every later packet). Node-wide and shared by every
// agent on the node; added idempotently and never removed (like the forwarding sysctls): a rule that
// only matches packets with our mark changes nothing else.
import type { Netlink } from '../netlink/index.ts';
import { RTN_LOCAL } from '../netlink/index.ts';
import { setSysctlPath, sysctlIfPath } from '../sysctl/index.ts';

/** skb->mark nibble the datapath sets on packets for the proxy (bits 8-11; the port rides in bits 16-31). */
export const MARK_TO_PROXY = 0x0e00;
export const MARK_MAGIC_MASK = 0x0f00;
/** "MB": the routing table with the local default routes. */
export const PROXY_ROUTE_TABLE = 0x4d42;
/** Before the main table; after the local table (0), which never matches a diverted destination. */
export const PROXY_RULE_PRIORITY = 9;

export function ensureProxyRouting(host: Netlink, hostDevice: string, ipv6: boolean): void {
  const lo = host.linkByName('lo');
  if (!lo) throw new Error('no loopback device: cannot route diverted packets to the L7 proxy');
  for (const family of ipv6 ? ([4, 6] as const) : ([4] as const)) {
    host.ruleEnsure({ family, priority: PROXY_RULE_PRIORITY, mark: MARK_TO_PROXY, mask: MARK_MAGIC_MASK, table: PROXY_ROUTE_TABLE });
    host.routeAdd({ dst: 'default', family, index: lo.index, table: PROXY_ROUTE_TABLE, type: RTN_LOCAL, scope: 'host' });
  }
  // Connections from outside the node to a pod's L7 port come back to the stack through the host
  // device (the datapath's hairpin); their source is not routed via it, so reverse-path filtering
  // there would drop them.
  setSysctlPath(sysctlIfPath(4, hostDevice, 'rp_filter'), '0');
}
