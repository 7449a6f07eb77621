// Links: lookup, listing, veth (peer created directly in its netns), delete, set up.

import type { NetNs } from '../netns/index.ts';
import { type Conn, drainCache, invalid } from './conn.ts';
import { codeFromNle, NetlinkError } from './errors.ts';
import { addrBytes, AF_LLC, IFF_UP, lib, NLM_F_CREATE, NLM_F_EXCL, resetKernelError, type Ptr } from './lib.ts';
import { formatMac, parseMac, validIfName } from '../net/index.ts';

export interface Link {
  index: number;
  name: string;
  mtu: number;
  mac: string;
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** IFLA_INFO_KIND ("veth", "dummy", ...); absent for physical devices and lo. */
  kind?: string;
}

export interface VethPeerOptions {
  name: string;
  /** Create the peer directly in this netns (no move). */
  netns?: NetNs;
  mac?: string;
  /** Default: the host side's mtu. */
  mtu?: number;
  up?: boolean;
}

export interface VethOptions {
  name: string;
  mac?: string;
  /** Default: the peer's mtu, else the kernel's 1500. */
  mtu?: number;
  up?: boolean;
  peer: VethPeerOptions;
}

const AF_UNSPEC = 0;

function readLink(p: Ptr): Link {
  const l = lib();
  const addr = l.rtnl_link_get_addr(p) as Ptr | null;
  const kind = l.rtnl_link_get_type(p) as string | null;
  const link: Link = {
    index: l.rtnl_link_get_ifindex(p),
    name: l.rtnl_link_get_name(p) ?? '',
    mtu: l.rtnl_link_get_mtu(p),
    mac: addr === null ? '' : formatMac(addrBytes(addr)),
    up: ((l.rtnl_link_get_flags(p) as number) & IFF_UP) !== 0,
  };
  if (kind) link.kind = kind;
  return link;
}

/** RTM_GETLINK by index or name; null when there is no such link. */
export function linkGet(c: Conn, index: number, name: string | null): Link | null {
  const l = lib();
  if (name !== null && !validIfName(name)) return null; // cannot exist; the kernel would say EINVAL
  if (name === null && !(Number.isInteger(index) && index > 0)) return null;
  const out: (Ptr | null)[] = [null];
  resetKernelError();
  const rc = l.rtnl_link_get_kernel(c.sk, name === null ? index : 0, name, out) as number;
  if (rc < 0) {
    if (codeFromNle(rc) === 'not_found') return null;
    throw c.error('link get', name ?? `ifindex ${index}`, rc);
  }
  const p = out[0] as Ptr;
  try {
    return readLink(p);
  } finally {
    l.rtnl_link_put(p);
  }
}

export function linkList(c: Conn): Link[] {
  const l = lib();
  const out: (Ptr | null)[] = [null];
  c.exec('link list', 'all', (sk) => l.rtnl_link_alloc_cache(sk, AF_UNSPEC, out));
  return drainCache(out[0] as Ptr, readLink);
}

/** Apply name/mtu/mac/up to an unsent link object. */
function configure(op: string, object: string, p: Ptr, o: { name: string; mtu?: number; mac?: string; up?: boolean }) {
  const l = lib();
  if (!validIfName(o.name)) throw invalid(op, object, `invalid interface name "${o.name}"`);
  l.rtnl_link_set_name(p, o.name);
  if (o.mtu !== undefined) {
    if (!Number.isInteger(o.mtu) || o.mtu < 68 || o.mtu > 65535) throw invalid(op, object, `invalid mtu ${o.mtu}`);
    l.rtnl_link_set_mtu(p, o.mtu);
  }
  if (o.mac !== undefined) {
    let bytes: Uint8Array;
    try {
      bytes = parseMac(o.mac);
    } catch (e) {
      throw invalid(op, object, (e as Error).message);
    }
    if (bytes[0] & 1) throw invalid(op, object, `MAC ${o.mac} is a multicast address`);
    const a = l.nl_addr_build(AF_LLC, Buffer.from(bytes), 6) as Ptr | null;
    if (a === null) throw new Error('nl_addr_build: out of memory');
    try {
      l.rtnl_link_set_addr(p, a); // takes its own reference
    } finally {
      l.nl_addr_put(a);
    }
  }
  if (o.up) l.rtnl_link_set_flags(p, IFF_UP);
}

