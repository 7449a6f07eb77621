// Packet builders for BPF_PROG_TEST_RUN: the datapath's unit tests, the packet fuzzer and the
// conntrack micro-benchmark (not used by the agent). Frames are Ethernet + IPv4/IPv6 + L4, written by
// hand; IPv4 header checksums are filled in, L4 checksums are not (the programs never read them). Pure.
import { parseIp } from '../maps/codec.ts';

export const ETH_P = { IPV4: 0x0800, IPV6: 0x86dd, ARP: 0x0806 } as const;
export const PROTO = { ICMP: 1, TCP: 6, UDP: 17, ICMPV6: 58, SCTP: 132 } as const;
export const TCP_FLAGS = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;
/** IPv6 extension header numbers. */
export const EXT = { HOP: 0, ROUTING: 43, FRAGMENT: 44, AH: 51, DSTOPTS: 60 } as const;

export function mac(text: string): Buffer {
  return Buffer.from(text.split(':').map((h) => parseInt(h, 16)));
}

const ADDRS = new Map<string, Buffer>(); // generators reuse a few addresses millions of times

export function addr(ip: string): Buffer {
  let b = ADDRS.get(ip);
  if (!b) {
    const { family, addr: a } = parseIp(ip);
    b = family === 4 ? a.subarray(0, 4) : a;
    if (ADDRS.size < 4096) ADDRS.set(ip, b);
  }
  return b;
}

export function eth(dst: string, src: string, type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(14);
  mac(dst).copy(h, 0);
  mac(src).copy(h, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

export function ipv4Checksum(hdr: Buffer): number {
  let sum = 0;
  for (let i = 0; i < hdr.length; i += 2) sum += hdr.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export interface Ipv4Opts {
  src: string;
  dst: string;
  proto: number;
  ttl?: number;
  id?: number;
  /** More fragments. */
  mf?: boolean;
  /** Fragment offset in 8-byte units. */
  offset?: number;
  /** Header length in 32-bit words (default 5); options are zero-filled. */
  ihl?: number;
  /** Total length field (default: the real length). */
  totLen?: number;
}

export function ipv4(o: Ipv4Opts, payload: Buffer): Buffer {
  const ihl = o.ihl ?? 5;
  const h = Buffer.alloc(Math.max(20, ihl * 4));
  h[0] = 0x40 | (ihl & 0xf);
  h.writeUInt16BE(o.totLen ?? h.length + payload.length, 2);
  h.writeUInt16BE(o.id ?? 0, 4);
  h.writeUInt16BE((o.mf ? 0x2000 : 0) | ((o.offset ?? 0) & 0x1fff), 6);
  h[8] = o.ttl ?? 64;
  h[9] = o.proto;
  addr(o.src).copy(h, 12);
  addr(o.dst).copy(h, 16);
  h.writeUInt16BE(ipv4Checksum(h), 10);
  return Buffer.concat([h, payload]);
}

export interface Ipv6Opts {
  src: string;
  dst: string;
  next: number;
  hopLimit?: number;
}

export function ipv6(o: Ipv6Opts, payload: Buffer): Buffer {
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(payload.length, 4);
  h[6] = o.next;
  h[7] = o.hopLimit ?? 64;
  addr(o.src).copy(h, 8);
  addr(o.dst).copy(h, 24);
  return Buffer.concat([h, payload]);
}

/** Hop-by-hop, routing or destination options header of 8 * (len + 1) bytes. */
export function ext6(next: number, len = 0): Buffer {
  const h = Buffer.alloc(8 * (len + 1));
  h[0] = next;
  h[1] = len;
  if (len === 0) h[2] = 1; // a PadN option filling the rest
  return h;
}

/** Authentication header: 4 * (len + 2) bytes. */
export function ah6(next: number, len = 1): Buffer {
  const h = Buffer.alloc(4 * (len + 2));
  h[0] = next;
  h[1] = len;
  return h;
}

/** Fragment header; offset in 8-byte units. */
export function frag6(next: number, offset: number, more: boolean, id: number): Buffer {
  const h = Buffer.alloc(8);
  h[0] = next;
  h.writeUInt16BE(((offset & 0x1fff) << 3) | (more ? 1 : 0), 2);
  h.writeUInt32BE(id >>> 0, 4);
  return h;
}

export function tcp(sport: number, dport: number, flags: number, seq = 1000, ack = 0): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt32BE(seq >>> 0, 4);
  h.writeUInt32BE(ack >>> 0, 8);
  h[12] = 0x50;
  h[13] = flags;
  h.writeUInt16BE(65535, 14);
  return h;
}

export function udp(sport: number, dport: number, payload: Buffer = Buffer.alloc(4)): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt16BE(8 + payload.length, 4);
  return Buffer.concat([h, payload]);
}

/** ICMP / ICMPv6: type, code, checksum 0, then 4 bytes (echo: identifier, sequence) and the payload. */
export function icmp(type: number, code: number, rest: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(8);
  h[0] = type;
  h[1] = code;
  h.writeUInt32BE(rest >>> 0, 4);
  return Buffer.concat([h, payload]);
}

export function echo(type: number, id: number, seq = 1): Buffer {
  return icmp(type, 0, ((id & 0xffff) << 16) | (seq & 0xffff));
}

/** Ethernet/IPv4 ARP body: op 1 request, 2 reply. */
export function arp(op: number, sha: string, spa: string, tha: string, tpa: string): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16BE(1, 0);
  b.writeUInt16BE(ETH_P.IPV4, 2);
  b[4] = 6;
  b[5] = 4;
  b.writeUInt16BE(op, 6);
  mac(sha).copy(b, 8);
  addr(spa).copy(b, 14);
  mac(tha).copy(b, 18);
  addr(tpa).copy(b, 24);
  return b;
}

function sum16(buf: Buffer, sum = 0): number {
  for (let i = 0; i + 1 < buf.length; i += 2) sum += buf.readUInt16BE(i);
  if (buf.length & 1) sum += buf[buf.length - 1] << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** A copy of an L4 header+payload with its checksum filled in (TCP, UDP, ICMP, ICMPv6), for frames a
 *  real stack must accept. Compute it over the whole datagram before fragmenting. */
export function withChecksum(family: 4 | 6, src: string, dst: string, proto: number, l4: Buffer): Buffer {
  const out = Buffer.from(l4);
  const at = proto === PROTO.TCP ? 16 : proto === PROTO.UDP ? 6 : proto === PROTO.ICMP || proto === PROTO.ICMPV6 ? 2 : -1;
  if (at < 0) return out;
  out.writeUInt16BE(0, at);
  let sum = 0;
  if (proto !== PROTO.ICMP) {
    const pseudo = family === 4 ? Buffer.alloc(12) : Buffer.alloc(40);
    addr(src).copy(pseudo, 0);
    addr(dst).copy(pseudo, family === 4 ? 4 : 16);
    if (family === 4) {
      pseudo[9] = proto;
      pseudo.writeUInt16BE(out.length, 10);
    } else {
      pseudo.writeUInt32BE(out.length, 32);
      pseudo[39] = proto;
    }
    sum = sum16(pseudo);
  }
  const c = fold(sum16(out, sum));
  out.writeUInt16BE(proto === PROTO.UDP && c === 0 ? 0xffff : c, at);
  return out;
}
