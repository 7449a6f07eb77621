// Pure helpers for the netlink module: addresses, MACs, interface names. No native code here, so the
// unit tests (and anyone validating input early) can import this without loading libnl.

import { isIPv4, isIPv6 } from 'node:net';

export type Family = 4 | 6;

export const AF_INET = 2;
export const AF_INET6 = 10;

export interface Cidr {
  ip: string;
  prefix: number;
  family: Family;
}

export function familyOf(ip: string): Family | null {
  if (isIPv4(ip)) return 4;
  if (isIPv6(ip)) return 6;
  return null;
}

export function afOf(family: Family): number {
  return family === 4 ? AF_INET : AF_INET6;
}

/** "10.1.0.5/32" -> {ip, prefix, family}. A bare address gets the full-length prefix. Throws on garbage. */
export function parseCidr(s: string): Cidr {
  const slash = s.indexOf('/');
  const ip = slash < 0 ? s : s.slice(0, slash);
  const family = familyOf(ip);
  if (family === null || ip.includes('%')) throw new TypeError(`invalid IP address in "${s}"`);
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash >= 0) {
    const p = s.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) throw new TypeError(`invalid prefix length in "${s}"`);
    prefix = Number(p);
  }
  return { ip: family === 6 ? formatIp(ipBytes(ip)) : ip, prefix, family };
}

/** Canonical "ip/prefix" (IPv6 compressed per RFC 5952, so comparisons with kernel output work). */
export function normalizeCidr(s: string): string {
  const c = parseCidr(s);
  return `${c.ip}/${c.prefix}`;
}

/** Address -> network-order bytes (4 or 16). */
export function ipBytes(ip: string): Uint8Array {
  if (isIPv4(ip)) return Uint8Array.from(ip.split('.').map(Number));
  if (!isIPv6(ip)) throw new TypeError(`invalid IP address "${ip}"`);
  let s = ip;
  // Embedded IPv4 (::ffff:1.2.3.4): turn it into two hex groups first.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const b = v4[1].split('.').map(Number);
    s = s.slice(0, -v4[1].length) + `${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const [head, rest] = s.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = rest !== undefined && rest !== '' ? rest.split(':') : [];
  const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  });
  return out;
}

/** Network-order bytes (4 or 16) -> text, IPv6 in RFC 5952 form (longest zero run >= 2 becomes "::"). */
export function formatIp(b: Uint8Array): string {
  if (b.length === 4) return Array.from(b).join('.');
  if (b.length !== 16) throw new TypeError(`address of ${b.length} bytes`);
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((b[i] << 8) | b[i + 1]);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]) => a.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/** "02:42:ac:11:00:02" (or with '-') -> 6 bytes. */
export function parseMac(s: string): Uint8Array {
  if (!/^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$/.test(s)) throw new TypeError(`invalid MAC address "${s}"`);
  return Uint8Array.from(s.split(/[:-]/).map((x) => parseInt(x, 16)));
}

export function formatMac(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}

/** Kernel rules (dev_valid_name): 1..15 bytes, not "." or "..", no '/', ':' or whitespace. */
export function validIfName(name: string): boolean {
  return (
    typeof name === 'string' &&
    name.length > 0 &&
    Buffer.byteLength(name) <= 15 &&
    name !== '.' &&
    name !== '..' &&
    !/[/:\s]/.test(name)
  );
}

export const RT_SCOPE = { universe: 0, site: 200, link: 253, host: 254, nowhere: 255 } as const;
export type ScopeName = keyof typeof RT_SCOPE;

export function scopeName(n: number): ScopeName | string {
  for (const [k, v] of Object.entries(RT_SCOPE)) if (v === n) return k;
  return String(n);
}
