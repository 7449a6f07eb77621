// The loaded datapath: one object's map and program fds, and the Datapath operations on them
// (tc attachments, endpoint state, agent-wide switches, counters, conntrack upkeep, map pressure).
import fs from 'node:fs';
import * as bpf from './libbpf.ts';
import * as codec from '../maps/codec.ts';
import * as conntrack from '../maps/conntrack.ts';
import { MAP_NAMES, TC_HANDLE, TC_PRIORITY, type MapName } from './layout.ts';
import { attachTcx, detachTcx, releaseDetachedTcx, tcxProgramId } from './tcx.ts';
import {
  adoptRetiredCounters,
  LocalEndpointsIndex,
  publishEndpoint,
  readCounters,
  removeEndpoint,
  upsertEndpoint,
  type LoadedMap,
  type MapAccess,
} from './endpoint-maps.ts';
import type { Datapath, EndpointDatapathConfig, GlobalConfig } from './datapath.ts';

// enum bpf_map_type values whose entry count mapPressure() can walk.
const COUNTABLE_MAP_TYPES = new Set([
  1 /* HASH */, 5 /* PERCPU_HASH */, 9 /* LRU_HASH */, 10 /* LRU_PERCPU_HASH */, 11 /* LPM_TRIE */,
]);
const PERCPU_MAP_TYPES = new Set([5, 6 /* PERCPU_ARRAY */, 10]);

export class LoadedDatapath implements Datapath {
  readonly programIds: { fromContainer: number; toContainer: number };
  private obj: bpf.Pointer | null;

  constructor(
    obj: bpf.Pointer,
    readonly pinDir: string,
    private readonly maps: Map<string, LoadedMap>,
    private readonly progFds: { from: number; to: number },
    private readonly cpus: number,
    /** Program fds opened from pins (reused programs): the object's close does not close them. */
    private readonly ownFds: number[] = [],
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

  /** tcx links pinned in pinDir (tcx.ts); an earlier version's classic filters are replaced. */
  attach(ifindex: number): void {
    this.map('endpoints_cfg'); // refuse after close
    attachTcx(this.pinDir, { ifindex, direction: 'ingress' }, this.progFds.from);
    attachTcx(this.pinDir, { ifindex, direction: 'egress' }, this.progFds.to);
  }

  detach(ifindex: number): void {
    detachTcx(this.pinDir, { ifindex, direction: 'ingress' });
    detachTcx(this.pinDir, { ifindex, direction: 'egress' });
    // An earlier version's classic filters: only ours (the clsact qdisc may carry other tools' filters).
    bpf.tcDetach(ifindex, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY);
    bpf.tcDetach(ifindex, bpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY);
  }

  releaseDetached(ifindex: number): void {
    releaseDetachedTcx(this.pinDir, ifindex);
  }

  /** Our tcx links' programs (an earlier version's classic filters count as not attached: restore
   *  re-attaches, which migrates them). */
  attachedProgramIds(ifindex: number): { ingress?: number; egress?: number } {
    const ids: { ingress?: number; egress?: number } = {};
    const ingress = tcxProgramId(this.pinDir, { ifindex, direction: 'ingress' });
    const egress = tcxProgramId(this.pinDir, { ifindex, direction: 'egress' });
    if (ingress !== undefined) ids.ingress = ingress;
    if (egress !== undefined) ids.egress = egress;
    return ids;
  }

  isCurrent(ifindex: number): boolean {
    const ids = this.attachedProgramIds(ifindex);
    return ids.ingress === this.programIds.fromContainer && ids.egress === this.programIds.toContainer;
  }

  upsertEndpoint(cfg: EndpointDatapathConfig, opts: { publish?: boolean } = {}): void {
    upsertEndpoint(this.access(), cfg);
    if (opts.publish !== false) this.publishEndpoint(cfg);
  }

  publishEndpoint(cfg: EndpointDatapathConfig, index?: LocalEndpointsIndex): void {
    publishEndpoint(this.access(), cfg, index);
  }

  indexLocalEndpoints(): LocalEndpointsIndex {
    return new LocalEndpointsIndex(this.access());
  }

  removeEndpoint(hostIfindex: number, ips: string[]): void {
    removeEndpoint(this.access(), hostIfindex, ips);
  }

  private access(): MapAccess {
    return { map: (name) => this.map(name), lookup: (name, key) => this.lookup(name, key), valueSize: (m) => this.valueSize(m) };
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

  revokeConntrack(allowed: (e: conntrack.CtEntryView) => conntrack.CtVerdict, filter?: conntrack.RevokeFilter): number {
    return conntrack.revoke(this.ctFds(), allowed, process.hrtime.bigint(), filter);
  }

  /** See adoptRetiredCounters; the load calls it before unlinking the retired pin. */
  adoptRetiredCounters(oldPin: string): number {
    if (!fs.existsSync(oldPin)) return 0;
    const fd = bpf.objGet(oldPin);
    try {
      return adoptRetiredCounters(this.access(), fd, this.keys('endpoints_cfg'));
    } finally {
      fs.closeSync(fd);
    }
  }

  counters(hostIfindex: number): codec.EndpointCounters | null {
    return readCounters(this.access(), hostIfindex, this.cpus);
  }

  listEndpointIfindexes(): number[] {
    return this.keys('endpoints_cfg')
      .map(codec.decodeU32Key)
      .sort((a, b) => a - b);
  }

  listLocalEndpointIps(): string[] {
    return this.keys('local_endpoints').map(codec.decodeIpKey).sort();
  }

  mapPressure(): Record<string, { entries: number; max: number }> {
    const out: Record<string, { entries: number; max: number }> = {};
    for (const name of MAP_NAMES) {
      const m = this.map(name);
      if (name === 'conntrack')
        out[name] = this.conntrackFill(); // counted by the datapath: no walk
      else if (COUNTABLE_MAP_TYPES.has(m.type))
        out[name] = { entries: bpf.mapCount(m.fd, name, m.keySize, m.maxEntries + 1), max: m.maxEntries };
    }
    return out;
  }

  close(): void {
    if (!this.obj) return;
    bpf.closeObject(this.obj); // closes map and program fds; pins and tc attachments keep them alive
    for (const fd of this.ownFds.splice(0)) fs.closeSync(fd);
    this.obj = null;
  }
}
