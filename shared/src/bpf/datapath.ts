// Loads the tc datapath object once per node and pins its maps and programs under a bpffs directory
// (the names: layout.ts); the Datapath interface is what the agent does with it (loaded.ts, with one
// endpoint's map entries in endpoint-maps.ts). Maps are pinned by name and reused on the next load,
// so forwarding state and tc attachments survive agent restarts and upgrades with the same map
// layouts. See bpf/README.md for the attach-mode choice (classic tc over tcx).
import { sweepStaleTcx } from './tcx.ts';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from './libbpf.ts';
import type * as codec from '../maps/codec.ts';
import * as conntrack from '../maps/conntrack.ts';
import { assertOnBpffs, pinnedMapMismatch, possibleCpus, replacePin } from './pins.ts';
import { MAP_NAMES, PROGRAM_PINS, PROGRAM_STAMP_PREFIX, removeProgramStamps, removeRetiredPins, type MapName } from './layout.ts';
import type { LoadedMap, LocalEndpointsIndex } from './endpoint-maps.ts';
import { LoadedDatapath } from './loaded.ts';

export { assertOnBpffs, possibleCpus } from './pins.ts';
export type { LocalEndpointsIndex } from './endpoint-maps.ts';
export { LINK_PINS, MAP_NAMES, PROGRAM_PINS, removePins, TC_HANDLE, TC_PRIORITY, type MapName } from './layout.ts';

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
  /** After its interface was deleted: the pins of the links the kernel detached with it go. */
  releaseDetached(ifindex: number): void;
  attachedProgramIds(ifindex: number): { ingress?: number; egress?: number };
  isCurrent(ifindex: number): boolean;
  /** endpoints_cfg and counters, then (unless `publish: false`) publishEndpoint. A new endpoint is
   *  published last, once its program and policy are in place (the redirect short-cut skips its hooks). */
  upsertEndpoint(cfg: EndpointDatapathConfig, opts?: { publish?: boolean }): void;
  /** local_endpoints: other endpoints' packets to its addresses go straight to it (bpf_redirect_peer).
   *  With an index (indexLocalEndpoints), the addresses it lost are found there, not by a map walk. */
  publishEndpoint(cfg: EndpointDatapathConfig, index?: LocalEndpointsIndex): void;
  /** One walk of local_endpoints, for publishing many endpoints in a row (restore). */
  indexLocalEndpoints(): LocalEndpointsIndex;
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
  revokeConntrack(allowed: (e: conntrack.CtEntryView) => conntrack.CtVerdict, filter?: conntrack.RevokeFilter): number;
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
  // The programs pinned by an earlier start of the same object on the same maps are the programs this
  // load would produce: reusing them skips the verifier (most of an agent restart) and leaves every
  // endpoint's attachment current. The stamp names the object they came from.
  // The stamp names the object they came from (bpffs holds no regular files: it is a directory).
  const stampPath = path.join(
    pinDir,
    `${PROGRAM_STAMP_PREFIX}${crypto.createHash('sha256').update(fs.readFileSync(objectPath)).digest('hex').slice(0, 32)}`,
  );
  let reusePrograms = fs.existsSync(stampPath) && Object.values(PROGRAM_PINS).every((p) => fs.existsSync(path.join(pinDir, p)));
  const programFds: number[] = [];
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
      // A map created by this load is not the one the pinned programs use.
      if (mismatch.length || !fs.existsSync(pinPath)) reusePrograms = false;
      // Before load: libbpf then reuses the pinned map if present, or creates and pins it.
      bpf.setMapPinPath(map, pinPath);
    }
    if (reusePrograms) for (const name of Object.keys(PROGRAM_PINS)) bpf.setProgramAutoload(obj, name, false);
    else removeProgramStamps(pinDir); // the pins are about to change: no start may trust them meanwhile
    bpf.loadObject(obj, objectPath);
    if (resized) migrateConntrack(resized.pinPath, bpf.mapFd(resized.map), resized.map.maxEntries);

    const maps = new Map<string, LoadedMap>();
    for (const map of declared) {
      maps.set(map.name, {
        fd: bpf.mapFd(map),
        type: map.type,
        keySize: map.keySize,
        valueSize: map.valueSize,
        maxEntries: map.maxEntries,
      });
    }
    let fromFd: number;
    let toFd: number;
    if (reusePrograms) {
      // Ours to close (the object's close does not know them).
      fromFd = bpf.objGet(path.join(pinDir, PROGRAM_PINS.from_container));
      programFds.push(fromFd);
      toFd = bpf.objGet(path.join(pinDir, PROGRAM_PINS.to_container));
      programFds.push(toFd);
    } else {
      fromFd = bpf.programFd(obj, 'from_container');
      toFd = bpf.programFd(obj, 'to_container');
      for (const [name, pin] of Object.entries(PROGRAM_PINS)) replacePin(bpf.programFd(obj, name), path.join(pinDir, pin));
      fs.mkdirSync(stampPath);
    }
    const loaded = new LoadedDatapath(obj, pinDir, maps, { from: fromFd, to: toFd }, possibleCpus(), programFds);
    loaded.adoptRetiredCounters(path.join(pinDir, 'endpoint_counters'));
    removeRetiredPins(pinDir);
    sweepStaleTcx(pinDir); // links whose interfaces went while no agent ran
    return loaded;
  } catch (err) {
    for (const fd of programFds) fs.closeSync(fd);
    bpf.closeObject(obj);
    throw err;
  }
}

/** A resized conntrack table replaces the pinned one, with its flows (maps/conntrack.ts migrate). */
function migrateConntrack(pinPath: string, newFd: number, capacity: number): void {
  const oldFd = bpf.objGet(pinPath);
  try {
    conntrack.migrate(oldFd, newFd, capacity);
  } finally {
    fs.closeSync(oldFd);
  }
  replacePin(newFd, pinPath);
}
