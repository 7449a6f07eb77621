// Conntrack upkeep from userspace: collect expired entries, flush the flows of addresses that are gone,
// revoke flows a policy change denies, and keep the per-endpoint entry counts the datapath's share
// check reads (bpf/lib/maps.h: ct_owned is the datapath's half, ct_reclaimed the agent's). Each call
// is one batched walk (bpf_map_lookup_batch) and batched deletes.
import * as bpf from '../bpf/libbpf.ts';
import { encodeIpKey } from './codec.ts';
import { formatIp, HOST_LITTLE_ENDIAN as LE, readHostU32, readHostU64Number } from '../net/index.ts';

// struct ct_key (bpf/lib/conntrack.h): family @0, proto @1, scope @2, sport @4, dport @6 (network
// order), saddr[16] @8, daddr[16] @24.
export const CT_KEY_SIZE = 40;
// struct ct_entry: created_ns @0, last_seen_ns @8, packets[2] @16, bytes[2] @32, src_identity @48,
// dst_identity @52, tcp_isn @56, tcp_flags_seen[2] @60, state @62, flags @63, rule_id @64,
// endpoint_id @68, ifindex @72, rule_id_ingress @76, peer_ifindex @80, peer_endpoint_id @84,
// policy_port @88 (network order).
export const CT_ENTRY_SIZE = 96;
const OFF = {
  lastSeen: 8,
  srcIdentity: 48,
  dstIdentity: 52,
  state: 62,
  flags: 63,
  endpointId: 68,
  peerEndpointId: 84,
  policyPort: 88,
} as const;

export const CT_SCOPE = { INGRESS: 0, EGRESS: 1, LOCAL: 2 } as const;
export const CT_F_AUDIT = 1 << 0;
export const CT_F_REVOKED = 1 << 3;
export const CT_F_PROXY = 1 << 4;
/** The peer's identity came with the packet (a tunnel's VNI): revalidation keeps it, never asks the ipcache. */
export const CT_F_TUNNEL = 1 << 5;

/** Same lifetimes as bpf/lib/conntrack.h. As doubles: nanoseconds since boot are exact to 104 days and
 *  off by a few ns after, which no lifetime notices; the walk compares 100,000s of them. */
const CT_LIFETIME_NS = { tcpSyn: 60e9, tcp: 21_600e9, tcpClosing: 10e9, other: 60e9 };

const u32 = readHostU32;
const u64 = readHostU64Number;
const s64 = (b: Buffer, o: number) => (LE ? b.readBigInt64LE(o) : b.readBigInt64BE(o));

/** A conntrack entry as revalidation needs it. Addresses are the key's 16 bytes (IPv4 in the first
 *  4), not text: a walk asks about 100,000s of entries. */
export interface CtEntryView {
  family: 4 | 6;
  proto: number;
  scope: number;
  saddr: Buffer;
  daddr: Buffer;
  sport: number;
  dport: number;
  /** The endpoint whose point made it (LOCAL: the sender) and, for LOCAL, the receiver. */
  owner: number;
  peer: number;
  /** The port the policy was asked about (ICMP: 0x100 | type). */
  policyPort: number;
  flags: number;
  srcIdentity: number;
  dstIdentity: number;
}

export function viewOf(key: Buffer, value: Buffer): CtEntryView {
  const family = key[0] === 6 ? 6 : 4;
  return {
    family,
    proto: key[1],
    scope: key[2],
    saddr: key.subarray(8, 24),
    daddr: key.subarray(24, 40),
    sport: key.readUInt16BE(4),
    dport: key.readUInt16BE(6),
    owner: u32(value, OFF.endpointId),
    peer: u32(value, OFF.peerEndpointId),
    policyPort: value.readUInt16BE(OFF.policyPort),
    flags: value[OFF.flags],
    srcIdentity: u32(value, OFF.srcIdentity),
    dstIdentity: u32(value, OFF.dstIdentity),
  };
}

/** A walk of the table: packed keys and values (bpf.mapDumpPacked), read in place. */
interface Walk {
  keys: Buffer;
  values: Buffer;
  count: number;
}

const keyAt = (w: Walk, i: number) => w.keys.subarray(i * CT_KEY_SIZE, (i + 1) * CT_KEY_SIZE);
const valueAt = (w: Walk, i: number) => w.values.subarray(i * CT_ENTRY_SIZE, (i + 1) * CT_ENTRY_SIZE);
const ownerAt = (w: Walk, i: number) => u32(w.values, i * CT_ENTRY_SIZE + OFF.endpointId);

