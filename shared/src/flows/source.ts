// Where flow events come from. The agent reads the datapath's pinned ring buffer; tests and the
// benchmark can inject records instead (the collector does not care which).
import path from 'node:path';
import koffi from 'koffi';
import { PerCpuCounter, RingBufferReader } from './ringbuf.ts';
import { RINGBUF_HDR_SIZE } from './ringbuf-walk.ts';
import { MAX_APPEND_BYTES } from './ring.ts';
import { writeHostU32 } from '../net/index.ts';

/** Records as the ring holds them: data[start..start+len) is a run of records, each with its 8-byte
 *  header (ringbuf-walk.ts; forEachRecord walks one). A view: copy it, don't keep it. */
export type SpanSink = (data: Buffer, start: number, len: number) => void;

export interface EventSource {
  start(deliver: SpanSink): void;
  /** Events the producer could not deliver (ring full, rate limited). For the kernel source: since the
   *  pinned events_lost map was created, so losses while no agent was reading are not hidden. */
  lost(): number;
  close(): void;
}

export interface KernelEventSourceOptions {
  /** Holds the `events` ring buffer and the `events_lost` per-CPU counter. */
  pinDir: string;
  cpus: number;
  /** The shortest drain period (default 5 ms), for a ring that fills: the datapath does not wake a
   *  reader that is behind (see below), so the period bounds the delivery delay. The datapath's 4 MiB
   *  ring holds ~40k events, 80 ms at 500k events/s. */
  intervalMs?: number;
  /** The longest period (default 40 ms). While records trickle in, a drain that found the ring under
   *  1/32 full doubles the period up to it, one that found it over 1/8 full halves it down to
   *  `intervalMs`: a node's connection rate (~20k events/s) is read in batches of ~800 every 40 ms
   *  instead of ~100 every 5 ms, an eighth of the wake-ups, each a syscall and a context switch on
   *  CPUs the pods use (docs/performance-history.md, issue 17). While the ring stays empty, each empty drain doubles the
   *  period up to it; one more empty drain at this period and the reader goes to sleep (below). */
  idleIntervalMs?: number;
  /** Asleep, the reader waits in epoll on the ring's fd: the datapath submits with adaptive wake-up,
   *  which wakes a reader only for a record written into an empty ring, so the first event after a
   *  quiet spell is read at once and a busy ring wakes nobody. An idle agent polling every 5 ms woke
   *  260 times a second, every 40 ms 25 (docs/performance-history.md, issue 17: its wake-ups cost a busy node's pods
   *  4-stream TCP throughput). This slow timer (default 1000 ms) still drains a ring whose producer
   *  never wakes (programs of an older build submit with BPF_RB_NO_WAKEUP). */
  sleepIntervalMs?: number;
  /** Records per event-loop turn; more are drained on the next turn, so the loop never stalls. */
  batch?: number;
  onError?: (err: Error) => void;
}

export class KernelEventSource implements EventSource {
  private reader?: RingBufferReader;
  private timer?: NodeJS.Timeout;
  private period = 5;
  private poller?: { start(o: { readable: boolean }, cb: () => void): void; stop(): void; close(): void };
  private asleep = false;
  private immediate?: NodeJS.Immediate;
  private readonly lostCounter: PerCpuCounter;
  private deliver?: SpanSink;

  constructor(private readonly o: KernelEventSourceOptions) {
    this.lostCounter = new PerCpuCounter(path.join(o.pinDir, 'events_lost'), o.cpus);
  }

  start(deliver: SpanSink): void {
    this.deliver = deliver;
    this.reader = RingBufferReader.open(path.join(this.o.pinDir, 'events'));
    try {
      // Stopped at once: epoll watches the ring only while the reader sleeps (awake, the timer
      // drains, and a readable ring would wake us for every record the timer would have taken).
      this.poller = koffi.node.poll(this.reader.fd, { readable: true }, () => this.wake());
      this.poller.stop();
    } catch (err) {
      this.o.onError?.(err as Error); // the timer alone still drains, never sleeping longer than sleepIntervalMs
    }
    this.schedule(this.base);
    this.drain();
  }

  /** Bytes committed and not yet read (tests, metrics). */
  backlogBytes(): number {
    return this.reader?.pendingBytes() ?? 0;
  }

