// One endpoint's state in the pinned maps: its config and counters (endpoints_cfg,
// endpoint_counters, keyed by host ifindex) and its addresses in local_endpoints, which other
// endpoints' packets are redirected by. Written in the order that never opens a window: counters
// before addresses, addresses published only when the caller says so, removed first on delete.
import * as bpf from './libbpf.ts';
import * as codec from '../maps/codec.ts';
import type { MapName } from './layout.ts';
import type { EndpointDatapathConfig } from './datapath.ts';

export interface LoadedMap {
  fd: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

/** The loaded maps as these functions use them. */
export interface MapAccess {
  map(name: MapName): LoadedMap;
  lookup(name: MapName, key: Buffer): Buffer | null;
  /** A value's size as the syscalls see it (per-CPU maps: one slot per possible CPU). */
  valueSize(m: LoadedMap): number;
}

/** endpoints_cfg and endpoint_counters; local_endpoints is publishEndpoint's. */
export function upsertEndpoint(d: MapAccess, cfg: EndpointDatapathConfig): void {
  // Encode everything first so a bad address or MAC changes nothing.
  const ifKey = codec.encodeU32Key(cfg.hostIfindex);
  for (const ip of cfg.ips) codec.encodeIpKey(ip);
  const prevRaw = d.lookup('endpoints_cfg', ifKey);
  const prev = prevRaw ? codec.decodeEndpointConfig(prevRaw) : null;
  const sameEndpoint = prev?.endpointId === cfg.endpointId;
  // The policy engine owns the low flag bits of a live endpoint: a re-sync (restore, new labels)
  // must not switch enforcement off, not even for a moment.
  const flags = sameEndpoint ? ((cfg.flags & ~codec.EP_POLICY_FLAGS) | (prev!.flags & codec.EP_POLICY_FLAGS)) >>> 0 : cfg.flags;
  const config = codec.encodeEndpointConfig({
    endpointId: cfg.endpointId,
    identity: cfg.identity,
    flags,
    hostMac: cfg.hostMac,
    containerMac: cfg.containerMac,
    ifindex: cfg.hostIfindex,
    policyRevision: sameEndpoint ? prev!.policyRevision : 0,
    ips: cfg.ips,
    gateway6: cfg.gateway6,
  });

  // Counters belong to (ifindex, endpoint): a re-sync of the same endpoint keeps them, a reused
  // ifindex starts from zero. Created before the addresses so the first redirected packet counts.
  const counters = d.map('endpoint_counters');
  const zero = Buffer.alloc(d.valueSize(counters));
  if (!sameEndpoint) bpf.mapUpdate(counters.fd, 'endpoint_counters', ifKey, zero);
  else if (!d.lookup('endpoint_counters', ifKey)) bpf.mapUpdate(counters.fd, 'endpoint_counters', ifKey, zero, bpf.BPF_NOEXIST);

  bpf.mapUpdate(d.map('endpoints_cfg').fd, 'endpoints_cfg', ifKey, config);
}

/** local_endpoints: its addresses point at it; addresses it no longer has stop doing so. */
export function publishEndpoint(d: MapAccess, cfg: EndpointDatapathConfig): void {
  const ipKeys = cfg.ips.map((ip) => codec.encodeIpKey(ip));
  const local = codec.encodeLocalEndpoint({
    hostIfindex: cfg.hostIfindex,
    endpointId: cfg.endpointId,
    containerMac: cfg.containerMac,
    hostMac: cfg.hostMac,
  });
  const locals = d.map('local_endpoints');
  for (const key of ipKeys) bpf.mapUpdate(locals.fd, 'local_endpoints', key, local);
  const wanted = new Set(ipKeys.map((k) => k.toString('hex')));
  removeLocalAddresses(d, cfg.hostIfindex, (key) => !wanted.has(key.toString('hex')));
}

/** Delete local_endpoints entries owned by hostIfindex that `select` picks. */
function removeLocalAddresses(d: MapAccess, hostIfindex: number, select: (key: Buffer) => boolean): void {
  const locals = d.map('local_endpoints');
  // One batched read of the whole map into two packed buffers, read in place: every publish walks
  // the map, so an object (and two formatted MACs) per entry made a restore of N endpoints O(N^2)
  // in allocations (a syscall per entry before that made every create O(endpoints) in syscalls).
  const vs = d.valueSize(locals);
  const chunk = Math.min(locals.maxEntries, 4096);
  const { keys, values, count } = bpf.mapDumpPacked(locals.fd, 'local_endpoints', locals.keySize, vs, chunk);
  for (let i = 0; i < count; i++) {
    if (codec.localEndpointIfindex(values, i * vs) !== hostIfindex) continue;
    const key = Buffer.from(keys.subarray(i * locals.keySize, (i + 1) * locals.keySize));
    if (select(key)) bpf.mapDelete(locals.fd, 'local_endpoints', key);
  }
}

/** See Datapath.removeEndpoint: idempotent; hostIfindex 0 removes only the given addresses. */
export function removeEndpoint(d: MapAccess, hostIfindex: number, ips: string[]): void {
  const ifKey = codec.encodeU32Key(hostIfindex);
  const locals = d.map('local_endpoints');
  // Stop redirecting to it first; an address already handed to another endpoint is left alone.
  for (const ip of ips) {
    const key = codec.encodeIpKey(ip);
    const value = d.lookup('local_endpoints', key);
    if (value && (hostIfindex === 0 || codec.decodeLocalEndpoint(value).hostIfindex === hostIfindex)) {
      bpf.mapDelete(locals.fd, 'local_endpoints', key);
    }
  }
  if (hostIfindex === 0) return;
  removeLocalAddresses(d, hostIfindex, () => true); // leftovers from an older address set
  bpf.mapDelete(d.map('endpoints_cfg').fd, 'endpoints_cfg', ifKey);
  bpf.mapDelete(d.map('endpoint_counters').fd, 'endpoint_counters', ifKey);
}