/** Large batches: a full table of 131,072 entries is two syscalls. */
function walk(fd: number): Walk {
  // 64k-entry batches for a full table; a walk after an endpoint's ADD usually finds a few hundred
  // (the first batch's buffers are reused from walk to walk: bpf.mapDumpPacked).
  return bpf.mapDumpPacked(fd, 'conntrack', CT_KEY_SIZE, CT_ENTRY_SIZE, 65536, Infinity, 512);
}

function lifetimeOf(proto: number, state: number): number {
  return proto !== 6
    ? CT_LIFETIME_NS.other
    : state === 0
      ? CT_LIFETIME_NS.tcpSyn
      : state === 1
        ? CT_LIFETIME_NS.tcp
        : CT_LIFETIME_NS.tcpClosing;
}

/** Has the entry outlived its lifetime (the datapath treats it as absent then)? */
function expiredAt(w: Walk, i: number, nowNs: number): boolean {
  const v = i * CT_ENTRY_SIZE;
  const lastSeen = u64(w.values, v + OFF.lastSeen);
  const lifetime = lifetimeOf(w.keys[i * CT_KEY_SIZE + 1], w.values[v + OFF.state]);
  return nowNs > lastSeen && nowNs - lastSeen > lifetime;
}

/** An entry as `membrane bpf ct list` shows it: the revalidation view (addresses as text) plus state,
 *  timers and totals. */
export interface CtDetail extends Omit<CtEntryView, 'saddr' | 'daddr'> {
  saddr: string;
  daddr: string;
  /** 0 SYN seen, 1 established, 2 closing (TCP); other protocols stay 0. */
  state: number;
  ruleId: number;
  /** Packets and bytes in the flow's direction and in the reply direction. */
  packets: [number, number];
  bytes: [number, number];
  /** TCP flags seen each way. */
  tcpFlags: [number, number];
  ifindex: number;
  /** Seconds until it expires without traffic (<= 0: expired, about to be collected). */
  expiresInSeconds: number;
  ageSeconds: number;
}

/** Every entry of the table, decoded (one batched walk; read-only). */
export function list(fd: number, nowNs: bigint): CtDetail[] {
  const w = walk(fd);
  const now = Number(nowNs);
  const out: CtDetail[] = [];
  for (let i = 0; i < w.count; i++) {
    const k = keyAt(w, i),
      v = valueAt(w, i);
    const lastSeen = u64(v, OFF.lastSeen),
      created = u64(v, 0);
    const view = viewOf(k, v);
    const text = (a: Buffer) => formatIp(view.family === 4 ? a.subarray(0, 4) : a);
    out.push({
      ...view,
      saddr: text(view.saddr),
      daddr: text(view.daddr),
      state: v[OFF.state],
      ruleId: u32(v, 64),
      ifindex: u32(v, 72),
      packets: [u64(v, 16), u64(v, 24)],
      bytes: [u64(v, 32), u64(v, 40)],
      tcpFlags: [v[60], v[61]],
      expiresInSeconds: (lifetimeOf(k[1], v[OFF.state]) - (now - lastSeen)) / 1e9,
      ageSeconds: (now - created) / 1e9,
    });
  }
  return out;
}

export interface ConntrackFds {
  conntrack: number;
  owned: number;
  reclaimed: number;
  /** max_entries of the conntrack map. */
  capacity: number;
}

export interface ConntrackFill {
  /** Entries in the table (the datapath's count; exact up to flows created during the last walk). */
  entries: number;
  max: number;
}

function readCounter(fd: number, map: string, id: number): bigint {
  const key = Buffer.alloc(4);
  if (LE) key.writeUInt32LE(id);
  else key.writeUInt32BE(id);
  const v = bpf.mapLookup(fd, map, key, 8);
  return v ? s64(v, 0) : 0n;
}

/** Entries the node's table holds, from the two counters (no walk). */
export function fill(fds: ConntrackFds): ConntrackFill {
  const entries = readCounter(fds.owned, 'ct_owned', 0) - readCounter(fds.reclaimed, 'ct_reclaimed', 0);
  return { entries: Math.max(0, Math.min(Number(entries), fds.capacity)), max: fds.capacity };
}

/** Entries one endpoint owns. */
export function owned(fds: ConntrackFds, endpointId: number): number {
  return Math.max(
    0,
    Number(readCounter(fds.owned, 'ct_owned', endpointId) - readCounter(fds.reclaimed, 'ct_reclaimed', endpointId)),
  );
}

/**
 * Walks the table, deletes the entries `select` picks and sets every owner's reclaimed count so that
 * owned - reclaimed equals the entries it still has. Setting (rather than adding) heals any drift: the
 * error is bounded by the flows created or closed by the datapath during this walk.
 */
