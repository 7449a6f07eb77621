// One endpoint's state in the pinned maps: its config (endpoints_cfg, keyed by host ifindex), its
// counters (ep_counters, an array indexed by endpoint id) and its addresses in local_endpoints, which other
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

/** endpoints_cfg and ep_counters; local_endpoints is publishEndpoint's. */
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

  // Counters belong to the endpoint: a re-sync of the same endpoint (restore on pinned maps) keeps
  // them; an id given to a new endpoint starts from zero (its slot may hold a previous owner's
  // counts: an array slot cannot be deleted). Zeroed before the config and addresses name the id.
  if (!sameEndpoint) zeroCounters(d, cfg.endpointId);

  bpf.mapUpdate(d.map('endpoints_cfg').fd, 'endpoints_cfg', ifKey, config);
}

/**
 * Which local_endpoints keys point at which host interface, read with one dump: a restore publishes
 * every endpoint against it instead of walking the whole map once per endpoint (N endpoints: N
 * walks of N entries). The publishes made through it keep it current; an entry it lists that the
 * map no longer has, or that points elsewhere by now, is left alone (each stale one is looked up
 * before it is deleted).
 */
export class LocalEndpointsIndex {
  private readonly byIfindex = new Map<number, Set<string>>();
  private readonly owner = new Map<string, number>();

  constructor(d: MapAccess) {
    const locals = d.map('local_endpoints');
    const vs = d.valueSize(locals);
    const chunk = Math.min(locals.maxEntries, 4096);
    const { keys, values, count } = bpf.mapDumpPacked(locals.fd, 'local_endpoints', locals.keySize, vs, chunk);
    for (let i = 0; i < count; i++) {
      this.set(keys.toString('hex', i * locals.keySize, (i + 1) * locals.keySize), codec.localEndpointIfindex(values, i * vs));
    }
  }

  /** Keys (hex) that pointed at hostIfindex. */
  keysOf(hostIfindex: number): string[] {
    return [...(this.byIfindex.get(hostIfindex) ?? [])];
  }

  /** hostIfindex now has exactly these keys (hex). */
  record(hostIfindex: number, keys: Set<string>): void {
    for (const hex of this.keysOf(hostIfindex)) if (!keys.has(hex)) this.delete(hex);
    for (const hex of keys) this.set(hex, hostIfindex);
  }

  private set(hex: string, ifindex: number): void {
    const was = this.owner.get(hex);
    if (was === ifindex) return;
    if (was !== undefined) this.delete(hex);
    this.owner.set(hex, ifindex);
    let set = this.byIfindex.get(ifindex);
    if (!set) this.byIfindex.set(ifindex, (set = new Set()));
    set.add(hex);
  }

  private delete(hex: string): void {
    const ifindex = this.owner.get(hex);
    if (ifindex === undefined) return;
    this.owner.delete(hex);
    this.byIfindex.get(ifindex)?.delete(hex);
  }
}

/** local_endpoints: its addresses point at it; addresses it no longer has stop doing so. With an
 *  index (restore), the addresses it no longer has are found there instead of by a walk of the map. */
export function publishEndpoint(d: MapAccess, cfg: EndpointDatapathConfig, index?: LocalEndpointsIndex): void {
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
  if (!index) {
    removeLocalAddresses(d, cfg.hostIfindex, (key) => !wanted.has(key.toString('hex')));
    return;
  }
  for (const hex of index.keysOf(cfg.hostIfindex)) {
    if (wanted.has(hex)) continue;
    const key = Buffer.from(hex, 'hex');
    const value = d.lookup('local_endpoints', key);
    if (value && codec.localEndpointIfindex(value, 0) === cfg.hostIfindex) bpf.mapDelete(locals.fd, 'local_endpoints', key);
  }
  index.record(cfg.hostIfindex, wanted);
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
  // The id's counter slot stays as it is: a stale entry (a crashed delete, an ifindex a foreign
  // interface has now) may name an id a live endpoint was given since, and the id's next owner starts
  // from zero anyway (upsertEndpoint zeroes the slot). Nothing reads a slot no config names.
  bpf.mapDelete(d.map('endpoints_cfg').fd, 'endpoints_cfg', ifKey);
}

/** An endpoint's counters: its config names its id, the id its ep_counters slot. */
export function readCounters(d: MapAccess, hostIfindex: number, cpus: number): codec.EndpointCounters | null {
  const cfg = d.lookup('endpoints_cfg', codec.encodeU32Key(hostIfindex));
  if (!cfg) return null;
  const id = codec.decodeEndpointConfig(cfg).endpointId;
  if (id >= d.map('ep_counters').maxEntries) return null; // an id from before ids stayed below it: not counted
  const raw = d.lookup('ep_counters', codec.encodeU32Key(id));
  return raw ? codec.sumPerCpuCounters(raw, cpus) : null;
}

/**
 * An upgrade from an object that counted in endpoint_counters (a per-CPU hash by host ifindex, fd
 * `oldFd`): each configured endpoint's counts go to its ep_counters slot, so what users see goes on
 * from where it was instead of restarting at zero. What the old programs count until the endpoints are
 * re-attached is lost. A pin of another shape is left alone (its values would not fit).
 */
export function adoptRetiredCounters(d: MapAccess, oldFd: number, ifKeys: Buffer[]): number {
  // struct bpf_map_info starts with u32 type, id, key_size, value_size.
  const [type, , keySize, valueSize] = bpf.objInfo(oldFd, 4, 'map endpoint_counters');
  if (type !== 5 /* PERCPU_HASH */ || keySize !== 4 || valueSize !== codec.ENDPOINT_COUNTERS_SIZE) return 0;
  const counters = d.map('ep_counters');
  let adopted = 0;
  for (const ifKey of ifKeys) {
    const cfg = d.lookup('endpoints_cfg', ifKey);
    const old = cfg && bpf.mapLookup(oldFd, 'endpoint_counters', ifKey, d.valueSize(counters));
    const id = cfg && codec.decodeEndpointConfig(cfg).endpointId;
    if (!id || !old || id >= counters.maxEntries) continue;
    bpf.mapUpdate(counters.fd, 'ep_counters', codec.encodeU32Key(id), old);
    adopted++;
  }
  return adopted;
}

function zeroCounters(d: MapAccess, endpointId: number): void {
  const counters = d.map('ep_counters');
  if (endpointId >= counters.maxEntries) return; // no slot: see readCounters
  bpf.mapUpdate(counters.fd, 'ep_counters', codec.encodeU32Key(endpointId), Buffer.alloc(d.valueSize(counters)));
}