export function vethObject(o: VethOptions): string {
  return `${o.name} (peer ${o.peer?.name}${o.peer?.netns ? ` in ${o.peer.netns.path}` : ''})`;
}

/**
 * One RTM_NEWLINK creating both ends; the peer is born in o.peer.netns with its final name, MTU and MAC.
 * The peer's IFF_UP is NOT sent: kernels apply the peer's ifi_flags before the two ends are linked, and
 * veth_open() then fails with ENOTCONN (seen on 6.18). bringPeerUp does it afterwards, inside the netns.
 * All or nothing: if bringing the peer up fails, the pair is deleted again.
 */
export function vethAdd(c: Conn, o: VethOptions, bringPeerUp: (name: string, ns?: NetNs) => void): void {
  const l = lib();
  const op = 'veth add';
  const object = vethObject(o);
  if (!o.peer) throw invalid(op, object, 'peer is required');
  const link = l.rtnl_link_veth_alloc() as Ptr | null;
  if (link === null) throw new Error('rtnl_link_veth_alloc: out of memory');
  const peer = l.rtnl_link_veth_get_peer(link) as Ptr; // +1 reference, dropped below
  try {
    configure(op, object, link, { name: o.name, mac: o.mac, mtu: o.mtu ?? o.peer.mtu, up: o.up });
    configure(op, object, peer, { name: o.peer.name, mac: o.peer.mac, mtu: o.peer.mtu ?? o.mtu, up: false });
    if (o.peer.netns) {
      if (o.peer.netns.fd < 0) throw invalid(op, object, `netns ${o.peer.netns.path} is closed`);
      l.rtnl_link_set_ns_fd(peer, o.peer.netns.fd);
    }
    c.exec(op, object, (sk) => l.rtnl_link_add(sk, link, NLM_F_CREATE | NLM_F_EXCL));
  } finally {
    l.rtnl_link_put(peer);
    l.rtnl_link_veth_release(link); // frees link and the peer it owns
  }
  if (!o.peer.up) return;
  try {
    bringPeerUp(o.peer.name, o.peer.netns);
  } catch (e) {
    try {
      linkDel(c, o.name); // deleting one end deletes both
    } catch {
      // keep the original error
    }
    if (e instanceof NetlinkError)
      throw new NetlinkError({ op, object, reason: `bringing peer up: ${e.message}`, errno: e.errno, nle: e.nle, code: e.code });
    throw e;
  }
}

/** Delete by name or index; false when it is already gone. */
export function linkDel(c: Conn, nameOrIndex: string | number): boolean {
  const l = lib();
  const byName = typeof nameOrIndex === 'string';
  const object = byName ? nameOrIndex : `ifindex ${nameOrIndex}`;
  if (byName ? !validIfName(nameOrIndex) : !(Number.isInteger(nameOrIndex) && nameOrIndex > 0))
    throw invalid('link del', object, 'invalid interface name or index');
  const link = l.rtnl_link_alloc() as Ptr | null;
  if (link === null) throw new Error('rtnl_link_alloc: out of memory');
  try {
    if (byName) l.rtnl_link_set_name(link, nameOrIndex);
    else l.rtnl_link_set_ifindex(link, nameOrIndex);
    c.exec('link del', object, (sk) => l.rtnl_link_delete(sk, link));
    return true;
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'not_found') return false;
    throw e;
  } finally {
    l.rtnl_link_put(link);
  }
}

/**
 * Set IFF_UP on an existing link, by index or (index 0) by name. RTM_NEWLINK without NLM_F_CREATE is the
 * kernel's "modify": it finds the device by ifi_index or IFLA_IFNAME and applies ifi_flags/ifi_change.
 */
export function linkSetUp(c: Conn, index: number, name?: string): void {
  const l = lib();
  const object = () => name ?? c.dev(index);
  const link = l.rtnl_link_alloc() as Ptr | null;
  if (link === null) throw new Error('rtnl_link_alloc: out of memory');
  try {
    if (name !== undefined) l.rtnl_link_set_name(link, name);
    else l.rtnl_link_set_ifindex(link, index);
    l.rtnl_link_set_flags(link, IFF_UP);
    c.exec('link set up', object, (sk) => l.rtnl_link_add(sk, link, 0));
  } finally {
    l.rtnl_link_put(link);
  }
}
