// The datapath's flow/drop event record (struct trace_event in bpf/lib/trace.h): constants, a decoder
// and an encoder (tests, the synthetic producer). Pure: no native code, no I/O.
// Integers are host order (the agent runs on the machine that wrote them) except the ports, which
// stay in network order as the packet had them.
import { endianness } from 'node:os';

export const TRACE_EVENT_SIZE = 96;

/** Byte offsets of struct trace_event's fields, for readers that skip the full decode. */
export const OFF = {
  TS: 0, TYPE: 8, REASON: 10, IFINDEX: 12, ENDPOINT: 16, SRC_ID: 20, DST_ID: 24, FAMILY: 28, PROTO: 29, VERDICT: 30,
  DIRECTION: 31, SPORT: 32, DPORT: 34, LEN: 36, SADDR: 40, DADDR: 56, RULE: 72, TCP_FLAGS: 76, FLAGS: 77, PACKETS: 80, BYTES: 88,
} as const;

export const EventType = { FLOW_NEW: 1, DROP: 2, FLOW_END: 3 } as const;
export const DatapathVerdict = { FORWARDED: 0, DROPPED: 1, REDIRECTED: 2, AUDIT: 3 } as const;
export const Direction = { INGRESS: 0, EGRESS: 1 } as const;
/** flags bit 0: policy audit mode turned a would-be drop into a pass. */
export const EVENT_FLAG_AUDIT = 1;

/** enum drop_reason (bpf/lib/drop.h); numbers are ABI, names are what people and metrics see. */
export const DROP_REASONS: Record<number, string> = {
  0: 'UNKNOWN',
  1: 'POLICY_DENIED',
  2: 'INVALID_PACKET',
  3: 'CT_MAP_FULL',
  4: 'UNKNOWN_ENDPOINT',
  5: 'SOURCE_SPOOFED',
};

export function dropReasonName(code: number): string {
  return DROP_REASONS[code] ?? `REASON_${code}`;
}

/** Human wording for a drop line ("Policy denied"), like Hubble's drop_reason_desc. */
export function dropReasonText(code: number): string {
  switch (code) {
    case 1: return 'policy denied';
    case 2: return 'invalid packet';
    case 3: return 'conntrack table full';
    case 4: return 'unknown endpoint';
    case 5: return 'source address spoofed';
    default: return code === 0 ? 'unknown reason' : `reason ${code}`;
  }
}

export interface TraceEvent {
  /** bpf_ktime_get_ns as a double: exact for 104 days of uptime, a few ns off after that. */
  tsNs: number;
  type: number;
  reason: number;
  ifindex: number;
  endpointId: number;
  srcIdentity: number;
  dstIdentity: number;
  family: number;
  proto: number;
  verdict: number;
  direction: number;
  sport: number;
  dport: number;
  len: number;
  saddr: string;
  daddr: string;
  ruleId: number;
  tcpFlags: number;
  flags: number;
  packets: number;
  bytes: number;
}

const LE = endianness() === 'LE';

/** The record's u64 timestamp as a double (see TraceEvent.tsNs). */
export function tsNumber(buf: Buffer, offset: number): number {
  return LE
    ? buf.readUInt32LE(offset + 4) * 0x1_0000_0000 + buf.readUInt32LE(offset)
    : buf.readUInt32BE(offset) * 0x1_0000_0000 + buf.readUInt32BE(offset + 4);
}

/** A host-order u32 of the record (for readers that skip the full decode). */
export const hostU32: (buf: Buffer, offset: number) => number = LE
  ? (buf, offset) => buf.readUInt32LE(offset)
  : (buf, offset) => buf.readUInt32BE(offset);

/** Decodes the record at `offset` (the ring buffer reader passes its mapped data, no copy).
 *  Hot path (hundreds of thousands a second): straight-line reads, no closures. */
export function decodeTraceEvent(buf: Buffer, offset = 0): TraceEvent {
  if (buf.length - offset < TRACE_EVENT_SIZE) {
    throw new RangeError(`trace_event needs ${TRACE_EVENT_SIZE} bytes at ${offset}, have ${buf.length - offset}`);
  }
  if (!LE) return decodeBigEndianHost(buf, offset);
  const family = buf[offset + 28];
  return {
    tsNs: tsNumber(buf, offset),
    type: buf.readUInt16LE(offset + 8),
    reason: buf.readUInt16LE(offset + 10),
    ifindex: buf.readUInt32LE(offset + 12),
    endpointId: buf.readUInt32LE(offset + 16),
    srcIdentity: buf.readUInt32LE(offset + 20),
    dstIdentity: buf.readUInt32LE(offset + 24),
    family,
    proto: buf[offset + 29],
    verdict: buf[offset + 30],
    direction: buf[offset + 31],
    sport: (buf[offset + 32] << 8) | buf[offset + 33],
    dport: (buf[offset + 34] << 8) | buf[offset + 35],
    len: buf.readUInt32LE(offset + 36),
    saddr: formatAddr(buf, offset + 40, family),
    daddr: formatAddr(buf, offset + 56, family),
    ruleId: buf.readUInt32LE(offset + 72),
    tcpFlags: buf[offset + 76],
    flags: buf[offset + 77],
    // Counters fit a double for any real flow (2^53 packets is ~285 years at 1 Mpps).
    packets: buf.readUInt32LE(offset + 84) * 0x1_0000_0000 + buf.readUInt32LE(offset + 80),
    bytes: buf.readUInt32LE(offset + 92) * 0x1_0000_0000 + buf.readUInt32LE(offset + 88),
  };
}