  /** Whether the reader waits on the ring's fd (tests). */
  sleeping(): boolean {
    return this.asleep;
  }

  private get base(): number {
    return this.o.intervalMs ?? 5;
  }

  private get longest(): number {
    return Math.max(this.base, this.o.idleIntervalMs ?? 40);
  }

  /** The next timed drain: sooner while records come, later (up to idleIntervalMs) while none do,
   *  then asleep. */
  private schedule(ms: number): void {
    this.period = ms;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const filled = this.reader ? this.reader.pendingBytes() / this.reader.size : 0;
      const n = this.drain();
      if (!this.reader) return;
      const longest = this.longest;
      if (n > 0 || this.immediate) {
        const slow = this.asleep; // the slow timer found records: a producer that does not wake us
        this.awake();
        this.schedule(slow || this.immediate ? this.base : this.busyPeriod(filled, longest));
      } else if (this.asleep) this.schedule(this.o.sleepIntervalMs ?? 1000);
      else if (this.period >= longest && this.poller) this.sleep();
      else this.schedule(Math.min(this.period * 2, longest));
    }, ms);
  }

  /** The next period after a drain that found the ring `filled` (0..1) full: longer while that is
   *  little, shorter when it filled fast, so a batch stays between 1/32 and 1/8 of the ring. */
  private busyPeriod(filled: number, longest: number): number {
    if (filled > 1 / 8) return Math.max(this.base, this.period / 2);
    if (filled < 1 / 32) return Math.min(longest, this.period * 2);
    return this.period;
  }

  /** Waits in epoll: level-triggered, so a record committed before the watch starts wakes us too. */
  private sleep(): void {
    this.asleep = true;
    this.poller?.start({ readable: true }, () => this.wake());
    this.schedule(this.o.sleepIntervalMs ?? 1000);
  }

  /** The ring's fd is readable: awake again, the timer drains from now on, at the longest busy
   *  period straight away. That is the steady cadence's own bound on what can pile up (a ring filling
   *  at the datapath's full rate in one period; busyPeriod shortens it from there), and a node whose
   *  connections come in bursts (bench:cross-node's paired crr: 0.2 s on, 0.4 s off) woke and
   *  stepped up through 5, 10 and 20 ms on every burst, three more drains each time. */
  private wake(): void {
    if (!this.reader) return;
    if (this.asleep) {
      this.awake();
      if (this.timer) clearTimeout(this.timer);
      this.schedule(this.longest);
    }
    this.drain();
  }

  private awake(): void {
    if (!this.asleep) return;
    this.asleep = false;
    this.poller?.stop();
  }

  /** Records delivered (0: the ring was empty, or a drain is already queued). */
  private drain(): number {
    if (!this.reader || !this.deliver || this.immediate) return 0;
    try {
      const batch = this.o.batch ?? 4096;
      const n = this.reader.drainSpans(batch, this.deliver, MAX_APPEND_BYTES); // spans the flow ring copies whole
      if (n >= batch)
        this.immediate = setImmediate(() => {
          this.immediate = undefined;
          this.drain();
        });
      return n;
    } catch (err) {
      this.o.onError?.(err as Error);
      return 0;
    }
  }

  lost(): number {
    return this.lostCounter.read();
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.immediate) clearImmediate(this.immediate);
    this.poller?.close();
    this.reader?.close();
    this.lostCounter.close();
    this.reader = undefined;
  }
}

/** Records pushed by hand (unit tests, the collector's own tests). */
export class InjectedEventSource implements EventSource {
  private deliver?: SpanSink;
  lostCount = 0;
  start(deliver: SpanSink): void {
    this.deliver = deliver;
  }
  /** One record (without its header), framed as the ring would hold it. */
  push(record: Buffer): void {
    const framed = Buffer.alloc(RINGBUF_HDR_SIZE + ((record.length + 7) & ~7));
    writeHostU32(framed, 0, record.length);
    record.copy(framed, RINGBUF_HDR_SIZE);
    this.deliver?.(framed, 0, framed.length);
  }
  lost(): number {
    return this.lostCount;
  }
  close(): void {
    this.deliver = undefined;
  }
}
