// The datapath's flow/drop event record (struct trace_event in bpf/lib/trace.h): constants, a decoder
// and an encoder (tests, the synthetic producer). Pure: no native code, no I/O.
// Integers are host order (the agent runs on the machine that wrote them) except the ports, which
// stay in network order as the packet had them.
import {
  formatIp,
  HOST_LITTLE_ENDIAN,
  ipBytes,
  readHostU64Number,
  writeHostU16,
  writeHostU32,
  writeHostU64,
} from '../net/index.ts';

export const TRACE_EVENT_SIZE = 96;

/** Byte offsets of struct trace_event's fields, for readers that skip the full decode. */
export const OFF = {
  TS: 0,
  TYPE: 8,
  REASON: 10,
  IFINDEX: 12,
  ENDPOINT: 16,
  SRC_ID: 20,
  DST_ID: 24,
  FAMILY: 28,
  PROTO: 29,
  VERDICT: 30,
  DIRECTION: 31,
  SPORT: 32,
  DPORT: 34,
  LEN: 36,
  SADDR: 40,
  DADDR: 56,
  RULE: 72,
  TCP_FLAGS: 76,
  FLAGS: 77,
  PACKETS: 80,
  BYTES: 88,
} as const;

/** DNS_CACHED: a DNS query the datapath answered from its cache (bpf/lib/dns_cache.h): no flow of its
 *  own; the DNS proxy's part turns it into L7 flows (shared/src/agent/dns.ts). */
export const EventType = { FLOW_NEW: 1, DROP: 2, FLOW_END: 3, DNS_CACHED: 4 } as const;
export const DatapathVerdict = { FORWARDED: 0, DROPPED: 1, REDIRECTED: 2, AUDIT: 3 } as const;
export const Direction = { INGRESS: 0, EGRESS: 1 } as const;
/** flags bit 0: policy audit mode turned a would-be drop into a pass. */
export const EVENT_FLAG_AUDIT = 1;

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

/** Decodes the record at `offset` (the ring buffer reader passes its mapped data, no copy).
 *  Hot path (hundreds of thousands a second): straight-line reads, no closures. */
export function decodeTraceEvent(buf: Buffer, offset = 0): TraceEvent {
  if (buf.length - offset < TRACE_EVENT_SIZE) {
    throw new RangeError(`trace_event needs ${TRACE_EVENT_SIZE} bytes at ${offset}, have ${buf.length - offset}`);
  }
  if (!HOST_LITTLE_ENDIAN) return decodeBigEndianHost(buf, offset);
  const family = buf[offset + 28];
  return {
    tsNs: readHostU64Number(buf, offset),
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
    tsNs: readHostU64Number(buf, offset),
    type: buf.readUInt16BE(offset + 8),
    reason: buf.readUInt16BE(offset + 10),
    ifindex: u32(12),
    endpointId: u32(16),
    srcIdentity: u32(20),
    dstIdentity: u32(24),
    family,
    proto: buf[offset + 29],
    verdict: buf[offset + 30],
    direction: buf[offset + 31],
    sport: buf.readUInt16BE(offset + 32),
    dport: buf.readUInt16BE(offset + 34),
    len: u32(36),
    saddr: formatAddr(buf, offset + 40, family),
    daddr: formatAddr(buf, offset + 56, family),
    ruleId: u32(72),
    tcpFlags: buf[offset + 76],
    flags: buf[offset + 77],
    packets: u32(80) * 0x1_0000_0000 + u32(84),
    bytes: u32(88) * 0x1_0000_0000 + u32(92),
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
  return formatIp(buf.subarray(offset, offset + 16));
}

/** The inverse of decodeTraceEvent, for tests and the synthetic producer. */
export function encodeTraceEvent(e: Partial<TraceEvent>): Buffer {
  const buf = Buffer.alloc(TRACE_EVENT_SIZE);
  const u16 = (o: number, v: number) => writeHostU16(buf, o, v);
  const u32 = (o: number, v: number) => writeHostU32(buf, o, v);
  const u64 = (o: number, v: bigint) => writeHostU64(buf, o, v);
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
  if (e.saddr) ipBytes(e.saddr).copy(buf, 40);
  if (e.daddr) ipBytes(e.daddr).copy(buf, 56);
  u32(72, e.ruleId ?? 0);
  buf[76] = e.tcpFlags ?? 0;
  buf[77] = e.flags ?? 0;
  u64(80, BigInt(e.packets ?? 0));
  u64(88, BigInt(e.bytes ?? 0));
  return buf;
}