function deleteWhere(fds: ConntrackFds, select: (w: Walk, i: number) => boolean): number {
  // Endpoint ids are handed out lowest first: the counters up to the highest owner seen (last walk or
  // this one) are all that can be off. An owner with no entry left had its count set by the walk that
  // saw its last entries, or brought to zero by the datapath's own deletes.
  const ownedBefore = countersById(fds.owned, 'ct_owned', Math.max(highestOwner.get(fds.owned) ?? 0, 1024));
  const w = walk(fds.conntrack);
  const live = new Map<number, number>();
  const doomed: number[] = [];
  let highest = 0;
  for (let i = 0; i < w.count; i++) {
    if (select(w, i)) doomed.push(i);
    const owner = ownerAt(w, i);
    live.set(owner, (live.get(owner) ?? 0) + 1);
    if (owner > highest) highest = owner;
  }
  highestOwner.set(fds.owned, highest);
  let deleted = 0;
  if (doomed.length) {
    const gone = bpf.mapDeleteEach(
      fds.conntrack,
      'conntrack',
      Buffer.concat(doomed.map((i) => keyAt(w, i))),
      CT_KEY_SIZE,
      doomed.length,
    );
    gone.forEach((g, j) => {
      if (!g) return;
      deleted++;
      const owner = ownerAt(w, doomed[j]);
      live.set(owner, live.get(owner)! - 1);
    });
  }
  let total = 0;
  for (const n of live.values()) total += n;
  live.set(0, total);
  const ids = new Set([...ownedBefore.keys(), ...live.keys()]);
  const reclaimed = [...ids]
    .filter((id) => id < 65536)
    .map((id) => [id, (ownedBefore.get(id) ?? 0n) - BigInt(live.get(id) ?? 0)] as const);
  writeCounters(fds.reclaimed, 'ct_reclaimed', reclaimed);
  return deleted;
}

/** The highest owner id each table's last walk saw (by the ct_owned fd). */
const highestOwner = new Map<number, number>();

/** Non-zero slots of a counter array, up to slot `upTo`. */
function countersById(fd: number, map: string, upTo: number): Map<number, bigint> {
  const { values, count } = bpf.mapDumpPacked(fd, map, 4, 8, Math.min(upTo + 1, 65536), 1);
  const out = new Map<number, bigint>();
  for (let i = 0; i < count; i++) {
    const v = s64(values, i * 8);
    if (v !== 0n) out.set(i, v); // an array dumps in index order
  }
  return out;
}

function writeCounters(fd: number, map: string, entries: (readonly [number, bigint])[]): void {
  if (!entries.length) return;
  const keys = Buffer.alloc(entries.length * 4);
  const values = Buffer.alloc(entries.length * 8);
  entries.forEach(([id, v], i) => {
    if (LE) {
      keys.writeUInt32LE(id, i * 4);
      values.writeBigInt64LE(v, i * 8);
    } else {
      keys.writeUInt32BE(id, i * 4);
      values.writeBigInt64BE(v, i * 8);
    }
  });
  bpf.mapUpdateBatch(fd, map, keys, values, entries.length);
}

/** Delete every entry whose source or destination is one of `ips`. */
export function flushAddresses(fds: ConntrackFds, ips: string[]): number {
  if (!ips.length) return 0;
  const wanted = new Set(ips.map((ip) => encodeIpKey(ip).subarray(4).toString('hex')));
  return deleteWhere(fds, (w, i) => {
    const k = i * CT_KEY_SIZE;
    return wanted.has(w.keys.toString('hex', k + 8, k + 24)) || wanted.has(w.keys.toString('hex', k + 24, k + 40));
  });
}

/** Delete every entry these endpoints own or, pod to pod, receive: by endpoint id, since a deleted
 *  endpoint's addresses may already belong to a new endpoint whose flows must stay. */
export function flushEndpoints(fds: ConntrackFds, ids: readonly number[]): number {
  if (!ids.length) return 0;
  const gone = new Set(ids);
  return deleteWhere(fds, (w, i) => gone.has(ownerAt(w, i)) || gone.has(u32(w.values, i * CT_ENTRY_SIZE + OFF.peerEndpointId)));
}

/** Delete every entry that outlived its lifetime at `nowNs` (CLOCK_MONOTONIC = the kernel's ktime). */
export function collectExpired(fds: ConntrackFds, nowNs: bigint): number {
  const now = Number(nowNs);
  return deleteWhere(fds, (w, i) => expiredAt(w, i, now));
}

