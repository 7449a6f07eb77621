// Interface addresses and proxy neighbour entries (proxy_ndp answers only for listed addresses).

import { cidrOrThrow, type Conn, drainCache, invalid, withNlAddr } from './conn.ts';
import { NetlinkError } from './errors.ts';
import { IFA_F_NODAD, lib, NTF_PROXY, addrBytes, type Ptr } from './lib.ts';
import { AF_INET, AF_INET6 } from './parse.ts';
import { formatIp, parseIfAddr, type Family } from '../net/index.ts';

export interface Addr {
  index: number;
  /** As on the interface, e.g. "10.1.0.5/32", "fd00::5/128". */
  cidr: string;
  family: Family;
}

function checkIndex(op: string, object: () => string, index: number): void {
  if (!Number.isInteger(index) || index <= 0) throw invalid(op, object(), `invalid ifindex ${index}`);
}

function addrObject(c: Conn, index: number, cidr: string): string {
  return `${cidr} ${c.dev(index)}`;
}

/** Build an rtnl_addr for (index, cidr), run fn, free it. */
function withRtnlAddr<T>(op: string, c: Conn, index: number, cidr: string, fn: (a: Ptr) => T): T {
  const l = lib();
  const object = () => addrObject(c, index, cidr);
  checkIndex(op, object, index);
  const parsed = cidrOrThrow(op, cidr, cidr);
  const a = l.rtnl_addr_alloc() as Ptr | null;
  if (a === null) throw new Error('rtnl_addr_alloc: out of memory');
  try {
    l.rtnl_addr_set_ifindex(a, index);
    withNlAddr(parsed, (local) => {
      const rc = l.rtnl_addr_set_local(a, local) as number; // copies prefixlen and family too
      if (rc < 0) throw c.error(op, object, rc);
    });
    return fn(a);
  } finally {
    l.rtnl_addr_put(a);
  }
}

/**
 * Add an address. Idempotent ensure: if the kernel says it exists and exactly this address (same prefix)
 * is on this interface, that is success; an existing address with another prefix is still an error.
 */
export function addrAdd(c: Conn, index: number, cidr: string, o: { noDad?: boolean } = {}): void {
  const l = lib();
  const object = () => addrObject(c, index, cidr);
  try {
    withRtnlAddr('addr add', c, index, cidr, (a) => {
      if (o.noDad) l.rtnl_addr_set_flags(a, IFA_F_NODAD);
      c.exec('addr add', object, (sk) => l.rtnl_addr_add(sk, a, 0));
    });
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'exists') {
      const want = parseIfAddr(cidr);
      const have = addrList(c, { index, family: want.family });
      if (have.some((x) => x.cidr === `${want.ip}/${want.prefix}`)) return;
    }
    throw e;
  }
}

/** Remove an address; false when it (or the interface) is not there. */
export function addrDel(c: Conn, index: number, cidr: string): boolean {
  const l = lib();
  const object = () => addrObject(c, index, cidr);
  try {
    withRtnlAddr('addr del', c, index, cidr, (a) => c.exec('addr del', object, (sk) => l.rtnl_addr_delete(sk, a, 0)));
    return true;
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'not_found') return false;
    throw e;
  }
}

export function addrList(c: Conn, o: { index?: number; family?: Family } = {}): Addr[] {
  const l = lib();
  const out: (Ptr | null)[] = [null];
  c.exec(
    'addr list',
    () => (o.index ? c.dev(o.index) : 'all'),
    (sk) => l.rtnl_addr_alloc_cache(sk, out),
  );
  return drainCache(out[0] as Ptr, (p): Addr | undefined => {
    const index = l.rtnl_addr_get_ifindex(p) as number;
    if (o.index !== undefined && index !== o.index) return undefined;
    const local = l.rtnl_addr_get_local(p) as Ptr | null;
    if (local === null) return undefined;
    const af = l.nl_addr_get_family(local) as number;
    const family: Family | null = af === AF_INET ? 4 : af === AF_INET6 ? 6 : null;
    if (family === null || (o.family !== undefined && family !== o.family)) return undefined;
    return { index, cidr: `${formatIp(addrBytes(local))}/${l.rtnl_addr_get_prefixlen(p)}`, family };
  });
}

function withProxyNeigh<T>(op: string, c: Conn, index: number, ip: string, fn: (n: Ptr) => T): T {
  const l = lib();
  const object = () => `proxy ${ip} ${c.dev(index)}`;
  checkIndex(op, object, index);
  const parsed = cidrOrThrow(op, `proxy ${ip}`, ip);
  if (parsed.prefix !== (parsed.family === 4 ? 32 : 128)) throw invalid(op, `proxy ${ip}`, 'expected an address, not a prefix');
  const n = l.rtnl_neigh_alloc() as Ptr | null;
  if (n === null) throw new Error('rtnl_neigh_alloc: out of memory');
  try {
    l.rtnl_neigh_set_ifindex(n, index);
    l.rtnl_neigh_set_flags(n, NTF_PROXY);
    withNlAddr(parsed, (dst) => {
      const rc = l.rtnl_neigh_set_dst(n, dst) as number;
      if (rc < 0) throw c.error(op, object, rc);
    });
    return fn(n);
  } finally {
    l.rtnl_neigh_put(n);
  }
}

/** Proxy neighbour entry (`ip -6 neigh add proxy IP dev X`); idempotent (no NLM_F_EXCL). */
export function neighProxyAdd(c: Conn, index: number, ip: string): void {
  const l = lib();
  withProxyNeigh('neigh proxy add', c, index, ip, (n) =>
    c.exec(
      'neigh proxy add',
      () => `${ip} ${c.dev(index)}`,
      (sk) => l.rtnl_neigh_add(sk, n, 0),
    ),
  );
}

export function neighProxyDel(c: Conn, index: number, ip: string): boolean {
  const l = lib();
  try {
    withProxyNeigh('neigh proxy del', c, index, ip, (n) =>
      c.exec(
        'neigh proxy del',
        () => `${ip} ${c.dev(index)}`,
        (sk) => l.rtnl_neigh_delete(sk, n, 0),
      ),
    );
    return true;
  } catch (e) {
    if (e instanceof NetlinkError && e.code === 'not_found') return false;
    throw e;
  }
}
