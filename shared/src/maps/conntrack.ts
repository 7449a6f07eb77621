// Conntrack map upkeep from userspace: flush the flows of addresses that are gone, collect expired
// entries. One batched walk (bpf_map_lookup_batch) and one batched delete per call.
import * as bpf from '../bpf/libbpf.ts';
import { encodeIpKey } from './codec.ts';
import { readHostU64 } from '../net/index.ts';

// struct ct_key (bpf/lib/conntrack.h): family, proto, scope, pad, sport, dport, saddr[16] @8, daddr[16] @24.
// struct ct_entry: created_ns @0, last_seen_ns @8, ..., state @62, flags @63.
/** Same lifetimes as bpf/lib/conntrack.h. */
const CT_LIFETIME_NS = { tcpSyn: 60_000_000_000n, tcp: 21_600_000_000_000n, tcpClosing: 10_000_000_000n, other: 60_000_000_000n };

/** Hex of a conntrack key's source or destination address (16 bytes, IPv4 in the first 4). */
export function ctKeyAddrHex(key: Buffer, which: 'src' | 'dst'): string {
  return key.subarray(which === 'src' ? 8 : 24, which === 'src' ? 24 : 40).toString('hex');
}

/** Has a conntrack entry outlived its lifetime (the datapath treats it as absent then)? */
export function ctExpired(key: Buffer, value: Buffer, nowNs: bigint): boolean {
  const lastSeen = readHostU64(value, 8);
  const state = value[62];
  const lifetime = key[1] !== 6 ? CT_LIFETIME_NS.other
    : state === 0 ? CT_LIFETIME_NS.tcpSyn : state === 1 ? CT_LIFETIME_NS.tcp : CT_LIFETIME_NS.tcpClosing;
  return nowNs > lastSeen && nowNs - lastSeen > lifetime;
}

function deleteWhere(fd: number, keySize: number, valueSize: number, select: (key: Buffer, value: Buffer) => boolean): number {
  const { keys, values } = bpf.mapDumpBatch(fd, 'conntrack', keySize, valueSize);
  const doomed = keys.filter((k, i) => select(k, values[i]));
  if (doomed.length) bpf.mapDeleteBatch(fd, 'conntrack', Buffer.concat(doomed), keySize, doomed.length);
  return doomed.length;
}

/** Delete every entry whose source or destination is one of `ips`. */
export function flushAddresses(fd: number, keySize: number, valueSize: number, ips: string[]): number {
  if (!ips.length) return 0;
  const wanted = new Set(ips.map((ip) => encodeIpKey(ip).subarray(4).toString('hex')));
  return deleteWhere(fd, keySize, valueSize, (key) => wanted.has(ctKeyAddrHex(key, 'src')) || wanted.has(ctKeyAddrHex(key, 'dst')));
}

/** Delete every entry that outlived its lifetime at `nowNs` (CLOCK_MONOTONIC = the kernel's ktime). */
export function collectExpired(fd: number, keySize: number, valueSize: number, nowNs: bigint): number {
  return deleteWhere(fd, keySize, valueSize, (key, value) => ctExpired(key, value, nowNs));
}
