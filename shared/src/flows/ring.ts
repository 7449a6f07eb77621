// The bounded in-memory flow ring (--flow-buffer). Ingest keeps where the event's bytes sit in the
// ring's log (below) and references to what was looked up for it (shared records, no new objects), so
// a busy node does not turn into garbage-collector work; flow records are built only when someone asks
// (GetFlows, followers). Also counts all flows seen and the recent rate. Pure.
//
// The log: what the datapath's ring buffer held, copied as it was, records and headers, one copy per
// drained span (append), into a byte ring of the agent's own; each flow keeps its event's place in it.
// Copying each 96-byte event into a slot of its own (word by word: Buffer#copy allocates a view per
// call) was a third of the agent's JavaScript per event (scripts/bench/flow-collector-cross.ts). The
// log holds at least the last `capacity` flows of records of one or two events (104 bytes per flow at
// most, header included) with room for one more span; records that are not flows (DNS_CACHED, malformed,
// discarded) take room too, and a flow whose bytes the log wrote over is no longer held.
import crypto from 'node:crypto';
import { decodeTraceEvent, TRACE_EVENT_SIZE } from './event.ts';
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

/** The most append() copies at once. */
export const MAX_APPEND_BYTES = 64 * 1024;
/** Log bytes a flow takes at most: a record of one event (header and event); a pair's take 100. */
const LOG_BYTES_PER_FLOW = 8 + TRACE_EVENT_SIZE;

export class FlowRing {
  /** The log (see the top): read it at the offsets append() returns. */
  readonly log: Buffer;
  private readonly logSize: number;
  /** Bytes ever written to the log (a position; `% logSize` is its offset). */
  private head = 0;
  /** Position minus offset of the last append's bytes (pushAt's offsets are in it). */
  private appended = 0;
  /** Each slot's event's log position (-1: a record of another source). */
  private readonly at: Float64Array;
  /** forget()'s start (a sequence number): the flows before it are forgotten or other sources'. */
  private scanFrom = 0;
  private readonly src: (SideRef | undefined)[];
  private readonly dst: (SideRef | undefined)[];
  private readonly ifName: (string | undefined)[];
  private readonly rule: (RuleDescription | undefined)[];
  /** Records of other sources (the L7 proxy's), built into flows only when read, like the events.
   *  No object per record, nor a reference: each record's source (a batch) and builder are in a slot
   *  of their own, one per pushLazy call, and the record keeps the slot's number, its offset and time
   *  (a reference per record into these long-lived arrays was a remembered-set entry per record for
   *  the scavenger, the batches being young). -1: an event's flow. */
  private readonly lazySlot: Int32Array;
  private readonly lazyOffset: Int32Array;
  private readonly lazyTime: Float64Array;
  /** The slots, used in turn: a slot is taken again only after `capacity` more calls, each of which
   *  pushed at least one record, so no record held by then still names it. A slot lets its source go
   *  once its last record is written over (slotRecords): kept until its turn came again, the slots held
   *  the last `capacity` batches, 64 KiB each under load, where the records held need two or three. */
  private readonly slotSource: unknown[];
  private readonly slotBuild: (LazyBuild | undefined)[];
  private readonly slotRecords: Int32Array;
  private nextSlot = 0;
  private slotsInUse = 0;
  // The wall-clock offset in force when each event arrived (it moves only when the clock is stepped).
  private readonly offSec: Float64Array;
  private readonly offNs: Float64Array;
  private next = 0;
  private held = 0;
  private seenCount = 0;
  private skipped = 0;
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
    this.logSize = capacity * LOG_BYTES_PER_FLOW + MAX_APPEND_BYTES;
    this.log = Buffer.alloc(this.logSize);
    this.at = new Float64Array(capacity).fill(-1);
    this.src = new Array(capacity);
    this.dst = new Array(capacity);
    this.ifName = new Array(capacity);
    this.rule = new Array(capacity);
    this.lazySlot = new Int32Array(capacity).fill(-1);
    this.lazyOffset = new Int32Array(capacity);
    this.lazyTime = new Float64Array(capacity);
    this.slotSource = new Array(capacity);
    this.slotBuild = new Array(capacity);
    this.slotRecords = new Int32Array(capacity);
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
  /** Flows seen: stored, and skipped (countSkipped()). */
  get seen(): number {
    return this.seenCount + this.skipped;
  }
  get followers(): number {
    return this.subscribers.size;
  }

