// IP addresses: text <-> network-order bytes <-> BigInt, RFC 5952 text form. The one place address
// text is parsed or printed; everything else (IPAM, netlink, maps, flows, policy) calls these.
// Pure, Node built-ins only: the CNI executable bundles this file.
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 4 | 6;

/** Bad address, CIDR, MAC or interface name text. The message quotes the input and says what is wrong. */
export class AddressError extends TypeError {
  override readonly name = 'AddressError';
}

/** 4, 6, or null for anything that is not a plain address (zones such as "fe80::1%eth0" are not). */
export function familyOf(ip: string): Family | null {
  if (isIPv4(ip)) return 4;
  if (isIPv6(ip) && !ip.includes('%')) return 6;
  return null;
}

export function requireFamily(ip: string): Family {
  const f = familyOf(ip);
  if (f === null) throw new AddressError(`"${ip}" is not an IP address`);
  return f;
}

/** Address bits of a family: 32 or 128. */
export function familyBits(family: Family): 32 | 128 {
  return family === 4 ? 32 : 128;
}

/** Address -> network-order bytes (4 for IPv4, 16 for IPv6). */
export function ipBytes(ip: string): Buffer {
  const family = requireFamily(ip);
  if (family === 4) return Buffer.from(ip.split('.').map(Number));
  let text = ip;
  const out = Buffer.alloc(16);
  // An embedded IPv4 tail (::ffff:1.2.3.4) fills the last four bytes.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    Buffer.from(v4[1].split('.').map(Number)).copy(out, 12);
    text = text.slice(0, -v4[1].length) + '0:0';
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => {
    if (!v4 || i < 6) out.writeUInt16BE(parseInt(g, 16), 2 * i);
  });
  return out;
}

/** Network-order bytes (4 or 16) -> text; IPv6 in RFC 5952 form (lowercase, longest zero run of 2+ as "::"). */
export function formatIp(b: Uint8Array): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  if (b.length !== 16) throw new AddressError(`an IP address has 4 or 16 bytes, got ${b.length}`);
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

/** Canonical text of an address (IPv6 compressed and lowercase), so addresses compare as strings. */
export function normalizeIp(ip: string): string {
  return isIPv4(ip) ? ip : formatIp(ipBytes(ip));
}

export function ipToBigInt(ip: string): bigint {
  const b = ipBytes(ip);
  let n = 0n;
  for (const x of b) n = (n << 8n) | BigInt(x);
  return n;
}

export function bigIntToIp(n: bigint, family: Family): string {
  const len = family === 4 ? 4 : 16;
  const b = new Uint8Array(len);
  for (let i = len - 1; i >= 0; i--) {
    b[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return formatIp(b);
}
