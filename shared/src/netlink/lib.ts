// koffi bindings to libnl-3 / libnl-route-3 (and the bits of libc we need), loaded on first use so that
// importing the netlink module (for types, errors, helpers) never requires the native libraries.
//
// koffi 3 passes pointers as BigInt and returns NULL as null. Every object we allocate has exactly one
// owner in our code and is released in a finally block by the function that allocated it.

import koffi, { type LibraryHandle } from 'koffi';
import { extackMessage } from './errors.ts';

export type Ptr = bigint;
// biome-ignore lint/suspicious/noExplicitAny: koffi functions take and return whatever their C signature says
type Fn = (...args: any[]) => any;

export const NETLINK_ROUTE = 0;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const IFF_UP = 0x1;
export const IFF_NOARP = 0x80;
export const IFA_F_NODAD = 0x02;
export const NTF_PROXY = 0x08;
export const AF_LLC = 26; // what libnl uses for link-layer addresses
const NL_CB_CUSTOM = 3;
const NL_STOP = 2;
const SOL_NETLINK = 270;
const NETLINK_EXT_ACK = 11;

function bind() {
  const nl = koffi.load('libnl-3.so.200');
  const rt = koffi.load('libnl-route-3.so.200');
  const c = koffi.load('libc.so.6');
  for (const t of [
    'nl_sock',
    'nl_addr',
    'nl_cache',
    'nl_object',
    'rtnl_link',
    'rtnl_addr',
    'rtnl_route',
    'rtnl_nexthop',
    'rtnl_neigh',
    'rtnl_rule',
  ])
    koffi.opaque(t);
  const f = (lib: LibraryHandle, decl: string): Fn => lib.func(decl);
  const ErrCb = koffi.proto('int membrane_nl_err_cb(void *nla, void *nlerr, void *arg)');
  return {
    ErrCb,
    // socket / core
    nl_socket_alloc: f(nl, 'nl_sock *nl_socket_alloc(void)'),
    nl_socket_free: f(nl, 'void nl_socket_free(nl_sock *sk)'),
    nl_connect: f(nl, 'int nl_connect(nl_sock *sk, int protocol)'),
    nl_socket_get_fd: f(nl, 'int nl_socket_get_fd(nl_sock *sk)'),
    nl_socket_modify_err_cb: f(nl, 'int nl_socket_modify_err_cb(nl_sock *sk, int kind, void *cb, void *arg)'),
    nl_geterror: f(nl, 'const char *nl_geterror(int err)'),
    nl_addr_build: f(nl, 'nl_addr *nl_addr_build(int family, const void *buf, size_t size)'),
    nl_addr_put: f(nl, 'void nl_addr_put(nl_addr *a)'),
    nl_addr_get_family: f(nl, 'int nl_addr_get_family(nl_addr *a)'),
    nl_addr_get_len: f(nl, 'unsigned int nl_addr_get_len(nl_addr *a)'),
    nl_addr_get_prefixlen: f(nl, 'unsigned int nl_addr_get_prefixlen(nl_addr *a)'),
    nl_addr_set_prefixlen: f(nl, 'void nl_addr_set_prefixlen(nl_addr *a, int prefixlen)'),
    nl_addr_get_binary_addr: f(nl, 'void *nl_addr_get_binary_addr(nl_addr *a)'),
    nl_cache_free: f(nl, 'void nl_cache_free(nl_cache *c)'),
    nl_cache_get_first: f(nl, 'nl_object *nl_cache_get_first(nl_cache *c)'),
    nl_cache_get_next: f(nl, 'nl_object *nl_cache_get_next(nl_object *o)'),
    // links
    rtnl_link_alloc: f(rt, 'rtnl_link *rtnl_link_alloc(void)'),
    rtnl_link_put: f(rt, 'void rtnl_link_put(rtnl_link *l)'),
    rtnl_link_veth_alloc: f(rt, 'rtnl_link *rtnl_link_veth_alloc(void)'),
    rtnl_link_veth_get_peer: f(rt, 'rtnl_link *rtnl_link_veth_get_peer(rtnl_link *l)'),
    rtnl_link_veth_release: f(rt, 'void rtnl_link_veth_release(rtnl_link *l)'),
    rtnl_link_set_type: f(rt, 'int rtnl_link_set_type(rtnl_link *l, const char *kind)'),
    rtnl_link_set_name: f(rt, 'void rtnl_link_set_name(rtnl_link *l, const char *name)'),
    rtnl_link_set_mtu: f(rt, 'void rtnl_link_set_mtu(rtnl_link *l, unsigned int mtu)'),
    rtnl_link_set_addr: f(rt, 'void rtnl_link_set_addr(rtnl_link *l, nl_addr *a)'),
    rtnl_link_set_flags: f(rt, 'void rtnl_link_set_flags(rtnl_link *l, unsigned int flags)'),
    rtnl_link_set_ifindex: f(rt, 'void rtnl_link_set_ifindex(rtnl_link *l, int index)'),
    rtnl_link_set_ns_fd: f(rt, 'void rtnl_link_set_ns_fd(rtnl_link *l, int fd)'),
    rtnl_link_add: f(rt, 'int rtnl_link_add(nl_sock *sk, rtnl_link *l, int flags)'),
    rtnl_link_change: f(rt, 'int rtnl_link_change(nl_sock *sk, rtnl_link *orig, rtnl_link *changes, int flags)'),
    rtnl_link_delete: f(rt, 'int rtnl_link_delete(nl_sock *sk, rtnl_link *l)'),
    rtnl_link_get_kernel: f(rt, 'int rtnl_link_get_kernel(nl_sock *sk, int index, const char *name, _Out_ rtnl_link **res)'),
    rtnl_link_alloc_cache: f(rt, 'int rtnl_link_alloc_cache(nl_sock *sk, int family, _Out_ nl_cache **res)'),
    rtnl_link_get_ifindex: f(rt, 'int rtnl_link_get_ifindex(rtnl_link *l)'),
    rtnl_link_get_name: f(rt, 'const char *rtnl_link_get_name(rtnl_link *l)'),
    rtnl_link_get_mtu: f(rt, 'unsigned int rtnl_link_get_mtu(rtnl_link *l)'),
    rtnl_link_get_addr: f(rt, 'nl_addr *rtnl_link_get_addr(rtnl_link *l)'),
    rtnl_link_get_flags: f(rt, 'unsigned int rtnl_link_get_flags(rtnl_link *l)'),
    rtnl_link_get_type: f(rt, 'const char *rtnl_link_get_type(rtnl_link *l)'),
    // vxlan (the overlay's collect_md device)
    rtnl_link_vxlan_alloc: f(rt, 'rtnl_link *rtnl_link_vxlan_alloc(void)'),
    rtnl_link_vxlan_set_port: f(rt, 'int rtnl_link_vxlan_set_port(rtnl_link *l, uint32_t port)'),
    rtnl_link_vxlan_get_port: f(rt, 'int rtnl_link_vxlan_get_port(rtnl_link *l, _Out_ uint32_t *port)'),
    rtnl_link_vxlan_set_collect_metadata: f(rt, 'int rtnl_link_vxlan_set_collect_metadata(rtnl_link *l, int on)'),
    rtnl_link_vxlan_get_collect_metadata: f(rt, 'int rtnl_link_vxlan_get_collect_metadata(rtnl_link *l)'),
    rtnl_link_vxlan_set_learning: f(rt, 'int rtnl_link_vxlan_set_learning(rtnl_link *l, uint8_t on)'),
    // addresses
    rtnl_addr_alloc: f(rt, 'rtnl_addr *rtnl_addr_alloc(void)'),
    rtnl_addr_put: f(rt, 'void rtnl_addr_put(rtnl_addr *a)'),
    rtnl_addr_set_ifindex: f(rt, 'void rtnl_addr_set_ifindex(rtnl_addr *a, int index)'),
    rtnl_addr_set_local: f(rt, 'int rtnl_addr_set_local(rtnl_addr *a, nl_addr *local)'),
    rtnl_addr_set_flags: f(rt, 'void rtnl_addr_set_flags(rtnl_addr *a, unsigned int flags)'),
    rtnl_addr_add: f(rt, 'int rtnl_addr_add(nl_sock *sk, rtnl_addr *a, int flags)'),
    rtnl_addr_delete: f(rt, 'int rtnl_addr_delete(nl_sock *sk, rtnl_addr *a, int flags)'),
    rtnl_addr_alloc_cache: f(rt, 'int rtnl_addr_alloc_cache(nl_sock *sk, _Out_ nl_cache **res)'),
    rtnl_addr_get_ifindex: f(rt, 'int rtnl_addr_get_ifindex(rtnl_addr *a)'),
    rtnl_addr_get_local: f(rt, 'nl_addr *rtnl_addr_get_local(rtnl_addr *a)'),
    rtnl_addr_get_prefixlen: f(rt, 'int rtnl_addr_get_prefixlen(rtnl_addr *a)'),
    // routes
    rtnl_route_alloc: f(rt, 'rtnl_route *rtnl_route_alloc(void)'),
    rtnl_route_put: f(rt, 'void rtnl_route_put(rtnl_route *r)'),
    rtnl_route_set_family: f(rt, 'int rtnl_route_set_family(rtnl_route *r, uint8_t family)'),
    rtnl_route_set_dst: f(rt, 'int rtnl_route_set_dst(rtnl_route *r, nl_addr *dst)'),
    rtnl_route_set_table: f(rt, 'void rtnl_route_set_table(rtnl_route *r, uint32_t table)'),
    rtnl_route_set_scope: f(rt, 'void rtnl_route_set_scope(rtnl_route *r, uint8_t scope)'),
    rtnl_route_set_protocol: f(rt, 'void rtnl_route_set_protocol(rtnl_route *r, uint8_t proto)'),
    rtnl_route_set_type: f(rt, 'int rtnl_route_set_type(rtnl_route *r, uint8_t type)'),
    rtnl_route_set_pref_src: f(rt, 'void rtnl_route_set_pref_src(rtnl_route *r, nl_addr *src)'),
    rtnl_route_get_pref_src: f(rt, 'nl_addr *rtnl_route_get_pref_src(rtnl_route *r)'),
    rtnl_route_set_metric: f(rt, 'int rtnl_route_set_metric(rtnl_route *r, int metric, unsigned int value)'),
    rtnl_route_add_nexthop: f(rt, 'void rtnl_route_add_nexthop(rtnl_route *r, rtnl_nexthop *nh)'),
    rtnl_route_add: f(rt, 'int rtnl_route_add(nl_sock *sk, rtnl_route *r, int flags)'),
    rtnl_route_delete: f(rt, 'int rtnl_route_delete(nl_sock *sk, rtnl_route *r, int flags)'),
    rtnl_route_alloc_cache: f(rt, 'int rtnl_route_alloc_cache(nl_sock *sk, int family, int flags, _Out_ nl_cache **res)'),
    rtnl_route_get_table: f(rt, 'uint32_t rtnl_route_get_table(rtnl_route *r)'),
    rtnl_route_get_family: f(rt, 'uint8_t rtnl_route_get_family(rtnl_route *r)'),
    rtnl_route_get_dst: f(rt, 'nl_addr *rtnl_route_get_dst(rtnl_route *r)'),
    rtnl_route_get_scope: f(rt, 'uint8_t rtnl_route_get_scope(rtnl_route *r)'),
    rtnl_route_get_protocol: f(rt, 'uint8_t rtnl_route_get_protocol(rtnl_route *r)'),
    rtnl_route_get_type: f(rt, 'uint8_t rtnl_route_get_type(rtnl_route *r)'),
    rtnl_route_get_priority: f(rt, 'uint32_t rtnl_route_get_priority(rtnl_route *r)'),
    rtnl_route_get_nnexthops: f(rt, 'int rtnl_route_get_nnexthops(rtnl_route *r)'),
    rtnl_route_nexthop_n: f(rt, 'rtnl_nexthop *rtnl_route_nexthop_n(rtnl_route *r, int n)'),
    rtnl_route_nh_alloc: f(rt, 'rtnl_nexthop *rtnl_route_nh_alloc(void)'),
    rtnl_route_nh_free: f(rt, 'void rtnl_route_nh_free(rtnl_nexthop *nh)'),
    rtnl_route_nh_set_ifindex: f(rt, 'void rtnl_route_nh_set_ifindex(rtnl_nexthop *nh, int index)'),
    rtnl_route_nh_set_gateway: f(rt, 'void rtnl_route_nh_set_gateway(rtnl_nexthop *nh, nl_addr *gw)'),
    rtnl_route_nh_get_ifindex: f(rt, 'int rtnl_route_nh_get_ifindex(rtnl_nexthop *nh)'),
    rtnl_route_nh_get_gateway: f(rt, 'nl_addr *rtnl_route_nh_get_gateway(rtnl_nexthop *nh)'),
    // policy routing rules
    rtnl_rule_alloc: f(rt, 'rtnl_rule *rtnl_rule_alloc(void)'),
    rtnl_rule_put: f(rt, 'void rtnl_rule_put(rtnl_rule *r)'),
    rtnl_rule_alloc_cache: f(rt, 'int rtnl_rule_alloc_cache(nl_sock *sk, int family, _Out_ nl_cache **res)'),
    rtnl_rule_add: f(rt, 'int rtnl_rule_add(nl_sock *sk, rtnl_rule *r, int flags)'),
    rtnl_rule_set_family: f(rt, 'void rtnl_rule_set_family(rtnl_rule *r, int family)'),
    rtnl_rule_set_prio: f(rt, 'void rtnl_rule_set_prio(rtnl_rule *r, uint32_t prio)'),
    rtnl_rule_set_mark: f(rt, 'void rtnl_rule_set_mark(rtnl_rule *r, uint32_t mark)'),
    rtnl_rule_set_mask: f(rt, 'void rtnl_rule_set_mask(rtnl_rule *r, uint32_t mask)'),
    rtnl_rule_set_table: f(rt, 'void rtnl_rule_set_table(rtnl_rule *r, uint32_t table)'),
    rtnl_rule_set_action: f(rt, 'void rtnl_rule_set_action(rtnl_rule *r, uint8_t action)'),
    rtnl_rule_get_family: f(rt, 'int rtnl_rule_get_family(rtnl_rule *r)'),
    rtnl_rule_get_prio: f(rt, 'uint32_t rtnl_rule_get_prio(rtnl_rule *r)'),
    rtnl_rule_get_mark: f(rt, 'uint32_t rtnl_rule_get_mark(rtnl_rule *r)'),
    rtnl_rule_get_mask: f(rt, 'uint32_t rtnl_rule_get_mask(rtnl_rule *r)'),
    rtnl_rule_get_table: f(rt, 'uint32_t rtnl_rule_get_table(rtnl_rule *r)'),
    // neighbours
    rtnl_neigh_alloc: f(rt, 'rtnl_neigh *rtnl_neigh_alloc(void)'),
    rtnl_neigh_put: f(rt, 'void rtnl_neigh_put(rtnl_neigh *n)'),
    rtnl_neigh_set_ifindex: f(rt, 'void rtnl_neigh_set_ifindex(rtnl_neigh *n, int index)'),
    rtnl_neigh_set_dst: f(rt, 'int rtnl_neigh_set_dst(rtnl_neigh *n, nl_addr *dst)'),
    rtnl_neigh_set_flags: f(rt, 'void rtnl_neigh_set_flags(rtnl_neigh *n, unsigned int flags)'),
    rtnl_neigh_add: f(rt, 'int rtnl_neigh_add(nl_sock *sk, rtnl_neigh *n, int flags)'),
    rtnl_neigh_delete: f(rt, 'int rtnl_neigh_delete(nl_sock *sk, rtnl_neigh *n, int flags)'),
    // libc
    setsockopt: f(c, 'int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
    memcpy: f(c, 'void *memcpy(void *dst, void *src, size_t n)'),
    strerror: f(c, 'const char *strerror(int errnum)'),
  };
}

export type Lib = ReturnType<typeof bind>;
let bound: Lib | null = null;
let errCbPtr: Ptr | null = null;

export function lib(): Lib {
  return (bound ??= bind());
}

/**
 * What the kernel said about the last failed request. libnl folds kernel errnos into its own NLE_*
 * codes (ENETUNREACH, ENOTCONN, ... all become "Unspecific failure"), so every socket gets an error
 * callback that records the real errno and the extended-ack text, then lets libnl stop as usual.
 * All calls are synchronous on the main thread, so one slot is enough; reset it before each request.
 */
export interface KernelError {
  errno: number;
  extack?: string;
}
export let lastKernelError: KernelError | null = null;
export function resetKernelError(): void {
  lastKernelError = null;
}

function onError(_nla: Ptr, nlerr: Ptr): number {
  // Never throw across the C boundary.
  try {
    const errno = -(koffi.decode(nlerr, 'int') as number);
    let extack: string | undefined;
    try {
      const hdr = nlerr - 16n; // struct nlmsghdr precedes the payload
      const len = koffi.decode(hdr, 'uint32_t') as number;
      if (len >= 36 && len < 1 << 20) extack = extackMessage(copyOut(hdr, len));
    } catch {
      // best effort: no text
    }
    lastKernelError = { errno, extack };
  } catch {
    lastKernelError = null;
  }
  return NL_STOP; // libnl then returns -nl_syserr2nlerr(errno), as without a callback
}

/** Install the error callback and ask for extended acks (human-readable kernel reasons). */
export function prepareSocket(sk: Ptr): void {
  const l = lib();
  errCbPtr ??= koffi.register(onError, koffi.pointer(l.ErrCb));
  l.nl_socket_modify_err_cb(sk, NL_CB_CUSTOM, errCbPtr, null);
}

export function enableExtAck(sk: Ptr): void {
  const l = lib();
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  // Best effort: without it errors just lack the kernel's explanation.
  l.setsockopt(l.nl_socket_get_fd(sk), SOL_NETLINK, NETLINK_EXT_ACK, one, 4);
}

/**
 * Copy native memory into a fresh Buffer. Not koffi.view()/koffi.decode(p, type, n): in koffi 3.3.4 those
 * leak (~230 and ~20 bytes per call, measured), which adds up over a long-running agent's list calls.
 */
export function copyOut(p: Ptr, len: number): Uint8Array {
  const b = Buffer.alloc(len);
  lib().memcpy(b, p, len);
  return b;
}

/** nl_addr -> its bytes (4, 16 or 6 for MACs). The nl_addr stays owned by whoever owns it. */
export function addrBytes(a: Ptr): Uint8Array {
  const l = lib();
  const len = l.nl_addr_get_len(a) as number;
  if (len === 0) return new Uint8Array(0);
  const p = l.nl_addr_get_binary_addr(a) as Ptr | null;
  if (p === null) return new Uint8Array(0);
  return copyOut(p, len);
}
