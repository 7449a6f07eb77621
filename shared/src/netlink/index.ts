// rtnetlink through libnl-route-3 (koffi). A Netlink handle is one route socket bound, for its whole life,
// to the netns it was opened in: openNetlink(ns) switches the main thread into ns only for socket(2)
// and switches back; every later request on the handle acts in ns without any further setns.
//
// All calls are synchronous (a few hundred microseconds each); the agent serialises endpoint work anyway.
// Names follow vishvananda/netlink (linkAdd, addrAdd, routeAdd ...).

import type { NetNs } from '../netns/index.ts';
import { addrAdd, addrDel, addrList, neighProxyAdd, neighProxyDel, type Addr } from './addrs.ts';
import { Conn } from './conn.ts';
import { linkDel, linkGet, linkList, linkSetUp, vethAdd, type Link, type VethOptions } from './links.ts';
import { routeAdd, routeDel, routeList, type Route, type RouteSpec } from './routes.ts';
import { ruleEnsure, ruleList, type RuleSpec } from './rules.ts';
import { vxlanAdd, vxlanGet, type VxlanInfo, type VxlanOptions } from './vxlan.ts';
import type { Family } from '../net/index.ts';

export { NetlinkError, isNotFound, codeFromErrno, codeFromNle, type NetlinkErrorCode } from './errors.ts';
export type { Addr } from './addrs.ts';
export type { Link, VethOptions, VethPeerOptions } from './links.ts';
export { RT_TABLE_MAIN, RTPROT_STATIC, RTN_LOCAL, type Route, type RouteSpec } from './routes.ts';
export type { RuleSpec } from './rules.ts';
export type { VxlanInfo, VxlanOptions } from './vxlan.ts';

export interface Netlink {
  /** The netns the socket lives in; undefined = the netns current at openNetlink() time. */
  readonly netns?: NetNs;
  linkByName(name: string): Link | null;
  linkByIndex(index: number): Link | null;
  linkList(): Link[];
  /** Create a veth pair; the peer is created directly in peer.netns (never moved). Errors: 'exists' ... */
  vethAdd(o: VethOptions): void;
  /** A collect-metadata VXLAN device (no remote, no VNI, no learning). Errors: 'exists' ... */
  vxlanAdd(o: VxlanOptions): void;
  /** Its VXLAN settings; null when there is no such link or it is no VXLAN device. */
  vxlanGet(name: string): VxlanInfo | null;
  /** false when already gone. */
  linkDel(nameOrIndex: string | number): boolean;
  linkSetUp(index: number): void;
  /** Idempotent: an identical existing address is success. noDad sets IFA_F_NODAD. */
  addrAdd(index: number, cidr: string, o?: { noDad?: boolean }): void;
  addrDel(index: number, cidr: string): boolean;
  addrList(o?: { index?: number; family?: Family }): Addr[];
  /** Replace semantics (NLM_F_CREATE|NLM_F_REPLACE): idempotent. */
  routeAdd(r: RouteSpec): void;
  routeDel(r: RouteSpec): boolean;
  /** table: default main (254), 0 = all tables. */
  routeList(o?: { index?: number; family?: Family; table?: number }): Route[];
  /** Policy routing rule; idempotent (an identical rule is left alone). */
  ruleEnsure(r: RuleSpec): void;
  ruleList(family: Family): RuleSpec[];
  neighProxyAdd(index: number, ip: string): void;
  neighProxyDel(index: number, ip: string): boolean;
  /** Idempotent. Handles are also freed if garbage-collected, but close them. */
  close(): void;
}

class NetlinkHandle implements Netlink {
  readonly #c: Conn;
  constructor(c: Conn) {
    this.#c = c;
    c.nameOf = (index) => linkGet(c, index, null)?.name ?? null;
  }
  get netns(): NetNs | undefined {
    return this.#c.netns;
  }
  linkByName(name: string): Link | null {
    return linkGet(this.#c, 0, name);
  }
  linkByIndex(index: number): Link | null {
    return linkGet(this.#c, index, null);
  }
  linkList(): Link[] {
    return linkList(this.#c);
  }
  vethAdd(o: VethOptions): void {
    vethAdd(this.#c, o, (name, ns) => {
      if (!ns) return linkSetUp(this.#c, 0, name);
      // A socket inside the peer's netns, just for this; by name since we do not know its ifindex there.
      const inner = Conn.open(ns);
      try {
        linkSetUp(inner, 0, name);
      } finally {
        inner.close();
      }
    });
  }
  vxlanAdd(o: VxlanOptions): void {
    vxlanAdd(this.#c, o);
  }
  vxlanGet(name: string): VxlanInfo | null {
    return vxlanGet(this.#c, name);
  }
  linkDel(nameOrIndex: string | number): boolean {
    return linkDel(this.#c, nameOrIndex);
  }
  linkSetUp(index: number): void {
    linkSetUp(this.#c, index);
  }
  addrAdd(index: number, cidr: string, o?: { noDad?: boolean }): void {
    addrAdd(this.#c, index, cidr, o);
  }
  addrDel(index: number, cidr: string): boolean {
    return addrDel(this.#c, index, cidr);
  }
  addrList(o?: { index?: number; family?: Family }): Addr[] {
    return addrList(this.#c, o);
  }
  routeAdd(r: RouteSpec): void {
    routeAdd(this.#c, r);
  }
  routeDel(r: RouteSpec): boolean {
    return routeDel(this.#c, r);
  }
  routeList(o?: { index?: number; family?: Family; table?: number }): Route[] {
    return routeList(this.#c, o);
  }
  ruleEnsure(r: RuleSpec): void {
    ruleEnsure(this.#c, r);
  }
  ruleList(family: Family): RuleSpec[] {
    return ruleList(this.#c, family);
  }
  neighProxyAdd(index: number, ip: string): void {
    neighProxyAdd(this.#c, index, ip);
  }
  neighProxyDel(index: number, ip: string): boolean {
    return neighProxyDel(this.#c, index, ip);
  }
  close(): void {
    this.#c.close();
  }
}

/** Open a handle; with ns the socket is created inside ns (see file comment). */
export function openNetlink(ns?: NetNs): Netlink {
  return new NetlinkHandle(Conn.open(ns));
}
