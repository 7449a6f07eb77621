// The packet fuzzer's model of how the datapath reads a frame: anti-spoofing (bpf/lib/spoof.h) and
// parsing with the fragments map (bpf/lib/parse.h), written again from the C's rules in TypeScript so
// the real program can be held to it (shared/test/bpf-fuzz.test.ts). Frames are as BPF_PROG_TEST_RUN
// sees them: linear, skb->len = the frame's length, skb->protocol = the ethertype (>= 0x600).

export const R = {
  INVALID_SOURCE_MAC: 130,
  SOURCE_SPOOFED: 132,
  POLICY_DENIED: 133,
  INVALID_PACKET: 134,
  TRUNCATED: 135,
  UNSUPPORTED_L3: 139,
  INSERT_FAILED: 155,
  BAD_EXTHDR: 156,
  NO_CONFIG: 165,
  FRAG_NOT_FOUND: 175,
  FORBIDDEN_ICMPV6: 176,
} as const;

export const EP_ADDR = { HAS_IPV4: 1 << 8, HAS_IPV6: 1 << 9, EXTRA: 1 << 10 } as const;

/** An address as the maps hold it: 16 bytes, IPv4 in the first 4, in hex. */
export type Addr = string;
export const addrOf = (b: Buffer, off: number, n: 4 | 16): Addr =>
  Buffer.concat([b.subarray(off, off + n), Buffer.alloc(16 - n)]).toString('hex');
export const ZERO: Addr = '0'.repeat(32);

export interface ModelEndpoint {
  ifindex: number;
  id: number;
  identity: number;
  /** Policy bits and address bits, as endpoint_config.flags. */
  flags: number;
  mac: string; // hex, 12 digits
  ipv4: Addr;
  ipv6: Addr;
  gateway6: Addr;
}

export interface Pkt {
  family: number;
  proto: number;
  tcpFlags: number;
  /** TCP: nothing after the header (parse.h tcp_bare). */
  tcpBare: boolean;
  icmpType: number;
  hasL4: boolean;
  icmpError: boolean;
  hopLimit: number;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  l4Off: number;
  later: boolean;
  saddr: Addr;
  daddr: Addr;
}

export type Parsed = { kind: 'ip'; p: Pkt } | { kind: 'other' } | { kind: 'drop'; reason: number };

export interface FragValue {
  proto: number;
  sport: number;
  dport: number;
  icmpType: number;
  icmpEcho: boolean;
}