function decodeBigEndianHost(buf: Buffer, offset: number): TraceEvent {
  const family = buf[offset + 28];
  const u32 = (o: number) => buf.readUInt32BE(offset + o);
  return {
    tsNs: tsNumber(buf, offset), type: buf.readUInt16BE(offset + 8), reason: buf.readUInt16BE(offset + 10),
    ifindex: u32(12), endpointId: u32(16), srcIdentity: u32(20), dstIdentity: u32(24), family,
    proto: buf[offset + 29], verdict: buf[offset + 30], direction: buf[offset + 31],
    sport: buf.readUInt16BE(offset + 32), dport: buf.readUInt16BE(offset + 34), len: u32(36),
    saddr: formatAddr(buf, offset + 40, family), daddr: formatAddr(buf, offset + 56, family),
    ruleId: u32(72), tcpFlags: buf[offset + 76], flags: buf[offset + 77],
    packets: u32(80) * 0x1_0000_0000 + u32(84), bytes: u32(88) * 0x1_0000_0000 + u32(92),
  };
}

// Events repeat the same few addresses: reuse their strings (bounded, cleared when full).
const V4_CACHE = new Map<number, string>();

function ipv4Text(n: number): string {
  let s = V4_CACHE.get(n);
  if (s === undefined) {
    s = `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
    if (V4_CACHE.size >= 65536) V4_CACHE.clear();
    V4_CACHE.set(n, s);
  }
  return s;
}

/** IPv4 from the first 4 bytes; IPv6 in RFC 5952 form (lowercase, longest zero run as ::). */
export function formatAddr(buf: Buffer, offset: number, family: number): string {
  if (family === 4) return ipv4Text(buf.readUInt32BE(offset));
  if (family !== 6) return '';
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(buf.readUInt16BE(offset + 2 * i));
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i > 1) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (ws: number[]) => ws.map((w) => w.toString(16)).join(':');
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

function addrBytes(ip: string, family: number): Buffer {
  const out = Buffer.alloc(16);
  if (!ip) return out;
  if (family === 4) {
    ip.split('.').forEach((o, i) => { out[i] = Number(o); });
    return out;
  }
  const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const words = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  words.forEach((w, i) => out.writeUInt16BE(parseInt(w, 16), 2 * i));
  return out;
}

/** The form decodeTraceEvent prints an address in (IPv6 compressed, lowercase), for lookups. */
export function canonicalIp(ip: string): string {
  if (!ip.includes(':')) return ip;
  return formatAddr(addrBytes(ip.toLowerCase(), 6), 0, 6);
}

/** The inverse of decodeTraceEvent, for tests and the synthetic producer. */
export function encodeTraceEvent(e: Partial<TraceEvent>): Buffer {
  const buf = Buffer.alloc(TRACE_EVENT_SIZE);
  const u16 = (o: number, v: number) => (LE ? buf.writeUInt16LE(v, o) : buf.writeUInt16BE(v, o));
  const u32 = (o: number, v: number) => (LE ? buf.writeUInt32LE(v, o) : buf.writeUInt32BE(v, o));
  const u64 = (o: number, v: bigint) => (LE ? buf.writeBigUInt64LE(v, o) : buf.writeBigUInt64BE(v, o));
  const family = e.family ?? 4;
  u64(0, BigInt(e.tsNs ?? 0));
  u16(8, e.type ?? EventType.FLOW_NEW);
  u16(10, e.reason ?? 0);
  u32(12, e.ifindex ?? 0);
  u32(16, e.endpointId ?? 0);
  u32(20, e.srcIdentity ?? 0);
  u32(24, e.dstIdentity ?? 0);
  buf[28] = family;
  buf[29] = e.proto ?? 6;
  buf[30] = e.verdict ?? 0;
  buf[31] = e.direction ?? 0;
  buf.writeUInt16BE(e.sport ?? 0, 32);
  buf.writeUInt16BE(e.dport ?? 0, 34);
  u32(36, e.len ?? 0);
  addrBytes(e.saddr ?? '', family).copy(buf, 40);
  addrBytes(e.daddr ?? '', family).copy(buf, 56);
  u32(72, e.ruleId ?? 0);
  buf[76] = e.tcpFlags ?? 0;
  buf[77] = e.flags ?? 0;
  u64(80, BigInt(e.packets ?? 0));
  u64(88, BigInt(e.bytes ?? 0));
  return buf;
}
