// From raw ring-buffer records to flow records: decode, enrich, keep in the ring, count for metrics,
// and tell followers about losses. The glue between an EventSource and the observer/metrics.
import { EventType, OFF, TRACE_EVENT_SIZE } from './event.ts';
import { HOST_LITTLE_ENDIAN } from '../net/index.ts';
import { EnrichMemo, emptyRefs, enrichRaw, type FlowContext } from './enrich.ts';
import { splitOffset } from './flow.ts';
import { MAX_APPEND_BYTES, type FlowRing } from './ring.ts';
import { forEachRecord } from './ringbuf-walk.ts';
import type { EventSource } from './source.ts';
import type { LostEventSource } from './types.ts';
import { FlowStats } from '../metrics/flow-stats.ts';

/** Whether a record of `len` bytes is whole trace_events (and not more than the log takes at once). */
const wholeEvents = (len: number) => len >= TRACE_EVENT_SIZE && len % TRACE_EVENT_SIZE === 0 && len <= MAX_APPEND_BYTES;

export interface CollectorOptions {
  ring: FlowRing;
  source: EventSource;
  context: FlowContext;
  /** Wall clock minus CLOCK_MONOTONIC in ns; re-read every second (NTP may step the wall clock). */
  wallOffset?: () => bigint;
  onError?: (err: Error) => void;
  /** DNS_CACHED records (not flows themselves): the DNS proxy's part reports them. */
  onDnsCached?: (data: Buffer, offset: number) => void;
}

export class FlowCollector {
  readonly stats = new FlowStats();
  /** Records that were not whole trace_events (size mismatch), or events that could not be turned into a flow. */
  malformed = 0;
  /** Events the agent dropped itself (slow followers). */
  agentLost = 0;
  private lostReported = 0;
  private timer?: NodeJS.Timeout;
  private clock?: NodeJS.Timeout;
  /** A record arrived since the clock's last reading. */
  private recent = false;
  private readonly refs = emptyRefs(); // reused for every event: the hot path allocates nothing
  private readonly memo = new EnrichMemo();
  private readonly lostListeners = new Set<(count: number, source: LostEventSource) => void>();
  /** onSpan's walks: over the flow ring's copy, and (a span too long to copy at once) the source's. */
  private readonly inLog = (log: Buffer, offset: number, len: number) => this.events(log, offset, len);
  private readonly oneByOne = (data: Buffer, offset: number, len: number) => this.onRecord(data, offset, len);

  constructor(private readonly o: CollectorOptions) {}

  start(): void {
    if (this.o.wallOffset) this.o.context.wallOffset = splitOffset(this.o.wallOffset());
    this.o.source.start((data, start, len) => this.onSpan(data, start, len));
    this.timer = setInterval(() => this.tick(), 1000);
    this.timer.unref();
  }

  /** The flow rate's clock (not read per event): re-read every 250 ms while records come, stopped
   *  after a quarter second without any (an idle agent's wake-ups cost its node's pods:
   *  docs/performance-history.md, issue 17), read again by the first record after. */
  private runClock(): void {
    this.o.ring.tick();
    this.clock = setInterval(() => {
      if (!this.recent) {
        clearInterval(this.clock);
        this.clock = undefined;
        return;
      }
      this.recent = false;
      this.o.ring.tick();
    }, 250);
    this.clock.unref();
  }

  /** Records as the ring held them (headers included): copied into the flow ring's log in one piece,
   *  then each turned into flows from there (the flows keep their events' places in the log). */
  onSpan(data: Buffer, start: number, len: number): void {
    if (len > MAX_APPEND_BYTES) forEachRecord(data, start, len, this.oneByOne);
    else forEachRecord(this.o.ring.log, this.o.ring.append(data, start, len), len, this.inLog);
  }

  /** One record without its header (tests, benches): copied into the log on its own. */
  onRecord(data: Buffer, offset: number, len: number): void {
    if (!wholeEvents(len)) this.malformed++;
    else this.events(this.o.ring.log, this.o.ring.append(data, offset, len), len);
  }

  /** A ring record holds one trace_event, or several back to back (the datapath writes both
   *  observation points of a pod-to-pod packet as one record: bpf/lib/events.h emit_event_pair). */
  private events(data: Buffer, offset: number, len: number): void {
    if (!wholeEvents(len)) {
      this.malformed++;
      return;
    }
    this.onEvent(data, offset, -1);
    for (let o = offset + TRACE_EVENT_SIZE; o < offset + len; o += TRACE_EVENT_SIZE) this.onEvent(data, o, o - TRACE_EVENT_SIZE);
  }

  /** prev: the offset of the event before this one in the same record (-1: the record's first). */
  private onEvent(data: Buffer, offset: number, prev: number): void {
    const t = offset + OFF.TYPE; // host order, read as bytes (inlined; the record is whole)
    const type = HOST_LITTLE_ENDIAN ? data[t] | (data[t + 1] << 8) : (data[t] << 8) | data[t + 1];
    if (type === EventType.DNS_CACHED) {
      this.refs.addrHits = false; // the next event in this record must not reuse older lookups
      this.o.onDnsCached?.(data, offset);
      return;
    }
    this.recent = true;
    if (!this.clock) this.runClock();
    try {
      enrichRaw(data, offset, this.o.context, this.refs, prev, this.memo);
      this.stats.recordRaw(data, offset);
      this.o.ring.pushAt(offset, this.refs, this.o.context.wallOffset);
    } catch (err) {
      this.refs.addrHits = false;
      this.malformed++;
      if (this.malformed === 1) this.o.onError?.(err as Error);
    }
  }

  /** Once a second: clock offset, and new datapath losses to followers. */
  tick(): void {
    if (this.o.wallOffset) this.o.context.wallOffset = splitOffset(this.o.wallOffset());
    const lost = this.datapathLost();
    if (lost > this.lostReported) {
      const delta = lost - this.lostReported;
      this.lostReported = lost;
      for (const fn of this.lostListeners) fn(delta, 'PERF_EVENT_RING_BUFFER');
    }
  }

  datapathLost(): number {
    try {
      return this.o.source.lost();
    } catch {
      return this.lostReported;
    }
  }

  onLost(fn: (count: number, source: LostEventSource) => void): () => void {
    this.lostListeners.add(fn);
    return () => {
      this.lostListeners.delete(fn);
    };
  }

  countAgentLost(n: number): void {
    this.agentLost += n;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.clock) clearInterval(this.clock);
    this.o.source.close();
  }
}
