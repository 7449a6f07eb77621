// VXLAN devices in collect-metadata ("external") mode: one device serves every remote endpoint, the
// tunnel key of each packet (set by BPF) says where it goes. No remote, no VNI, no FDB, no learning.

import { type Conn, invalid } from './conn.ts';
import { codeFromNle } from './errors.ts';
import { IFF_NOARP, IFF_UP, lib, NLM_F_CREATE, NLM_F_EXCL, resetKernelError, type Ptr } from './lib.ts';
import { validIfName } from '../net/index.ts';

export interface VxlanOptions {
  name: string;
  /** UDP destination port (and the one it listens on). */
  port: number;
  mtu?: number;
  up?: boolean;
  /** IFF_NOARP: routes through the device need no neighbour resolution (nothing answers on a tunnel). */
  noArp?: boolean;
}

export interface VxlanInfo {
  index: number;
  port: number;
  collectMetadata: boolean;
  mtu: number;
  noArp: boolean;
}

/** One RTM_NEWLINK; 'exists' when a link of that name is there.
 *  No lower device (IFLA_VXLAN_LINK) on purpose: the kernel deletes a VXLAN device together with its
 *  lower device, and a collect_md device routes every packet by its key anyway. The one attribute this
 *  leaves different from an iproute2 device made with `dev eth0` (bench:cross-node's plain peer) is
 *  tso_max_size: the kernel's 65536 here, the lower device's there (veth: 524280). It caps only how far
 *  gso_max_size may be raised (BIG TCP); both devices keep the default 65536, so no packet differs
 *  (scripts/bench/device-parity.ts compares every device of both paths). */
export function vxlanAdd(c: Conn, o: VxlanOptions): void {
  const l = lib();
  const op = 'vxlan add';
  if (!validIfName(o.name)) throw invalid(op, o.name, `invalid interface name "${o.name}"`);
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) throw invalid(op, o.name, `invalid UDP port ${o.port}`);
  if (o.mtu !== undefined && (!Number.isInteger(o.mtu) || o.mtu < 68 || o.mtu > 65535))
    throw invalid(op, o.name, `invalid mtu ${o.mtu}`);
  const link = l.rtnl_link_vxlan_alloc() as Ptr | null;
  if (link === null) throw new Error('rtnl_link_vxlan_alloc: out of memory');
  try {
    l.rtnl_link_set_name(link, o.name);
    if (o.mtu !== undefined) l.rtnl_link_set_mtu(link, o.mtu);
    l.rtnl_link_set_flags(link, (o.up ? IFF_UP : 0) | (o.noArp ? IFF_NOARP : 0));
    l.rtnl_link_vxlan_set_collect_metadata(link, 1);
    l.rtnl_link_vxlan_set_learning(link, 0);
    l.rtnl_link_vxlan_set_port(link, o.port);
    c.exec(op, o.name, (sk) => l.rtnl_link_add(sk, link, NLM_F_CREATE | NLM_F_EXCL));
  } finally {
    l.rtnl_link_put(link);
  }
}

/** The VXLAN settings of a device; null when there is no such link or it is no VXLAN device. */
export function vxlanGet(c: Conn, name: string): VxlanInfo | null {
  const l = lib();
  if (!validIfName(name)) return null;
  const out: (Ptr | null)[] = [null];
  resetKernelError();
  const rc = l.rtnl_link_get_kernel(c.sk, 0, name, out) as number;
  if (rc < 0) {
    if (codeFromNle(rc) === 'not_found') return null;
    throw c.error('vxlan get', name, rc);
  }
  const p = out[0] as Ptr;
  try {
    if (l.rtnl_link_get_type(p) !== 'vxlan') return null;
    const port = [0];
    l.rtnl_link_vxlan_get_port(p, port);
    return {
      index: l.rtnl_link_get_ifindex(p),
      port: port[0],
      collectMetadata: (l.rtnl_link_vxlan_get_collect_metadata(p) as number) > 0,
      mtu: l.rtnl_link_get_mtu(p),
      noArp: ((l.rtnl_link_get_flags(p) as number) & IFF_NOARP) !== 0,
    };
  } finally {
    l.rtnl_link_put(p);
  }
}
