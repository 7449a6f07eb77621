// Pure encoders/decoders for the datapath's map keys and values. The layouts mirror the C structs in
// bpf/lib/*.h (guarded there by _Static_assert); keep both sides in step. No native code, no I/O.
import {
  AddressError,
  familyOf,
  formatIp,
  formatMac,
  ipBytes,
  parseMac,
  readHostU32,
  readHostU64,
  writeHostU32,
} from '../net/index.ts';

// BPF maps store host-endian integers (shared/src/net/byteorder.ts).

export const FAMILY_IPV4 = 4;
export const FAMILY_IPV6 = 6;

export const IP_KEY_SIZE = 20; //              struct ip_key { u8 family; u8 pad[3]; u8 addr[16]; }
export const IFINDEX_KEY_SIZE = 4; //          u32 host ifindex
export const ENDPOINT_CONFIG_SIZE = 80; //     struct endpoint_config
export const LOCAL_ENDPOINT_SIZE = 20; //      struct local_endpoint
export const ENDPOINT_COUNTERS_SIZE = 32; //   struct endpoint_counters_value (4 x u64)

/** endpoint_config.flags bits owned by the policy engine (bpf/lib/policy.h EP_F_POLICY_MASK). */
export const EP_POLICY_FLAGS = 0x1f;
/** endpoint_config.flags bits that describe its addresses (bpf/lib/maps.h EP_F_HAS_*, EP_F_EXTRA_ADDRS). */
export const EP_ADDRESS_FLAGS = { hasIpv4: 1 << 8, hasIpv6: 1 << 9, extraAddrs: 1 << 10 } as const;
const EP_ADDRESS_MASK = 0x700;

export const GLOBAL_CONFIG_SIZE = 32; //       struct datapath_config
const CFG_F_EVENTS = 1;
const CFG_F_AUDIT = 2;

export interface GlobalConfigValue {
  /** Emit flow and drop events into the `events` ring buffer. */
  events: boolean;
  /** Agent-wide policy audit mode: would-be drops are reported (verdict AUDIT) and pass. */
  audit: boolean;
  /** Per-CPU event rate limit (token bucket); 0 = unlimited. */
  eventsPerSecond?: number;
  /** Bucket size in events; default eventsPerSecond. */
  eventsBurst?: number;
  /** Conntrack entries one endpoint may own (0 = no per-endpoint limit). */
  ctPerEndpoint?: number;
}

export interface EndpointConfigValue {
  endpointId: number;
  identity: number;
  /** Policy bits and anything else; the address bits are derived from the addresses. */
  flags: number;
  hostMac: string;
  containerMac: string;
  ifindex: number;
  policyRevision: number;
  /** What anti-spoofing admits as the source: every address of the endpoint (plain, v4 or v6). */
  ips?: string[];
  /** Its IPv6 gateway (neighbour discovery towards it stays on its link). */
  gateway6?: string;
}

export interface LocalEndpointValue {
  hostIfindex: number;
  endpointId: number;
  containerMac: string;
  hostMac: string;
}

export interface EndpointCounters {
  rxPackets: bigint;
  rxBytes: bigint;
  txPackets: bigint;
  txBytes: bigint;
}

