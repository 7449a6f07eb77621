// Address math on BigInt so IPv4 and IPv6 share one code path. Pure functions, no I/O.
import net from 'node:net';
import type { Family } from '../types.ts';

export interface Cidr {
  family: Family;
  /** Network address (host bits cleared). */
  base: bigint;
  prefix: number;
  bits: 32 | 128;
}

export class CidrError extends Error {
  constructor(message: string) { super(message); this.name = 'CidrError'; }
}

export function ipFamily(ip: string): Family | null {
  const v = net.isIP(ip);
  return v === 4 ? 4 : v === 6 ? 6 : null;
}

export function ipToBigInt(ip: string): bigint {
  const fam = ipFamily(ip);
  if (fam === 4) {
    return ip.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
  }
  if (fam === 6) {
    let text = ip;
    // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hextets.
    const v4 = text.match(/(\d+\.\d+\.\d+\.\d+)$/);
    if (v4) {
      const n = ipToBigInt(v4[1]);
      text = text.slice(0, -v4[1].length) + `${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
    }
    const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
    const headParts = head ? head.split(':') : [];
    const tailParts = tail ? tail.split(':') : [];
    const missing = 8 - headParts.length - tailParts.length;
    const parts = tail === undefined ? headParts : [...headParts, ...Array(missing).fill('0'), ...tailParts];
    return parts.reduce((acc, h) => (acc << 16n) | BigInt(parseInt(h, 16)), 0n);
  }
  throw new CidrError(`"${ip}" is not an IP address`);
}

export function bigIntToIp(n: bigint, family: Family): string {
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((s) => ((n >> s) & 0xffn).toString()).join('.');
  }
  const hextets: string[] = [];
  for (let i = 7; i >= 0; i--) hextets.push(((n >> BigInt(i * 16)) & 0xffffn).toString(16));
  return compressV6(hextets);
}

/** RFC 5952 form: the longest run (length >= 2) of zero hextets becomes "::". */
function compressV6(h: string[]): string {
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (h[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && h[j] === '0') j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  if (bestStart < 0) return h.join(':');
  return `${h.slice(0, bestStart).join(':')}::${h.slice(bestStart + bestLen).join(':')}`;
}

export function normalizeIp(ip: string): string {
  const fam = ipFamily(ip);
  if (!fam) throw new CidrError(`"${ip}" is not an IP address`);
  return bigIntToIp(ipToBigInt(ip), fam);
}

export function parseCidr(text: string): Cidr {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(text.trim());
  if (!m) throw new CidrError(`"${text}" is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.1.0.0/16)`);
  const family = ipFamily(m[1]);
  if (!family) throw new CidrError(`"${text}" is not a CIDR: "${m[1]}" is not an IP address`);
  const bits = family === 4 ? 32 : 128;
  const prefix = Number(m[2]);
  if (prefix > bits) throw new CidrError(`"${text}" is not a CIDR: prefix /${prefix} is longer than ${bits} bits`);
  const mask = prefixMask(prefix, bits);
  return { family, base: ipToBigInt(m[1]) & mask, prefix, bits };
}

export function formatCidr(c: Cidr): string {
  return `${bigIntToIp(c.base, c.family)}/${c.prefix}`;
}

function prefixMask(prefix: number, bits: number): bigint {
  const all = (1n << BigInt(bits)) - 1n;
  return all ^ ((1n << BigInt(bits - prefix)) - 1n);
}

export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(c.bits - c.prefix);
}

export function cidrLast(c: Cidr): bigint {
  return c.base + cidrSize(c) - 1n;
}

export function cidrContains(c: Cidr, ip: string): boolean {
  if (ipFamily(ip) !== c.family) return false;
  const n = ipToBigInt(ip);
  return n >= c.base && n <= cidrLast(c);
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

/** Conventional gateway: the first usable address. */
export function defaultGateway(c: Cidr): string {
  return bigIntToIp(usableRange(c).first, c.family);
}

/** Number of addresses an allocator can hand out (gateway excluded), capped for display. */
export function usableCount(c: Cidr): bigint {
  const r = usableRange(c);
  return r.last - r.first + 1n;
}
