// The bounded in-memory flow ring (--flow-buffer). Ingest copies the event's 96 bytes and keeps
// references to what was looked up for it (shared records, no new objects), so a busy node does
// not turn into garbage-collector work; flow records are built only when someone asks (GetFlows,
// followers). Also counts all flows seen and the recent rate. Pure.
import crypto from 'node:crypto';
import { decodeTraceEvent, OFF, TRACE_EVENT_SIZE } from './event.ts';
import { readHostU64Number } from '../net/index.ts';
import type { FlowRefs, RuleDescription, SideRef } from './enrich.ts';
import { assemble } from './flow.ts';
import type { Flow, Timestamp } from './types.ts';

/** Builds the flow of a record of another source: the record is at `offset` in `source`. */
export type LazyBuild = (source: unknown, offset: number) => Flow;

export interface SelectOptions {
  /** How many (0: no limit). */
  number?: number;
  /** The oldest matching instead of the newest. */
  first?: boolean;
  sinceMs?: number;
  untilMs?: number;
  match?: (f: Flow) => boolean;
}

export class FlowRing {
  private readonly bytes: Buffer;
  /** `bytes` as 32-bit words: push() copies an event word by word (Buffer#copy allocates a view per
   *  call, ~96 bytes of garbage per event on Node 20, which at a node's connection rate kept V8's
   *  young generation cycling). */
  private readonly words: Uint32Array;
  /** The last source buffer seen (the ring buffer reader hands the same mapped one every time) and
   *  its words. */
  private srcBuf?: Buffer;
  private srcWords?: Uint32Array;
  private readonly src: (SideRef | undefined)[];
  private readonly dst: (SideRef | undefined)[];
  private readonly ifName: (string | undefined)[];
  private readonly rule: (RuleDescription | undefined)[];
  /** Records of other sources (the L7 proxy's), built into flows only when read, like the events. */
  // (No object per record: the source, its offset and time, the builder, each in its own column.)
  private readonly lazy: unknown[];
  private readonly lazyOffset: Int32Array;
  private readonly lazyTime: Float64Array;
  private readonly lazyBuild: (LazyBuild | undefined)[];
  // The wall-clock offset in force when each event arrived (it moves only when the clock is stepped).
  private readonly offSec: Float64Array;
  private readonly offNs: Float64Array;
  private next = 0;
  private held = 0;
  private seenCount = 0;
  private readonly subscribers = new Set<(f: Flow) => void>();
  // Flows per second over the last minute: a counter per second, indexed by second % 60.
  private readonly perSecond = new Float64Array(60);
  private readonly secondOf = new Float64Array(60).fill(-1);
  private nowSec: number;
  /** nowSec's bucket (nowSec % 60), worked out when the clock is read rather than per event. */
  private bucket: number;
  /** Flow uuids: 10 random bytes per ring (one agent run) and the flow's 48-bit sequence number. */
  private readonly uuidPrefix: string;