/** Which entries a policy change can have touched: those of these endpoints (as owner or, pod to pod,
 *  receiver), and those with an address inside one of these prefixes (their peer's identity may have
 *  changed). Without a filter every entry is asked. */
export interface RevokeFilter {
  endpoints: Set<number>;
  /** family, the prefix's 16 address bytes (IPv4 in the first 4), its length in bits. */
  prefixes: { family: number; addr: Buffer; bits: number }[];
}

function addressIn(keys: Buffer, off: number, p: { addr: Buffer; bits: number }): boolean {
  const whole = p.bits >> 3,
    rest = p.bits & 7;
  if (keys.compare(p.addr, 0, whole, off, off + whole) !== 0) return false;
  if (!rest) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (keys[off + whole] & mask) === (p.addr[whole] & mask);
}

function touched(w: Walk, i: number, f: RevokeFilter): boolean {
  const v = i * CT_ENTRY_SIZE,
    k = i * CT_KEY_SIZE;
  if (f.endpoints.has(u32(w.values, v + OFF.endpointId)) || f.endpoints.has(u32(w.values, v + OFF.peerEndpointId))) return true;
  for (const p of f.prefixes) {
    if (p.family === w.keys[k] && (addressIn(w.keys, k + 8, p) || addressIn(w.keys, k + 24, p))) return true;
  }
  return false;
}

/** A revalidation's answer for one entry: admitted (true), revoked (false), or forgotten: the policy
 *  denies its flow both ways as a new flow, so the entry stops nothing the policy would not, and it is
 *  deleted (its owner's share back at once, rather than held for the flow's 6 h lifetime). */
export type CtVerdict = boolean | 'forget';

/**
 * Marks revoked the live entries whose flow `allowed` no longer admits (bpf/lib/ct.h: the initiator's
 * next packet is checked as a new flow, the other side's are dropped). Entries stay so that the
 * reverse direction cannot pass itself off as a new flow; they expire as usual. Entries `allowed`
 * forgets are deleted, and the owners' counts taken again.
 */
export function revoke(fds: ConntrackFds, allowed: (e: CtEntryView) => CtVerdict, nowNs: bigint, filter?: RevokeFilter): number {
  const w = walk(fds.conntrack);
  const now = Number(nowNs);
  let revoked = 0,
    forgotten = 0;
  for (let i = 0; i < w.count; i++) {
    if (w.values[i * CT_ENTRY_SIZE + OFF.flags] & CT_F_REVOKED || (filter && !touched(w, i, filter)) || expiredAt(w, i, now))
      continue;
    const k = keyAt(w, i),
      v = valueAt(w, i);
    const verdict = allowed(viewOf(k, v));
    if (verdict === true) continue;
    // The datapath may have updated the entry since the walk: mark its current value.
    const cur = bpf.mapLookup(fds.conntrack, 'conntrack', k, CT_ENTRY_SIZE);
    if (!cur || u32(cur, OFF.endpointId) !== u32(v, OFF.endpointId)) continue;
    if (verdict === 'forget') {
      if (bpf.mapDelete(fds.conntrack, 'conntrack', k)) forgotten++;
      continue;
    }
    cur[OFF.flags] |= CT_F_REVOKED;
    try {
      bpf.mapUpdate(fds.conntrack, 'conntrack', k, cur, 2 /* BPF_EXIST: never re-create a closed flow */);
      revoked++;
    } catch (err) {
      if (!(err instanceof bpf.BpfError && err.code === 'ENOENT')) throw err;
    }
  }
  if (forgotten) deleteWhere(fds, () => false); // the owners' counts (ct_reclaimed), as a GC pass does
  return revoked + forgotten;
}

/** Copies a table's flows into another of `capacity` entries, the most recently seen first (when it
 *  shrinks). Flows the old programs create until they are re-attached are lost: they meet policy as
 *  new flows then. The counts are set right by the next walk (deleteWhere). */
export function migrate(fromFd: number, toFd: number, capacity: number): number {
  const w = walk(fromFd);
  const lastSeen = (i: number) => u64(w.values, i * CT_ENTRY_SIZE + OFF.lastSeen);
  const order = Array.from({ length: w.count }, (_, i) => i)
    .sort((a, b) => lastSeen(b) - lastSeen(a))
    .slice(0, capacity);
  for (let i = 0; i < order.length; i += 4096) {
    const chunk = order.slice(i, i + 4096);
    bpf.mapUpdateBatch(
      toFd,
      'conntrack',
      Buffer.concat(chunk.map((j) => keyAt(w, j))),
      Buffer.concat(chunk.map((j) => valueAt(w, j))),
      chunk.length,
    );
  }
  return order.length;
}
