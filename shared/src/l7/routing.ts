// How diverted packets reach the proxy's sockets: the datapath marks them (bpf/lib/proxy.h, same
// numbers) and a policy routing rule sends marked packets to a table whose only route makes every
// destination local, so the stack delivers them to the socket the datapath assigned (a SYN) or to
// the proxy's accepted socket with that 4-tuple (every later packet). Node-wide and shared by every
// agent on the node; added idempotently and never removed (like the forwarding sysctls): a rule that
// only matches packets with our mark changes nothing else.
import koffi from 'koffi';
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
    host.ruleEnsure({
      family,
      priority: PROXY_RULE_PRIORITY,
      mark: MARK_TO_PROXY,
      mask: MARK_MAGIC_MASK,
      table: PROXY_ROUTE_TABLE,
    });
    host.routeAdd({ dst: 'default', family, index: lo.index, table: PROXY_ROUTE_TABLE, type: RTN_LOCAL, scope: 'host' });
  }
  // Connections from outside the node to a pod's L7 port come back to the stack through the host
  // device (the datapath's hairpin); their source is not routed via it, so strict reverse-path
  // filtering there would drop them. Loose (2), not off: the kernel applies the larger of the
  // device's value and conf/all's, so 0 here left a node-wide strict rp_filter (all = 1) in force.
  setSysctlPath(sysctlIfPath(4, hostDevice, 'rp_filter'), '2');
}

/** nftables table (node-wide, shared by every agent) holding the rule below. */
export const NFT_TABLE = 'membrane_l7';

type NftFn = (...args: unknown[]) => unknown;
let nft: { ctxNew: NftFn; runCmd: NftFn; bufferError: NftFn; getError: NftFn; free: NftFn } | undefined;

/**
 * Packets of a diverted connection that arrive from outside the node's pods (the world, the host,
 * other nodes) are not marked by any program of ours before the stack routes them, and TCP early demux
 * finds the proxy's transparent socket for their 4-tuple, after which forwarding drops them. The
 * classic TPROXY companion rule fixes it: a packet that belongs to a transparent socket gets our mark,
 * so the proxy routing table delivers it locally (Cilium installs the same with iptables'
 * socket --transparent). The SYN, which has no socket yet, still goes through the datapath's hairpin.
 * Only TCP through the host stack pays for the lookup; pod-to-pod traffic (redirect_peer) never
 * reaches netfilter. Installed when a policy first needs the proxy; never removed (node-wide).
 */
export function ensureTransparentSocketMark(): void {
  if (!nft) {
    const lib = koffi.load('libnftables.so.1');
    nft = {
      ctxNew: lib.func('void *nft_ctx_new(uint32_t flags)') as NftFn,
      runCmd: lib.func('int nft_run_cmd_from_buffer(void *ctx, const char *buf)') as NftFn,
      bufferError: lib.func('int nft_ctx_buffer_error(void *ctx)') as NftFn,
      getError: lib.func('const char *nft_ctx_get_error_buffer(void *ctx)') as NftFn,
      free: lib.func('void nft_ctx_free(void *ctx)') as NftFn,
    };
  }
  const mark = `0x${MARK_TO_PROXY.toString(16).padStart(8, '0')}`;
  const mask = `0x${MARK_MAGIC_MASK.toString(16).padStart(8, '0')}`;
  const keep = `0x${(~MARK_MAGIC_MASK >>> 0).toString(16)}`;
  const cmds = [
    `add table inet ${NFT_TABLE}`,
    `add chain inet ${NFT_TABLE} prerouting { type filter hook prerouting priority mangle; policy accept; }`,
    `flush chain inet ${NFT_TABLE} prerouting`,
    `add rule inet ${NFT_TABLE} prerouting meta l4proto tcp meta mark & ${mask} != ${mark} socket transparent 1 meta mark set meta mark & ${keep} | ${mark}`,
  ].join('\n');
  const ctx = nft.ctxNew(0);
  if (!ctx) throw new Error('nftables: cannot create a context');
  try {
    nft.bufferError(ctx);
    if (nft.runCmd(ctx, cmds) !== 0)
      throw new Error(`nftables: cannot install the L7 proxy's socket mark rule: ${String(nft.getError(ctx)).trim()}`);
  } finally {
    nft.free(ctx);
  }
}