  /** Re-reads the clock for the rate buckets: once per drained batch, not per event. */
  tick(): void {
    this.nowSec = Math.floor(this.nowMs() / 1000);
    this.bucket = this.nowSec % 60;
  }

  /** Copies data[start..start+len) (at most MAX_APPEND_BYTES) into the log and returns its offset
   *  there; pushAt() stores flows of events in it. What it writes over is no longer held. */
  append(data: Buffer, start: number, len: number): number {
    if (len > MAX_APPEND_BYTES) throw new RangeError(`flow ring: ${len} bytes at once, at most ${MAX_APPEND_BYTES}`);
    let off = this.head % this.logSize;
    if (off + len > this.logSize) {
      this.head += this.logSize - off; // the tail is too short: from the start again
      off = 0;
    }
    this.forget(this.head + len - this.logSize);
    data.copy(this.log, off, start, start + len); // one memcpy (and one view: per span, not per event)
    this.appended = this.head - off;
    this.head += (len + 7) & ~7; // spans stay 8-byte aligned, as the kernel's records are
    return off;
  }

  /** No longer holds the oldest flows whose bytes sit before log position `before` (about to be
   *  written over), nor the other sources' records older than them. */
  private forget(before: number): void {
    let s = Math.max(this.scanFrom, this.seenCount - this.held);
    let keepFrom = -1;
    for (; s < this.seenCount; s++) {
      const p = this.at[s % this.capacity];
      if (p < 0) continue; // another source's record: no bytes in the log
      if (p >= before) break; // this one and every later event are intact
      keepFrom = s + 1;
    }
    this.scanFrom = s;
    if (keepFrom >= 0) this.held = Math.min(this.held, this.seenCount - keepFrom);
  }

  /** Stores the flow of the event at log offset `offset`, inside the last append, with its lookups
   *  (`refs` may be reused by the caller). */
  pushAt(offset: number, refs: FlowRefs, wallOffset: Timestamp): void {
    const i = this.next;
    this.at[i] = this.appended + offset;
    this.src[i] = refs.src;
    this.dst[i] = refs.dst;
    this.ifName[i] = refs.ifName;
    this.rule[i] = refs.rule;
    this.setSlot(i, -1);
    this.offSec[i] = wallOffset.seconds;
    this.offNs[i] = wallOffset.nanos;
    this.advance(i);
  }

  /** Stores the event at data[offset..] (copied) with its lookups. */
  push(data: Buffer, offset: number, refs: FlowRefs, wallOffset: Timestamp): void {
    this.pushAt(this.append(data, offset, TRACE_EVENT_SIZE), refs, wallOffset);
  }

  /** Stores a record of another source (at `offset` in `source`): `build` makes its flow when someone reads it. */
  pushLazy(source: unknown, offset: number, timeMs: number, build: LazyBuild): void {
    this.pushLazyAt(this.takeSlot(source, build), offset, timeMs);
  }

  /** Stores `count` records of one source, at offsets[k] with times[k] (wall-clock ms). */
  pushLazyMany(source: unknown, offsets: Int32Array, times: Float64Array, count: number, build: LazyBuild): void {
    if (count <= 0) return;
    const slot = this.takeSlot(source, build);
    if (this.subscribers.size) {
      for (let k = 0; k < count; k++) this.pushLazyAt(slot, offsets[k], times[k]);
      return;
    }
    // Nobody follows: the slots' columns in one loop and the counts once (advance() per record was
    // half of this under keep-alive load, bench/l7-agent-cpu.ts).
    let i = this.next;
    for (let k = 0; k < count; k++) {
      this.at[i] = -1;
      // An event's lookups in this slot are let go; a record's left none to clear.
      if (this.lazySlot[i] < 0) this.src[i] = this.dst[i] = this.ifName[i] = this.rule[i] = undefined;
      this.setSlot(i, slot);
      this.lazyOffset[i] = offsets[k];
      this.lazyTime[i] = times[k];
      i = i + 1 === this.capacity ? 0 : i + 1;
    }
    this.next = i;
    this.held = Math.min(this.capacity, this.held + count);
    this.seenCount += count;
    this.countSecond(count);
  }