  constructor(
    readonly capacity: number,
    private readonly nodeName: string,
    private readonly nowMs: () => number = Date.now,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`flow ring capacity must be a positive integer, got ${capacity}`);
    this.bytes = Buffer.alloc(capacity * TRACE_EVENT_SIZE);
    this.words = new Uint32Array(this.bytes.buffer, this.bytes.byteOffset, this.bytes.length / 4);
    this.src = new Array(capacity);
    this.dst = new Array(capacity);
    this.ifName = new Array(capacity);
    this.rule = new Array(capacity);
    this.lazy = new Array(capacity);
    this.lazyOffset = new Int32Array(capacity);
    this.lazyTime = new Float64Array(capacity);
    this.lazyBuild = new Array(capacity);
    this.offSec = new Float64Array(capacity);
    this.offNs = new Float64Array(capacity);
    this.nowSec = Math.floor(nowMs() / 1000);
    this.bucket = this.nowSec % 60;
    const r = crypto.randomBytes(10);
    r[6] = (r[6] & 0x0f) | 0x40; // RFC 4122 version 4 and variant bits: a well-formed UUID
    r[8] = (r[8] & 0x3f) | 0x80;
    const h = r.toString('hex');
    this.uuidPrefix = `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-`;
  }

  get size(): number {
    return this.held;
  }
  get seen(): number {
    return this.seenCount;
  }
  get followers(): number {
    return this.subscribers.size;
  }

  /** Re-reads the clock for the rate buckets: once per drained batch, not per event. */
  tick(): void {
    this.nowSec = Math.floor(this.nowMs() / 1000);
    this.bucket = this.nowSec % 60;
  }

  /** Stores the record at data[offset..] with its lookups (`refs` may be reused by the caller). */
  push(data: Buffer, offset: number, refs: FlowRefs, wallOffset: Timestamp): void {
    const i = this.next;
    if (((data.byteOffset | offset) & 3) === 0 && offset + TRACE_EVENT_SIZE <= data.length) {
      if (data !== this.srcBuf) {
        this.srcBuf = data;
        this.srcWords = new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2);
      }
      const from = this.srcWords!;
      const o = offset >>> 2;
      const d = i * (TRACE_EVENT_SIZE / 4);
      const w = this.words;
      // Words 10-13 and 14-17 are the addresses; an IPv4 event's are in the first word of each, and
      // only that word is ever read back (decodeTraceEvent), so the other six are not copied.
      for (let k = 0; k < 11; k++) w[d + k] = from[o + k];
      if (data[offset + OFF.FAMILY] === 4) w[d + 14] = from[o + 14];
      else for (let k = 11; k < 18; k++) w[d + k] = from[o + k];
      for (let k = 18; k < TRACE_EVENT_SIZE / 4; k++) w[d + k] = from[o + k];
    } else data.copy(this.bytes, i * TRACE_EVENT_SIZE, offset, offset + TRACE_EVENT_SIZE);
    this.src[i] = refs.src;
    this.dst[i] = refs.dst;
    this.ifName[i] = refs.ifName;
    this.rule[i] = refs.rule;
    this.lazy[i] = undefined;
    this.offSec[i] = wallOffset.seconds;
    this.offNs[i] = wallOffset.nanos;
    this.advance(i);
  }

  /** Stores a record of another source (at `offset` in `source`): `build` makes its flow when someone reads it. */
  pushLazy(source: unknown, offset: number, timeMs: number, build: LazyBuild): void {
    const i = this.next;
    this.src[i] = this.dst[i] = undefined;
    this.ifName[i] = undefined;
    this.rule[i] = undefined;
    this.lazy[i] = source;
    this.lazyOffset[i] = offset;
    this.lazyTime[i] = timeMs;
    this.lazyBuild[i] = build;
    this.advance(i);
  }

  private advance(i: number): void {
    this.next = i + 1 === this.capacity ? 0 : i + 1;
    if (this.held < this.capacity) this.held++;
    this.seenCount++;
    const b = this.bucket;
    if (this.secondOf[b] !== this.nowSec) {
      this.secondOf[b] = this.nowSec;
      this.perSecond[b] = 0;
    }
    this.perSecond[b]++;
    if (this.subscribers.size) {
      const flow = this.flowAt(i, this.seenCount - 1);
      for (const s of this.subscribers) s(flow);
    }
  }

  /** Flows per second over the last 60 s (or since the first flow, when sooner). */
  rate(): number {
    const sec = Math.floor(this.nowMs() / 1000);
    let total = 0;
    let oldest = sec;
    for (let i = 0; i < 60; i++) {
      const s = this.secondOf[i];
      if (s >= 0 && s > sec - 60 && s <= sec) {
        total += this.perSecond[i];
        oldest = Math.min(oldest, s);
      }
    }
    return total / Math.max(1, sec - oldest + 1);
  }

  /** The flow in slot i, whose sequence number (0 = the first flow seen) is seq. */
  private flowAt(i: number, seq: number): Flow {
    const lazy = this.lazy[i];
    if (lazy !== undefined) {
      const f = this.lazyBuild[i]!(lazy, this.lazyOffset[i]);
      f.uuid = this.uuidPrefix + seq.toString(16).padStart(12, '0');
      return f;
    }
    const refs: FlowRefs = { src: this.src[i], dst: this.dst[i], ifName: this.ifName[i], rule: this.rule[i], addrHits: false };
    const flow = assemble(decodeTraceEvent(this.bytes, i * TRACE_EVENT_SIZE), refs, this.nodeName, {
      seconds: this.offSec[i],
      nanos: this.offNs[i],
    });
    flow.uuid = this.uuidPrefix + seq.toString(16).padStart(12, '0');
    return flow;
  }

  /** The endpoint records of the flows with sequence numbers from..seen-1 that are still held
   *  (namespace tracking reads these without building flows). */
  forEachSide(from: number, fn: (side: SideRef) => void): number {
    const start = Math.max(from, this.seenCount - this.held);
    for (let s = start; s < this.seenCount; s++) {
      const i = s % this.capacity;
      const a = this.src[i],
        b = this.dst[i];
      if (a) fn(a);
      if (b && b !== a) fn(b);
    }
    return this.seenCount;
  }

  /** Wall-clock ms of slot i without building the flow (time windows are checked first). */
  private timeMs(i: number): number {
    if (this.lazy[i] !== undefined) return this.lazyTime[i];
    const ts = readHostU64Number(this.bytes, i * TRACE_EVENT_SIZE);
    return ts ? this.offSec[i] * 1000 + (this.offNs[i] + ts) / 1e6 : Date.now();
  }

  /** Matching flows held when called, oldest first. Builds and tests `chunk` flows per event-loop
   *  turn, so a large ring (--flow-buffer up to millions) never stalls the agent; flows pushed
   *  meanwhile are not included, flows overwritten meanwhile are skipped. */
  async select(o: SelectOptions = {}, chunk = 4096): Promise<Flow[]> {
    const limit = o.number && o.number > 0 ? o.number : Infinity;
    const end = this.seenCount; // sequence numbers: flow s lives in slot s % capacity
    const start = end - this.held;
    const out: Flow[] = [];
    const step = o.first ? 1 : -1;
    let visited = 0;
    for (let s = o.first ? start : end - 1; s >= start && s < end && out.length < limit; s += step) {
      if (++visited % chunk === 0) await new Promise((r) => setImmediate(r));
      if (s < this.seenCount - this.held) {
        if (o.first) continue;
        break;
      } // overwritten while we yielded
      const i = s % this.capacity;
      if (o.sinceMs !== undefined || o.untilMs !== undefined) {
        const t = this.timeMs(i);
        if ((o.sinceMs !== undefined && t < o.sinceMs) || (o.untilMs !== undefined && t > o.untilMs)) continue;
      }
      const f = this.flowAt(i, s);
      if (!o.match || o.match(f)) out.push(f);
    }
    return o.first ? out : out.reverse();
  }

  /** Called synchronously for every flow pushed from now on. */
  subscribe(fn: (f: Flow) => void): () => void {
    this.subscribers.add(fn);
    return () => {
      this.subscribers.delete(fn);
    };
  }
}
