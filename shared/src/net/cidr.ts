// Prefixes. Two meanings, two names:
//  - a network (Cidr: "10.1.0.0/16", host bits cleared; IPAM, networks, policy CIDRs, ipcache), and
//  - an interface address (IfAddr: "10.1.0.5/24", host bits kept; what netlink adds and lists).
// BigInt address math so IPv4 and IPv6 share one code path. Pure.
import { AddressError, bigIntToIp, familyBits, familyOf, ipToBigInt, normalizeIp, type Family } from './ip.ts';

export interface Cidr {
  family: Family;
  /** Network address (host bits cleared). */
  base: bigint;
  prefix: number;
  bits: 32 | 128;
}

/** An address with its prefix length, host bits kept ("10.1.0.5/24" on an interface). */
export interface IfAddr {
  ip: string;
  prefix: number;
  family: Family;
}

/** Splits "ADDRESS[/PREFIX]"; a bare address gets the full-length prefix only when `bare` allows it. */
function split(text: string, bare: boolean): IfAddr {
  const slash = text.indexOf('/');
  if (slash < 0 && !bare) throw new AddressError(`"${text}" is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.1.0.0/16)`);
  const ip = slash < 0 ? text : text.slice(0, slash);
  const family = familyOf(ip);
  if (family === null)
    throw new AddressError(
      slash < 0 ? `"${text}" is not an IP address` : `"${text}" is not a CIDR: "${ip}" is not an IP address`,
    );
  const bits = familyBits(family);
  if (slash < 0) return { ip: normalizeIp(ip), prefix: bits, family };
  const p = text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(p)) throw new AddressError(`"${text}" is not a CIDR: "${p}" is not a prefix length`);
  const prefix = Number(p);
  if (prefix > bits) throw new AddressError(`"${text}" is not a CIDR: prefix length /${prefix} is longer than ${bits} bits`);
  return { ip: normalizeIp(ip), prefix, family };
}

/** "10.1.2.3/16" -> the network 10.1.0.0/16. The prefix is required unless `allowBare` (then /32, /128). */
export function parseCidr(text: string, opts: { allowBare?: boolean } = {}): Cidr {
  const a = split(text.trim(), opts.allowBare ?? false);
  const bits = familyBits(a.family);
  return { family: a.family, base: ipToBigInt(a.ip) & prefixMask(a.prefix, bits), prefix: a.prefix, bits };
}

export function formatCidr(c: Cidr): string {
  return `${bigIntToIp(c.base, c.family)}/${c.prefix}`;
}

const OCTET = '(0|[1-9]\\d{0,2})';
const V4_CIDR = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}(?:/(0|[1-9]\\d?))?$`);

/** Canonical network text ("198.18.0.5" -> "198.18.0.5/32", "10.1.2.3/16" -> "10.1.0.0/16"). IPv4
 *  without BigInt: imports of thousands of CIDR policy rules spend their time here otherwise. */
export function normalizeCidr(text: string): string {
  const m = V4_CIDR.exec(text);
  if (m) {
    const o = [m[1], m[2], m[3], m[4]].map(Number);
    const len = m[5] === undefined ? 32 : Number(m[5]);
    if (o.every((x) => x <= 255) && len <= 32) {
      const n = ((o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3]) >>> 0;
      const base = len === 0 ? 0 : (n & (~0 << (32 - len))) >>> 0;
      return `${base >>> 24}.${(base >>> 16) & 255}.${(base >>> 8) & 255}.${base & 255}/${len}`;
    }
  }
  return formatCidr(parseCidr(text, { allowBare: true }));
}

/** "10.1.0.5/24" -> {ip, prefix, family}, host bits kept; a bare address gets /32 or /128. */
export function parseIfAddr(text: string): IfAddr {
  return split(text, true);
}

/** Canonical "ip/prefix" with host bits kept (compares with what the kernel lists). */
export function normalizeIfAddr(text: string): string {
  const a = parseIfAddr(text);
  return `${a.ip}/${a.prefix}`;
}

/** "10.1.0.5/24" -> "10.1.0.5"; a bare address stays as it is. No validation. */
export function addressOnly(text: string): string {
  const slash = text.indexOf('/');
  return slash < 0 ? text : text.slice(0, slash);
}

/** The single-address prefix of an address: "10.1.0.5" -> "10.1.0.5/32", "fd00::5" -> "fd00::5/128". */
export function hostPrefix(ip: string, family: Family = ip.includes(':') ? 6 : 4): string {
  return `${ip}/${familyBits(family)}`;
}

export function prefixMask(prefix: number, bits: number): bigint {
  const all = (1n << BigInt(bits)) - 1n;
  return all ^ ((1n << BigInt(bits - prefix)) - 1n);
}

export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(c.bits - c.prefix);
}

export function cidrLast(c: Cidr): bigint {
  return c.base + cidrSize(c) - 1n;
}

/** Does the network hold this address? (false for the other family and for non-addresses) */
export function cidrContains(c: Cidr, ip: string): boolean {
  if (familyOf(ip) !== c.family) return false;
  const n = ipToBigInt(ip);
  return n >= c.base && n <= cidrLast(c);
}

/** Is `inner` the network `outer` or a sub-network of it? */
export function cidrCovers(outer: Cidr, inner: Cidr): boolean {
  return (
    outer.family === inner.family && inner.prefix >= outer.prefix && inner.base >= outer.base && inner.base <= cidrLast(outer)
  );
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.base <= cidrLast(b) && b.base <= cidrLast(a);
}

/**
 * The range an allocator may hand out. IPv4 reserves the network and broadcast addresses (except on
 * /31 and /32, RFC 3021); IPv6 reserves the subnet-router anycast address (the all-zero host part).
 */
export function usableRange(c: Cidr): { first: bigint; last: bigint } {
  if (c.family === 4) {
    if (c.prefix >= 31) return { first: c.base, last: cidrLast(c) };
    return { first: c.base + 1n, last: cidrLast(c) - 1n };
  }
  if (c.prefix === 128) return { first: c.base, last: c.base };
  return { first: c.base + 1n, last: cidrLast(c) };
}

/** Is the address one an allocator may hand out (inside the network, not a reserved one)? */
export function isUsable(c: Cidr, ip: string): boolean {
  if (!cidrContains(c, ip)) return false;
  const r = usableRange(c);
  const n = ipToBigInt(ip);
  return n >= r.first && n <= r.last;
}

/** Conventional gateway: the first usable address. */
export function defaultGateway(c: Cidr): string {
  return bigIntToIp(usableRange(c).first, c.family);
}

/** Number of addresses an allocator can hand out. */
export function usableCount(c: Cidr): bigint {
  const r = usableRange(c);
  return r.last - r.first + 1n;
}