  private takeSlot(source: unknown, build: LazyBuild): number {
    const k = this.nextSlot;
    this.nextSlot = k + 1 === this.capacity ? 0 : k + 1;
    this.slotSource[k] = source;
    this.slotBuild[k] = build;
    if (this.slotRecords[k] === 0) this.slotsInUse++;
    return k;
  }

  /** Slot i's record is now of `slot` (-1: an event); the slot it was of lets its source go once no
   *  record is of it any more (counted up first: a batch larger than the ring writes over its own). */
  private setSlot(i: number, slot: number): void {
    const old = this.lazySlot[i];
    if (slot >= 0) this.slotRecords[slot]++;
    this.lazySlot[i] = slot;
    if (old >= 0 && --this.slotRecords[old] === 0) {
      this.slotSource[old] = undefined;
      this.slotBuild[old] = undefined;
      this.slotsInUse--;
    }
  }

  /** Sources (batches) the ring keeps alive for the records it holds. */
  get lazySources(): number {
    return this.slotsInUse;
  }

  private pushLazyAt(slot: number, offset: number, timeMs: number): void {
    const i = this.next;
    this.at[i] = -1;
    this.src[i] = this.dst[i] = undefined;
    this.ifName[i] = undefined;
    this.rule[i] = undefined;
    this.setSlot(i, slot);
    this.lazyOffset[i] = offset;
    this.lazyTime[i] = timeMs;
    this.advance(i);
  }

  private advance(i: number): void {
    this.next = i + 1 === this.capacity ? 0 : i + 1;
    if (this.held < this.capacity) this.held++;
    this.seenCount++;
    this.countSecond(1);
    if (this.subscribers.size) {
      const flow = this.flowAt(i, this.seenCount - 1);
      for (const s of this.subscribers) s(flow);
    }
  }

  private countSecond(n: number): void {
    const b = this.bucket;
    if (this.secondOf[b] !== this.nowSec) {
      this.secondOf[b] = this.nowSec;
      this.perSecond[b] = 0;
    }
    this.perSecond[b] += n;
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
    const slot = this.lazySlot[i];
    if (slot >= 0) {
      const f = this.slotBuild[slot]!(this.slotSource[slot], this.lazyOffset[i]);
      f.uuid = this.uuidPrefix + seq.toString(16).padStart(12, '0');
      return f;
    }
    const refs: FlowRefs = { src: this.src[i], dst: this.dst[i], ifName: this.ifName[i], rule: this.rule[i], addrHits: false };
    const flow = assemble(decodeTraceEvent(this.log, this.at[i] % this.logSize), refs, this.nodeName, {
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
    if (this.lazySlot[i] >= 0) return this.lazyTime[i];
    const ts = readHostU64Number(this.log, this.at[i] % this.logSize);
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

  /** Told the number of followers whenever it changes (the L7 workers send their records at once
   *  only while someone follows). */
  onFollowers?: (n: number) => void;

  /** Called synchronously for every flow pushed from now on. */
  subscribe(fn: (f: Flow) => void): () => void {
    this.subscribers.add(fn);
    this.onFollowers?.(this.subscribers.size);
    return () => {
      if (this.subscribers.delete(fn)) this.onFollowers?.(this.subscribers.size);
    };
  }

  /** Flows of another source that were never stored (the ring would have written over them before
   *  anyone read them: held-batches.ts): counted as seen, in the rate too. */
  countSkipped(n: number): void {
    if (n <= 0) return;
    this.skipped += n; // not in seenCount: that numbers the flows stored (flow s in slot s % capacity)
    this.countSecond(n);
  }
}