const be16 = (b: Buffer, o: number) => (b[o] << 8) | b[o + 1];
const be32 = (b: Buffer, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
/** skb->protocol after eth_type_trans: the ethertype, or "not IP" for an 802.3 length field. */
export const protocolOf = (f: Buffer) => {
  const t = be16(f, 12);
  return t >= 0x600 ? t : 0x0004;
};
const can = (f: Buffer, off: number, len: number) => off + len <= f.length;

function l4Min(proto: number): number {
  return proto === 6 ? 20 : proto === 132 ? 12 : proto === 17 || proto === 1 || proto === 58 ? 8 : 0;
}

function icmpIsError(family: number, type: number): boolean {
  return family === 4 ? type === 3 || type === 11 || type === 12 : type >= 1 && type <= 4;
}
function icmpIsEcho(family: number, type: number): boolean {
  return family === 4 ? type === 8 || type === 0 : type === 128 || type === 129;
}

function parseL4(f: Buffer, p: Pkt): void {
  const o = p.l4Off;
  switch (p.proto) {
    case 6:
      if (!can(f, o, 20)) return;
      p.sport = be16(f, o);
      p.dport = be16(f, o + 2);
      p.seq = be32(f, o + 4);
      p.ack = be32(f, o + 8);
      p.tcpFlags = f[o + 13];
      p.tcpBare = f.length <= o + (f[o + 12] >> 4) * 4;
      p.hasL4 = true;
      return;
    case 17:
    case 132:
      if (!can(f, o, p.proto === 17 ? 8 : 12)) return;
      p.sport = be16(f, o);
      p.dport = be16(f, o + 2);
      p.hasL4 = true;
      return;
    case 1:
    case 58:
      if (!can(f, o, 8)) return;
      p.icmpType = f[o];
      p.hasL4 = true;
      if (icmpIsEcho(p.family, f[o])) {
        p.sport = p.dport = be16(f, o + 4);
      } else if (icmpIsError(p.family, f[o])) p.icmpError = true;
  }
}

function required(f: Buffer, p: Pkt, avail: number): Parsed {
  const need = l4Min(p.proto);
  if (!need) return { kind: 'ip', p };
  if (avail < need) return { kind: 'drop', reason: R.TRUNCATED };
  parseL4(f, p);
  return p.hasL4 ? { kind: 'ip', p } : { kind: 'drop', reason: R.TRUNCATED };
}

const fragKey = (p: Pkt, proto: number, id: number) => `${p.family}/${proto}/${id}/${p.saddr}/${p.daddr}`;

function first(f: Buffer, p: Pkt, avail: number, proto: number, id: number, frags: Map<string, FragValue>): Parsed {
  const r = required(f, p, avail);
  if (r.kind === 'ip')
    frags.set(fragKey(p, proto, id), {
      proto: p.proto,
      sport: p.sport,
      dport: p.dport,
      icmpType: p.icmpType,
      icmpEcho: icmpIsEcho(p.family, p.icmpType) && (p.proto === 1 || p.proto === 58),
    });
  return r;
}

function later(p: Pkt, proto: number, id: number, offsetBytes: number, frags: Map<string, FragValue>): Parsed {
  const v = frags.get(fragKey(p, proto, id));
  if (!v) return { kind: 'drop', reason: R.FRAG_NOT_FOUND };
  if (offsetBytes < l4Min(v.proto)) return { kind: 'drop', reason: R.INVALID_PACKET };
  Object.assign(p, { proto: v.proto, sport: v.sport, dport: v.dport, icmpType: v.icmpType, hasL4: true, later: true });
  return { kind: 'ip', p };
}

function blank(): Pkt {
  return {
    family: 0,
    proto: 0,
    tcpFlags: 0,
    tcpBare: false,
    icmpType: 0,
    hasL4: false,
    icmpError: false,
    hopLimit: 0,
    sport: 0,
    dport: 0,
    seq: 0,
    ack: 0,
    l4Off: 0,
    later: false,
    saddr: ZERO,
    daddr: ZERO,
  };
}

const isExt = (n: number) => n === 0 || n === 43 || n === 44 || n === 51 || n === 60;

/** parse_packet, with the fragments map it reads and writes. */
export function parse(f: Buffer, frags: Map<string, FragValue>): Parsed {
  const proto = protocolOf(f);
  const p = blank();
  if (proto === 0x0800) {
    if (!can(f, 14, 20)) return { kind: 'drop', reason: R.INVALID_PACKET };
    const ihl = f[14] & 0xf,
      version = f[14] >> 4;
    Object.assign(p, { family: 4, proto: f[23], hopLimit: f[22], saddr: addrOf(f, 26, 4), daddr: addrOf(f, 30, 4) });
    if (ihl < 5 || version !== 4) return { kind: 'drop', reason: R.INVALID_PACKET };
    p.l4Off = 14 + ihl * 4;
    const frag = be16(f, 20);
    if (!(frag & 0x3fff)) return required(f, p, Infinity);
    const totLen = be16(f, 16);
    if (totLen < ihl * 4) return { kind: 'drop', reason: R.INVALID_PACKET };
    if (frag & 0x1fff) return later(p, p.proto, be16(f, 18), (frag & 0x1fff) * 8, frags);
    return first(f, p, totLen - ihl * 4, p.proto, be16(f, 18), frags);
  }
  if (proto === 0x86dd) {
    if (!can(f, 14, 40)) return { kind: 'drop', reason: R.INVALID_PACKET };
    Object.assign(p, { family: 6, hopLimit: f[21], saddr: addrOf(f, 22, 16), daddr: addrOf(f, 38, 16) });
    if (f[14] >> 4 !== 6) return { kind: 'drop', reason: R.INVALID_PACKET };
    let next = f[20],
      off = 54,
      fragOff = 0,
      fragProto = 0,
      id = 0,
      seen = false,
      more = false;
    const end = 54 + be16(f, 18);
    for (let i = 0; i < 8; i++) {
      if (!isExt(next) || fragOff) break;
      if (next === 44) {
        if (!can(f, off, 8)) return { kind: 'drop', reason: R.INVALID_PACKET };
        seen = true;
        fragProto = f[off];
        fragOff = be16(f, off + 2) & 0xfff8;
        more = (f[off + 3] & 1) === 1;
        id = be32(f, off + 4);
        next = f[off];
        off += 8;
        continue;
      }
      if (!can(f, off, 2)) return { kind: 'drop', reason: R.INVALID_PACKET };
      const hdrNext = f[off],
        hdrLen = f[off + 1];
      off += next === 51 ? (hdrLen + 2) * 4 : (hdrLen + 1) * 8;
      next = hdrNext;
    }
    p.proto = next;
    p.l4Off = off & 0xffff;
    if (fragOff) return later(p, fragProto, id, fragOff, frags);
    if (isExt(next)) return { kind: 'drop', reason: R.BAD_EXTHDR };
    if (seen && more) return first(f, p, end > off ? end - off : 0, fragProto, id, frags);
    return required(f, p, Infinity);
  }
  return { kind: 'other' };
}

const linkLocal = (a: Addr) => a.startsWith('fe') && (parseInt(a.slice(2, 4), 16) & 0xc0) === 0x80;
export const linkScoped = (a: Addr) => linkLocal(a) || (a.startsWith('ff') && (parseInt(a.slice(2, 4), 16) & 0x0f) === 0x02);
export const sourceOnLink = (a: Addr) => linkLocal(a) || a === ZERO;

/** check_source: 0, or the reason from_container drops the frame with before parsing it. */
export function checkSource(f: Buffer, ep: ModelEndpoint, ownerOf: (family: number, a: Addr) => number | undefined): number {
  const proto = protocolOf(f);
  const mac = f.subarray(6, 12).toString('hex');
  const extra = (family: number, a: Addr) => (ep.flags & EP_ADDR.EXTRA) !== 0 && ownerOf(family, a) === ep.id;
  const v4ok = (a: Addr) => ((ep.flags & EP_ADDR.HAS_IPV4) !== 0 && a === ep.ipv4) || extra(4, a);
  if (proto === 0x0800) {
    if (!can(f, 14, 20)) return R.INVALID_PACKET;
    if (mac !== ep.mac) return R.INVALID_SOURCE_MAC;
    return v4ok(addrOf(f, 26, 4)) ? 0 : R.SOURCE_SPOOFED;
  }
  if (proto === 0x86dd) {
    if (!can(f, 14, 40)) return R.INVALID_PACKET;
    if (mac !== ep.mac) return R.INVALID_SOURCE_MAC;
    const src = addrOf(f, 22, 16),
      dst = addrOf(f, 38, 16);
    if ((ep.flags & EP_ADDR.HAS_IPV6) !== 0 && src === ep.ipv6) return 0;
    if (sourceOnLink(src) && (linkScoped(dst) || dst === ep.gateway6)) return 0;
    return extra(6, src) ? 0 : R.SOURCE_SPOOFED;
  }
  if (proto === 0x0806) {
    if (!can(f, 14, 28)) return R.INVALID_PACKET;
    if (mac !== ep.mac || f.subarray(22, 28).toString('hex') !== ep.mac) return R.INVALID_SOURCE_MAC;
    if (f.subarray(14, 20).toString('hex') !== '000108000604') return R.INVALID_PACKET;
    const spa = addrOf(f, 28, 4);
    return spa === ZERO || v4ok(spa) ? 0 : R.SOURCE_SPOOFED;
  }
  return R.UNSUPPORTED_L3;
}
