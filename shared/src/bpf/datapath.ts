// Loads the tc datapath object once per node, pins maps and programs under a bpffs directory and
// manages per-endpoint state in the pinned maps. Maps are pinned by name and reused on the next
// load, so forwarding state and tc attachments survive agent restarts and upgrades with the same
// map layouts. See bpf/README.md for the attach-mode choice (classic tc over tcx).
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from './libbpf.ts';
import * as codec from '../maps/codec.ts';
import * as conntrack from '../maps/conntrack.ts';
import { assertOnBpffs, pinnedMapMismatch, possibleCpus, removeKnownPins, replacePin } from './pins.ts';

export { assertOnBpffs, possibleCpus } from './pins.ts';

/** Unlink our pins and the directory (uninstall, tests); refuses to delete pins it does not know. */
export function removePins(pinDir: string): void {
  removeKnownPins(pinDir, [...MAP_NAMES, ...Object.values(PROGRAM_PINS)]);
}

/** Every map of bpf/endpoint.o, pinned as `${pinDir}/${name}`. Checked against the object on load. */
export const MAP_NAMES = [
  'endpoints_cfg', 'local_endpoints', 'endpoint_counters', 'ipcache', 'policy', 'conntrack', 'ct_owned', 'ct_reclaimed',
  'fragments', 'events', 'drop_counters', 'events_lost', 'event_bucket', 'datapath_config', 'proxy_config', 'proxy_udp_dst',
  'tunnel_map', 'overlay_config', // cluster mode's overlay (shared/src/overlay)
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export const PROGRAM_PINS = {
  from_container: 'prog_from_container', to_container: 'prog_to_container',
  from_host_device: 'prog_from_host_device', // the L7 proxy's hairpin (l7/datapath.ts attaches it)
  from_tunnel: 'prog_from_tunnel', to_tunnel: 'prog_to_tunnel', // the tunnel device's (overlay/device.ts attaches them)
} as const;

/** Fixed tc filter identity, so attach is an idempotent replace and query/detach find our filter. */
export const TC_HANDLE = 0x4d42; // "MB"
export const TC_PRIORITY = 1;

// enum bpf_map_type values whose entry count mapPressure() can walk.
const COUNTABLE_MAP_TYPES = new Set([1 /* HASH */, 5 /* PERCPU_HASH */, 9 /* LRU_HASH */, 10 /* LRU_PERCPU_HASH */, 11 /* LPM_TRIE */]);
const PERCPU_MAP_TYPES = new Set([5, 6 /* PERCPU_ARRAY */, 10]);

export interface EndpointDatapathConfig {
  hostIfindex: number;
  endpointId: number;
  identity: number;
  flags: number;
  hostMac: string;
  containerMac: string;
  /** Plain addresses, v4 or v6 ("10.1.0.5", "fd00::5"): the only sources it may send from. */
  ips: string[];
  /** Its IPv6 gateway: neighbour discovery towards it stays on its link. */
  gateway6?: string;
}

/** Agent-wide datapath switches (datapath_config map, key 0). */
export type GlobalConfig = codec.GlobalConfigValue;

export interface Datapath {
  readonly pinDir: string;
  /** Kernel ids of the loaded programs (what attachedProgramIds() reports when current). */
  readonly programIds: { fromContainer: number; toContainer: number };
  attach(ifindex: number): void;
  detach(ifindex: number): void;
  attachedProgramIds(ifindex: number): { ingress?: number; egress?: number };
  isCurrent(ifindex: number): boolean;
  /** endpoints_cfg and counters, then (unless `publish: false`) publishEndpoint. A new endpoint is
   *  published last, once its program and policy are in place (the redirect short-cut skips its hooks). */
  upsertEndpoint(cfg: EndpointDatapathConfig, opts?: { publish?: boolean }): void;
  /** local_endpoints: other endpoints' packets to its addresses go straight to it (bpf_redirect_peer). */
  publishEndpoint(cfg: EndpointDatapathConfig): void;
  /** Idempotent. Addresses are removed only while they still point at hostIfindex (a reassigned
   *  address is left alone). hostIfindex 0 (no interface) removes just the given addresses, whatever
   *  they point at, and keeps every per-interface entry: for endpoints sharing a host interface. */
  removeEndpoint(hostIfindex: number, ips: string[]): void;
  counters(hostIfindex: number): codec.EndpointCounters | null;
  listEndpointIfindexes(): number[];
  listLocalEndpointIps(): string[];
  mapPressure(): Record<string, { entries: number; max: number }>;
  /** fd of a pinned map, for the modules that will own policy/ipcache/conntrack/events. */
  mapFd(name: MapName): number;
  /** max_entries of a map. */
  mapCapacity(name: MapName): number;
  /** Batched hash-map writes (bpf_map_{update,delete}_batch): one syscall per call. */
  mapUpdateBatch(name: MapName, keys: Buffer, values: Buffer, count: number): void;
  mapDeleteBatch(name: MapName, keys: Buffer, count: number): void;
  setGlobalConfig(cfg: GlobalConfig): void;
  globalConfig(): GlobalConfig;
  /** Packets and bytes dropped, by enum drop_reason (bpf/lib/drop.h), summed over CPUs; only non-zero reasons. */
  dropCounters(): Record<number, { packets: bigint; bytes: bigint }>;
  /** Events the datapath could not deliver (ring buffer full or rate limited), summed over CPUs. */
  eventsLost(): bigint;
  /** Conntrack upkeep (maps/conntrack.ts): delete the entries of these addresses (an endpoint is gone);
   *  delete expired entries (the table never evicts); entries in the table / owned by an endpoint
   *  (counters, no walk); revoke the flows `allowed` rejects among those `filter` picks. */
  flushConntrack(ips: string[]): number;
  /** Entries bound to these endpoint ids (owner or pod-to-pod receiver). */
  flushConntrackOf(endpointIds: readonly number[]): number;
  gcConntrack(nowNs?: bigint): number;
  conntrackFill(): conntrack.ConntrackFill;
  conntrackOwned(endpointId: number): number;
  revokeConntrack(allowed: (e: conntrack.CtEntryView) => boolean, filter?: conntrack.RevokeFilter): number;
  close(): void;
}

export interface LoadDatapathOptions {
  objectPath: string;
  pinDir: string;
  /** A pinned map whose type/key/value/size/flags differ from the object's is normally an error
   *  (its state cannot be reused). true: unpin it and start that map empty; the caller re-syncs. */
  replaceIncompatiblePins?: boolean;
  /** libbpf's own log lines (warnings include verifier output). */
  log?: (level: 'warn' | 'info' | 'debug', message: string) => void;
  /** Conntrack table size (default: the object's, 65536). A pinned table of another size is migrated. */
  ctMax?: number;
}

interface LoadedMap {
  fd: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export function loadDatapath(options: LoadDatapathOptions): Datapath {
  const { objectPath, pinDir } = options;
  if (!fs.existsSync(objectPath)) {
    throw new Error(`BPF object ${objectPath} not found; build it with scripts/build-bpf.sh`);
  }
  assertOnBpffs(pinDir);
  fs.mkdirSync(pinDir, { recursive: true, mode: 0o700 });
  if (options.log) {
    const levels = ['warn', 'info', 'debug'] as const;
    const sink = options.log;
    bpf.setLibbpfLogSink((level, line) => sink(levels[Math.min(level, 2)], line));
  }

  const obj = bpf.openObject(objectPath);
  try {
    const declared = bpf.objectMaps(obj).filter((m) => !m.internal);
    const names = declared.map((m) => m.name).sort();
    if (names.join() !== [...MAP_NAMES].sort().join()) {
      throw new Error(`${objectPath} declares maps [${names}] but the loader expects [${MAP_NAMES}]; update MAP_NAMES`);
    }
    let resized: { pinPath: string; map: bpf.MapDescription } | undefined;
    for (const map of declared) {
      const pinPath = path.join(pinDir, map.name);
      if (map.name === 'conntrack' && options.ctMax !== undefined) bpf.setMapMaxEntries(map, options.ctMax);
      const mismatch = pinnedMapMismatch(map, pinPath);
      if (map.name === 'conntrack' && mismatch.length === 1 && mismatch[0].startsWith('max_entries')) {
        resized = { pinPath, map }; // a new size: a fresh table, the flows copied over after load
        continue;
      }
      // The event ring holds nothing worth keeping: a new size replaces it (the old programs write to
      // the old ring until the endpoints' programs are replaced at restore).
      const ringResized = map.name === 'events' && mismatch.length === 1 && mismatch[0].startsWith('max_entries');
      if (mismatch.length && !ringResized && !options.replaceIncompatiblePins) {
        throw new Error(`pinned map ${pinPath} cannot be reused by ${objectPath}: ${mismatch.join(', ')}`);
      }
      if (mismatch.length) fs.rmSync(pinPath, { force: true });
      // Before load: libbpf then reuses the pinned map if present, or creates and pins it.
      bpf.setMapPinPath(map, pinPath);
    }
    bpf.loadObject(obj, objectPath);
    if (resized) migrateConntrack(resized.pinPath, bpf.mapFd(resized.map), resized.map.maxEntries);

    const maps = new Map<string, LoadedMap>();
    for (const map of declared) {
      maps.set(map.name, { fd: bpf.mapFd(map), type: map.type, keySize: map.keySize, valueSize: map.valueSize, maxEntries: map.maxEntries });
    }
    const fromFd = bpf.programFd(obj, 'from_container');
    const toFd = bpf.programFd(obj, 'to_container');
    replacePin(fromFd, path.join(pinDir, PROGRAM_PINS.from_container));
    replacePin(toFd, path.join(pinDir, PROGRAM_PINS.to_container));
    replacePin(bpf.programFd(obj, 'from_host_device'), path.join(pinDir, PROGRAM_PINS.from_host_device));
    replacePin(bpf.programFd(obj, 'from_tunnel'), path.join(pinDir, PROGRAM_PINS.from_tunnel));
    replacePin(bpf.programFd(obj, 'to_tunnel'), path.join(pinDir, PROGRAM_PINS.to_tunnel));
    return new LoadedDatapath(obj, pinDir, maps, { from: fromFd, to: toFd }, possibleCpus());
  } catch (err) {
    bpf.closeObject(obj);
    throw err;
  }
}

/** A resized conntrack table replaces the pinned one, with its flows (maps/conntrack.ts migrate). */
function migrateConntrack(pinPath: string, newFd: number, capacity: number): void {
  const oldFd = bpf.objGet(pinPath);
  try { conntrack.migrate(oldFd, newFd, capacity); } finally { fs.closeSync(oldFd); }
  replacePin(newFd, pinPath);
}

class LoadedDatapath implements Datapath {
  readonly programIds: { fromContainer: number; toContainer: number };
  private obj: bpf.Pointer | null;

  constructor(
    obj: bpf.Pointer,
    readonly pinDir: string,
    private readonly maps: Map<string, LoadedMap>,
    private readonly progFds: { from: number; to: number },
    private readonly cpus: number,
  ) {
    this.obj = obj;
    this.programIds = {
      fromContainer: bpf.progId(progFds.from, 'from_container'),
      toContainer: bpf.progId(progFds.to, 'to_container'),
    };
  }

  private map(name: MapName): LoadedMap {
    if (!this.obj) throw new Error('datapath is closed');
    return this.maps.get(name)!;
  }

  mapFd(name: MapName): number {
    return this.map(name).fd;
  }

  private valueSize(m: LoadedMap): number {
    return PERCPU_MAP_TYPES.has(m.type) ? codec.perCpuValueSize(m.valueSize, this.cpus) : m.valueSize;
  }

  private lookup(name: MapName, key: Buffer): Buffer | null {
    const m = this.map(name);
    return bpf.mapLookup(m.fd, name, key, this.valueSize(m));
  }

  private keys(name: MapName): Buffer[] {
    const m = this.map(name);
    return bpf.mapKeys(m.fd, name, m.keySize, m.maxEntries + 1);
  }

  attach(ifindex: number): void {
    this.map('endpoints_cfg'); // refuse after close
    bpf.tcHookCreate(ifindex);
    bpf.tcAttach(ifindex, bpf.BPF_TC_INGRESS, this.progFds.from, TC_HANDLE, TC_PRIORITY);
    bpf.tcAttach(ifindex, bpf.BPF_TC_EGRESS, this.progFds.to, TC_HANDLE, TC_PRIORITY);
  }

  detach(ifindex: number): void {
    // Only our filters: the clsact qdisc may carry other tools' filters, and it goes with the veth.
    bpf.tcDetach(ifindex, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY);
    bpf.tcDetach(ifindex, bpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY);
  }

  attachedProgramIds(ifindex: number): { ingress?: number; egress?: number } {
    const ids: { ingress?: number; egress?: number } = {};
    const ingress = bpf.tcQuery(ifindex, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY);
    const egress = bpf.tcQuery(ifindex, bpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY);
    if (ingress !== undefined) ids.ingress = ingress;
    if (egress !== undefined) ids.egress = egress;
    return ids;
  }

  isCurrent(ifindex: number): boolean {
    const ids = this.attachedProgramIds(ifindex);
    return ids.ingress === this.programIds.fromContainer && ids.egress === this.programIds.toContainer;
  }

  upsertEndpoint(cfg: EndpointDatapathConfig, opts: { publish?: boolean } = {}): void {
    // Encode everything first so a bad address or MAC changes nothing.
    const ifKey = codec.encodeU32Key(cfg.hostIfindex);
    for (const ip of cfg.ips) codec.encodeIpKey(ip);
    const prevRaw = this.lookup('endpoints_cfg', ifKey);
    const prev = prevRaw ? codec.decodeEndpointConfig(prevRaw) : null;
    const sameEndpoint = prev?.endpointId === cfg.endpointId;
    // The policy engine owns the low flag bits of a live endpoint: a re-sync (restore, new labels)
    // must not switch enforcement off, not even for a moment.
    const flags = sameEndpoint ? ((cfg.flags & ~codec.EP_POLICY_FLAGS) | (prev!.flags & codec.EP_POLICY_FLAGS)) >>> 0 : cfg.flags;
    const config = codec.encodeEndpointConfig({
      endpointId: cfg.endpointId, identity: cfg.identity, flags, hostMac: cfg.hostMac,
      containerMac: cfg.containerMac, ifindex: cfg.hostIfindex, policyRevision: sameEndpoint ? prev!.policyRevision : 0,
      ips: cfg.ips, gateway6: cfg.gateway6,
    });

    // Counters belong to (ifindex, endpoint): a re-sync of the same endpoint keeps them, a reused
    // ifindex starts from zero. Created before the addresses so the first redirected packet counts.
    const counters = this.map('endpoint_counters');
    const zero = Buffer.alloc(this.valueSize(counters));
    if (!sameEndpoint) bpf.mapUpdate(counters.fd, 'endpoint_counters', ifKey, zero);
    else if (!this.lookup('endpoint_counters', ifKey)) bpf.mapUpdate(counters.fd, 'endpoint_counters', ifKey, zero, bpf.BPF_NOEXIST);

    bpf.mapUpdate(this.map('endpoints_cfg').fd, 'endpoints_cfg', ifKey, config);
    if (opts.publish !== false) this.publishEndpoint(cfg);
  }

  publishEndpoint(cfg: EndpointDatapathConfig): void {
    const ipKeys = cfg.ips.map((ip) => codec.encodeIpKey(ip));
    const local = codec.encodeLocalEndpoint({
      hostIfindex: cfg.hostIfindex, endpointId: cfg.endpointId, containerMac: cfg.containerMac, hostMac: cfg.hostMac,
    });
    const locals = this.map('local_endpoints');
    for (const key of ipKeys) bpf.mapUpdate(locals.fd, 'local_endpoints', key, local);
    const wanted = new Set(ipKeys.map((k) => k.toString('hex')));
    this.removeLocalAddresses(cfg.hostIfindex, (key) => !wanted.has(key.toString('hex')));
  }

  /** Delete local_endpoints entries owned by hostIfindex that `select` picks. */
  private removeLocalAddresses(hostIfindex: number, select: (key: Buffer) => boolean): void {
    const locals = this.map('local_endpoints');
    // One batched read of the whole map (a syscall per entry made every create O(endpoints)).
    const { keys, values } = bpf.mapDumpBatch(locals.fd, 'local_endpoints', locals.keySize, this.valueSize(locals));
    keys.forEach((key, i) => {
      if (codec.decodeLocalEndpoint(values[i]).hostIfindex === hostIfindex && select(key)) {
        bpf.mapDelete(locals.fd, 'local_endpoints', key);
      }
    });
  }

  removeEndpoint(hostIfindex: number, ips: string[]): void {
    const ifKey = codec.encodeU32Key(hostIfindex);
    const locals = this.map('local_endpoints');
    // Stop redirecting to it first; an address already handed to another endpoint is left alone.
    for (const ip of ips) {
      const key = codec.encodeIpKey(ip);
      const value = this.lookup('local_endpoints', key);
      if (value && (hostIfindex === 0 || codec.decodeLocalEndpoint(value).hostIfindex === hostIfindex)) {
        bpf.mapDelete(locals.fd, 'local_endpoints', key);
      }
    }
    if (hostIfindex === 0) return;
    this.removeLocalAddresses(hostIfindex, () => true); // leftovers from an older address set
    bpf.mapDelete(this.map('endpoints_cfg').fd, 'endpoints_cfg', ifKey);
    bpf.mapDelete(this.map('endpoint_counters').fd, 'endpoint_counters', ifKey);
  }

  mapCapacity(name: MapName): number {
    return this.map(name).maxEntries;
  }

  mapUpdateBatch(name: MapName, keys: Buffer, values: Buffer, count: number): void {
    bpf.mapUpdateBatch(this.map(name).fd, name, keys, values, count);
  }

  mapDeleteBatch(name: MapName, keys: Buffer, count: number): void {
    const m = this.map(name);
    bpf.mapDeleteBatch(m.fd, name, keys, m.keySize, count);
  }

  setGlobalConfig(cfg: GlobalConfig): void {
    bpf.mapUpdate(this.map('datapath_config').fd, 'datapath_config', codec.encodeU32Key(0), codec.encodeGlobalConfig(cfg));
  }

  globalConfig(): GlobalConfig {
    const raw = this.lookup('datapath_config', codec.encodeU32Key(0));
    return codec.decodeGlobalConfig(raw ?? Buffer.alloc(codec.GLOBAL_CONFIG_SIZE));
  }

  dropCounters(): Record<number, { packets: bigint; bytes: bigint }> {
    const out: Record<number, { packets: bigint; bytes: bigint }> = {};
    const m = this.map('drop_counters');
    const { keys, values } = bpf.mapDumpBatch(m.fd, 'drop_counters', 4, this.valueSize(m), m.maxEntries); // one syscall
    keys.forEach((k, i) => {
      const sum = codec.sumPerCpuPairs(values[i], this.cpus);
      if (sum.a || sum.b) out[codec.decodeU32Key(k)] = { packets: sum.a, bytes: sum.b };
    });
    return out;
  }

  eventsLost(): bigint {
    const raw = this.lookup('events_lost', codec.encodeU32Key(0));
    return raw ? codec.sumPerCpuU64(raw, this.cpus) : 0n;
  }

  private ctFds(): conntrack.ConntrackFds {
    const m = this.map('conntrack');
    return { conntrack: m.fd, owned: this.map('ct_owned').fd, reclaimed: this.map('ct_reclaimed').fd, capacity: m.maxEntries };
  }

  flushConntrack(ips: string[]): number {
    return conntrack.flushAddresses(this.ctFds(), ips);
  }

  flushConntrackOf(endpointIds: readonly number[]): number {
    return conntrack.flushEndpoints(this.ctFds(), endpointIds);
  }

  gcConntrack(nowNs: bigint = process.hrtime.bigint()): number {
    return conntrack.collectExpired(this.ctFds(), nowNs);
  }

  conntrackFill(): conntrack.ConntrackFill {
    return conntrack.fill(this.ctFds());
  }

  conntrackOwned(endpointId: number): number {
    return conntrack.owned(this.ctFds(), endpointId);
  }

  revokeConntrack(allowed: (e: conntrack.CtEntryView) => boolean, filter?: conntrack.RevokeFilter): number {
    return conntrack.revoke(this.ctFds(), allowed, process.hrtime.bigint(), filter);
  }

  counters(hostIfindex: number): codec.EndpointCounters | null {
    const raw = this.lookup('endpoint_counters', codec.encodeU32Key(hostIfindex));
    return raw ? codec.sumPerCpuCounters(raw, this.cpus) : null;
  }

  listEndpointIfindexes(): number[] {
    return this.keys('endpoints_cfg').map(codec.decodeU32Key).sort((a, b) => a - b);
  }

  listLocalEndpointIps(): string[] {
    return this.keys('local_endpoints').map(codec.decodeIpKey).sort();
  }

  mapPressure(): Record<string, { entries: number; max: number }> {
    const out: Record<string, { entries: number; max: number }> = {};
    for (const name of MAP_NAMES) {
      const m = this.map(name);
      if (name === 'conntrack') out[name] = this.conntrackFill(); // counted by the datapath: no walk
      else if (COUNTABLE_MAP_TYPES.has(m.type)) out[name] = { entries: this.keys(name).length, max: m.maxEntries };
    }
    return out;
  }

  close(): void {
    if (!this.obj) return;
    bpf.closeObject(this.obj); // closes map and program fds; pins and tc attachments keep them alive
    this.obj = null;
  }
}
