// Reads a pinned BPF ring buffer by mapping it into the agent (the same mappings libbpf's
// ring_buffer__* make) and walking the records in JS. Why not ring_buffer__consume with a koffi
// callback: that is a C->JS transition plus a copy per event, measured at 2.5-7 µs per event on the
// 2-core test machine, against ~17 ns per record for the mapped walk (before decoding). Nothing here
// blocks: drain() takes what is committed and returns; the caller schedules it (a timer while
// records come, epoll readiness through koffi's libuv poll while asleep: source.ts).
import fs from 'node:fs';
import koffi from 'koffi';
import * as bpf from '../bpf/libbpf.ts';
import { forEachRecord, walkRing, type RingData } from './ringbuf-walk.ts';

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const MAP_FAILED = 0xffffffffffffffffn;
const SC_PAGESIZE = 30;
const BPF_MAP_TYPE_RINGBUF = 27;
const CLOCK_REALTIME = 0;
const CLOCK_MONOTONIC = 1;

interface LibcBindings {
  mmap(addr: null, len: number, prot: number, flags: number, fd: number, off: number): bigint;
  munmap(addr: bigint, len: number): number;
  sysconf(name: number): number;
  clockGettime(clock: number, ts: BigInt64Array): number;
}

let libc: LibcBindings | null = null;
function bindLibc(): LibcBindings {
  if (libc) return libc;
  const lib = koffi.load('libc.so.6');
  const mmap = lib.func('uint64_t mmap(void *addr, size_t len, int prot, int flags, int fd, long off)');
  const munmap = lib.func('int munmap(uint64_t addr, size_t len)');
  const sysconf = lib.func('long sysconf(int name)');
  const clockGettime = lib.func('int clock_gettime(int clk, _Out_ int64_t *ts)');
  libc = {
    mmap: (a, l, p, f, fd, o) => BigInt(mmap(a, l, p, f, fd, o)),
    munmap: (a, l) => munmap(a, l),
    sysconf: (n) => Number(sysconf(n)),
    clockGettime: (c, ts) => clockGettime(c, ts),
  };
  return libc;
}

/** Wall clock minus CLOCK_MONOTONIC (what bpf_ktime_get_ns counts), in ns, read back to back. */
export function monotonicToWallOffsetNs(): bigint {
  const l = bindLibc();
  const real = new BigInt64Array(2),
    mono = new BigInt64Array(2);
  l.clockGettime(CLOCK_MONOTONIC, mono);
  l.clockGettime(CLOCK_REALTIME, real);
  return real[0] * 1_000_000_000n + real[1] - (mono[0] * 1_000_000_000n + mono[1]);
}

export class RingBufferReader {
  private consumerWord: BigUint64Array;
  private producerWord: BigUint64Array;
  private ring: RingData;
  private closed = false;

  private constructor(
    readonly fd: number,
    readonly size: number,
    private readonly consumerMap: { addr: bigint; len: number },
    private readonly producerMap: { addr: bigint; len: number },
    page: number,
  ) {
    // Page 0: consumer position (we write it). Page 1: producer position (read-only), then the
    // data area mapped twice.
    this.consumerWord = new BigUint64Array(koffi.view(consumerMap.addr, 8));
    const producerArea = koffi.view(producerMap.addr, producerMap.len);
    this.producerWord = new BigUint64Array(producerArea, 0, 1);
    const data = Buffer.from(producerArea, page, 2 * size);
    this.ring = { data, words: new Uint32Array(producerArea, page, (2 * size) / 4), size };
  }

  /** Opens a pinned ring buffer map (e.g. <pinDir>/events). */
  static open(pinPath: string): RingBufferReader {
    const l = bindLibc();
    const fd = bpf.objGet(pinPath);
    try {
      // struct bpf_map_info: type, id, key_size, value_size, max_entries (= data size for a ringbuf).
      const info = bpf.objInfo(fd, 5, `map ${pinPath}`);
      if (info[0] !== BPF_MAP_TYPE_RINGBUF) throw new Error(`${pinPath} is not a ring buffer (map type ${info[0]})`);
      const size = info[4];
      const page = l.sysconf(SC_PAGESIZE);
      const cons = l.mmap(null, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (cons === MAP_FAILED || cons === 0n) throw new Error(`mmap consumer page of ${pinPath}: errno ${koffi.errno()}`);
      const prodLen = page + 2 * size;
      const prod = l.mmap(null, prodLen, PROT_READ, MAP_SHARED, fd, page);
      if (prod === MAP_FAILED || prod === 0n) {
        l.munmap(cons, page);
        throw new Error(`mmap data pages of ${pinPath}: errno ${koffi.errno()}`);
      }
      return new RingBufferReader(fd, size, { addr: cons, len: page }, { addr: prod, len: prodLen }, page);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Committed bytes not yet consumed (how full the ring is). */
  pendingBytes(): number {
    if (this.closed) return 0;
    return Number(Atomics.load(this.producerWord, 0) - Atomics.load(this.consumerWord, 0));
  }

  /** Hands up to `max` committed records to onSpan, as spans of the ring (records with their headers,
   *  discarded ones included; forEachRecord walks one) of up to `maxBytes` each (a longer single record
   *  is a span of its own), then releases their space to the producer. A span is a view into the ring:
   *  copy it, don't keep it. Returns the number of records (discarded ones not counted). */
  drainSpans(
    max: number,
    onSpan: (data: Buffer, start: number, len: number) => void,
    maxBytes = Number.POSITIVE_INFINITY,
  ): number {
    if (this.closed) return 0;
    let total = 0;
    for (;;) {
      const consumer = Number(Atomics.load(this.consumerWord, 0));
      const producer = Number(Atomics.load(this.producerWord, 0));
      if (consumer >= producer || total >= max) return total;
      const r = walkRing(this.ring, consumer, producer, max - total, undefined, maxBytes);
      if (r.consumer !== consumer) {
        // The double mapping keeps a span that wraps contiguous.
        onSpan(this.ring.data, consumer % this.size, r.consumer - consumer);
        // Release store: the kernel may now reuse the space we walked.
        Atomics.store(this.consumerWord, 0, BigInt(r.consumer));
      }
      total += r.records;
      if (r.busy || r.consumer === consumer) return total;
    }
  }

  /** drainSpans, record by record (a view into the ring: decode, don't keep it). */
  drain(max: number, onRecord: (data: Buffer, offset: number, len: number) => void): number {
    return this.drainSpans(max, (data, start, len) => forEachRecord(data, start, len, onRecord));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const l = bindLibc();
    l.munmap(this.producerMap.addr, this.producerMap.len);
    l.munmap(this.consumerMap.addr, this.consumerMap.len);
    fs.closeSync(this.fd);
  }
}

/** A per-CPU u64 array slot of a pinned map (events_lost[0]), summed over CPUs. The map may be
 *  pinned after we start (older datapath objects lack it): until then it reads as 0. */
export class PerCpuCounter {
  private fd = -1;
  constructor(
    private readonly pinPath: string,
    private readonly cpus: number,
    private readonly key = 0,
  ) {}

  read(): number {
    if (this.fd < 0) {
      try {
        this.fd = bpf.objGet(this.pinPath);
      } catch {
        return 0;
      }
    }
    const k = Buffer.alloc(4);
    k.writeUInt32LE(this.key);
    const value = bpf.mapLookup(this.fd, this.pinPath, k, 8 * this.cpus);
    if (!value) return 0;
    let sum = 0;
    for (let i = 0; i < this.cpus; i++) sum += Number(value.readBigUInt64LE(8 * i));
    return sum;
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}