function writeU32(buf: Buffer, offset: number, value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${what} must be an unsigned 32-bit integer, got ${value}`);
  }
  writeHostU32(buf, offset, value);
}

/** Address -> { family, 16 address bytes with IPv4 in the first 4 }. Rejects CIDRs and zones. */
export function parseIp(ip: string): { family: 4 | 6; addr: Buffer } {
  const family = familyOf(ip);
  if (family === null) throw new AddressError(`invalid IP address (expected a plain v4 or v6 address): ${JSON.stringify(ip)}`);
  const addr = Buffer.alloc(16);
  ipBytes(ip).copy(addr, 0);
  return { family, addr };
}

/** struct ip_key for local_endpoints. */
export function encodeIpKey(ip: string): Buffer {
  const { family, addr } = parseIp(ip);
  const key = Buffer.alloc(IP_KEY_SIZE);
  key[0] = family;
  addr.copy(key, 4);
  return key;
}

export function decodeIpKey(key: Buffer): string {
  const family = key[0];
  if (family === FAMILY_IPV4) return formatIp(key.subarray(4, 8));
  if (family === FAMILY_IPV6) return formatIp(key.subarray(4, 20));
  throw new RangeError(`ip_key with unknown family ${family}`);
}

/** struct ipcache_key for the LPM trie: prefixlen counts the 32 bits of family+pad too. */
export function encodeIpcacheKey(cidr: string): Buffer {
  const [ip, lenText] = cidr.split('/');
  const { family, addr } = parseIp(ip);
  const maxLen = family === FAMILY_IPV4 ? 32 : 128;
  const len = lenText === undefined ? maxLen : Number(lenText);
  if (!Number.isInteger(len) || len < 0 || len > maxLen) throw new RangeError(`invalid prefix length in ${cidr}`);
  const key = Buffer.alloc(24);
  writeU32(key, 0, 32 + len, 'prefixlen');
  key[4] = family;
  addr.copy(key, 8);
  return key;
}

export function encodeU32Key(value: number): Buffer {
  const key = Buffer.alloc(IFINDEX_KEY_SIZE);
  writeU32(key, 0, value, 'key');
  return key;
}

export function decodeU32Key(key: Buffer): number {
  return readHostU32(key, 0);
}

// struct endpoint_config: the address fields.
const CFG_IPV4 = 32;
const CFG_IPV6 = 36;
const CFG_GATEWAY6 = 52;

export function encodeEndpointConfig(v: EndpointConfigValue): Buffer {
  const buf = Buffer.alloc(ENDPOINT_CONFIG_SIZE); // reserved[] stays zero
  const parsed = (v.ips ?? []).map(parseIp);
  const v4 = parsed.filter((a) => a.family === FAMILY_IPV4);
  const v6 = parsed.filter((a) => a.family === FAMILY_IPV6);
  let flags = v.flags & ~EP_ADDRESS_MASK;
  if (v4.length) {
    flags |= EP_ADDRESS_FLAGS.hasIpv4;
    v4[0].addr.copy(buf, CFG_IPV4, 0, 4);
  }
  if (v6.length) {
    flags |= EP_ADDRESS_FLAGS.hasIpv6;
    v6[0].addr.copy(buf, CFG_IPV6);
  }
  if (v4.length > 1 || v6.length > 1) flags |= EP_ADDRESS_FLAGS.extraAddrs;
  if (v.gateway6) {
    const gw = parseIp(v.gateway6);
    if (gw.family !== FAMILY_IPV6) throw new RangeError(`gateway6 must be an IPv6 address, got ${v.gateway6}`);
    gw.addr.copy(buf, CFG_GATEWAY6);
  }
  writeU32(buf, 0, v.endpointId, 'endpointId');
  writeU32(buf, 4, v.identity, 'identity');
  writeU32(buf, 8, flags >>> 0, 'flags');
  parseMac(v.hostMac).copy(buf, 12);
  parseMac(v.containerMac).copy(buf, 18);
  writeU32(buf, 24, v.ifindex, 'ifindex');
  writeU32(buf, 28, v.policyRevision, 'policyRevision');
  return buf;
}

/** The leading fields of an endpoint's config (what policy verdicts need), without formatting its
 *  addresses: cheap enough to read for every endpoint of a node. */
export function decodeEndpointIdentity(buf: Buffer): { endpointId: number; identity: number; flags: number } {
  return { endpointId: readHostU32(buf, 0), identity: readHostU32(buf, 4), flags: readHostU32(buf, 8) };
}

export function decodeEndpointConfig(buf: Buffer): EndpointConfigValue {
  const flags = readHostU32(buf, 8);
  const ips: string[] = [];
  if (flags & EP_ADDRESS_FLAGS.hasIpv4) ips.push(formatIp(buf.subarray(CFG_IPV4, CFG_IPV4 + 4)));
  if (flags & EP_ADDRESS_FLAGS.hasIpv6) ips.push(formatIp(buf.subarray(CFG_IPV6, CFG_IPV6 + 16)));
  const gw = buf.subarray(CFG_GATEWAY6, CFG_GATEWAY6 + 16);
  return {
    endpointId: readHostU32(buf, 0),
    identity: readHostU32(buf, 4),
    flags,
    hostMac: formatMac(buf.subarray(12, 18)),
    containerMac: formatMac(buf.subarray(18, 24)),
    ifindex: readHostU32(buf, 24),
    policyRevision: readHostU32(buf, 28),
    ips,
    ...(gw.some((b) => b !== 0) ? { gateway6: formatIp(gw) } : {}),
  };
}

export function encodeLocalEndpoint(v: LocalEndpointValue): Buffer {
  const buf = Buffer.alloc(LOCAL_ENDPOINT_SIZE);
  writeU32(buf, 0, v.hostIfindex, 'hostIfindex');
  writeU32(buf, 4, v.endpointId, 'endpointId');
  parseMac(v.containerMac).copy(buf, 8);
  parseMac(v.hostMac).copy(buf, 14);
  return buf;
}

/** The host ifindex of a local_endpoints value read in place (a walk over packed values decodes no MAC). */
export function localEndpointIfindex(values: Buffer, offset = 0): number {
  return readHostU32(values, offset);
}

export function decodeLocalEndpoint(buf: Buffer): LocalEndpointValue {
  return {
    hostIfindex: readHostU32(buf, 0),
    endpointId: readHostU32(buf, 4),
    containerMac: formatMac(buf.subarray(8, 14)),
    hostMac: formatMac(buf.subarray(14, 20)),
  };
}

export function encodeGlobalConfig(v: GlobalConfigValue): Buffer {
  const buf = Buffer.alloc(GLOBAL_CONFIG_SIZE);
  writeU32(buf, 0, (v.events ? CFG_F_EVENTS : 0) | (v.audit ? CFG_F_AUDIT : 0), 'flags');
  writeU32(buf, 4, v.eventsPerSecond ?? 0, 'eventsPerSecond');
  writeU32(buf, 8, v.eventsBurst ?? 0, 'eventsBurst');
  writeU32(buf, 12, v.ctPerEndpoint ?? 0, 'ctPerEndpoint');
  return buf;
}

export function decodeGlobalConfig(buf: Buffer): Required<GlobalConfigValue> {
  const flags = readHostU32(buf, 0);
  return {
    events: (flags & CFG_F_EVENTS) !== 0,
    audit: (flags & CFG_F_AUDIT) !== 0,
    eventsPerSecond: readHostU32(buf, 4),
    eventsBurst: readHostU32(buf, 8),
    ctPerEndpoint: readHostU32(buf, 12),
  };
}

/** Sum of a per-CPU u64 value. */
export function sumPerCpuU64(buf: Buffer, possibleCpus: number): bigint {
  let sum = 0n;
  for (let cpu = 0; cpu < possibleCpus; cpu++) sum += readHostU64(buf, cpu * 8);
  return sum;
}

/** Sum of a per-CPU {u64 a; u64 b} value (drop counters: packets, bytes). */
export function sumPerCpuPairs(buf: Buffer, possibleCpus: number): { a: bigint; b: bigint } {
  let a = 0n,
    b = 0n;
  for (let cpu = 0; cpu < possibleCpus; cpu++) {
    a += readHostU64(buf, cpu * 16);
    b += readHostU64(buf, cpu * 16 + 8);
  }
  return { a, b };
}

/** Number of CPUs from /sys/devices/system/cpu/possible text, e.g. "0-3,8-11" -> 8. */
export function parseCpuList(text: string): number {
  let count = 0;
  for (const part of text.trim().split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new RangeError(`invalid CPU list: ${JSON.stringify(text)}`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    count += hi - lo + 1;
  }
  return count;
}

/** Kernel layout of a per-CPU map value buffer: each CPU's slot is padded to 8 bytes. */
export function perCpuValueSize(valueSize: number, possibleCpus: number): number {
  return Math.ceil(valueSize / 8) * 8 * possibleCpus;
}

/** Sum the per-CPU struct endpoint_counters_value slots of one lookup. */
export function sumPerCpuCounters(buf: Buffer, possibleCpus: number): EndpointCounters {
  const stride = Math.ceil(ENDPOINT_COUNTERS_SIZE / 8) * 8;
  if (buf.length < stride * possibleCpus) {
    throw new RangeError(`per-CPU buffer too small: ${buf.length} < ${stride} x ${possibleCpus}`);
  }
  const sum: EndpointCounters = { rxPackets: 0n, rxBytes: 0n, txPackets: 0n, txBytes: 0n };
  for (let cpu = 0; cpu < possibleCpus; cpu++) {
    const base = cpu * stride;
    sum.rxPackets += readHostU64(buf, base);
    sum.rxBytes += readHostU64(buf, base + 8);
    sum.txPackets += readHostU64(buf, base + 16);
    sum.txBytes += readHostU64(buf, base + 24);
  }
  return sum;
}
