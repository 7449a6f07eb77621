// Where flow events come from. The agent reads the datapath's pinned ring buffer; tests and the
// benchmark can inject records instead (the collector does not care which).
import path from 'node:path';
import koffi from 'koffi';
import { PerCpuCounter, RingBufferReader } from './ringbuf.ts';

export type RecordSink = (data: Buffer, offset: number, len: number) => void;

export interface EventSource {
  start(deliver: RecordSink): void;
  /** Events the producer could not deliver (ring full, rate limited). For the kernel source: since the
   *  pinned events_lost map was created, so losses while no agent was reading are not hidden. */
  lost(): number;
  close(): void;
}

export interface KernelEventSourceOptions {
  /** Holds the `events` ring buffer and the `events_lost` per-CPU counter. */
  pinDir: string;
  cpus: number;
  /** Drain period while events arrive (default 5 ms): the datapath submits without wakeups, so this
   *  bounds the delivery delay. The 1 MiB ring holds ~10k events, so at 300k events/s it leaves ~28 ms
   *  for the agent's worst scheduling or GC delay. */
  intervalMs?: number;
  /** The longest period once the ring stays empty (default 40 ms): each empty drain doubles the
   *  period up to it, the first record found brings it back to `intervalMs`. An idle agent polling
   *  every 5 ms woke 260 times a second and took ~6 % of a CPU with its V8 threads, which cost a
   *  busy node's pods 18 % of their 4-stream TCP throughput (README, issue 17); 40 ms is ~1.3k events
   *  at the node's highest connection rate, far from the ring's ~10k. */
  idleIntervalMs?: number;
  /** Records per event-loop turn; more are drained on the next turn, so the loop never stalls. */
  batch?: number;
  onError?: (err: Error) => void;
}

export class KernelEventSource implements EventSource {
  private reader?: RingBufferReader;
  private timer?: NodeJS.Timeout;
  private period = 5;
  private poller?: { stop(): void; close(): void };
  private immediate?: NodeJS.Immediate;
  private readonly lostCounter: PerCpuCounter;
  private deliver?: RecordSink;

  constructor(private readonly o: KernelEventSourceOptions) {
    this.lostCounter = new PerCpuCounter(path.join(o.pinDir, 'events_lost'), o.cpus);
  }

  start(deliver: RecordSink): void {
    this.deliver = deliver;
    this.reader = RingBufferReader.open(path.join(this.o.pinDir, 'events'));
    this.schedule(this.o.intervalMs ?? 5);
    // A producer that does wake us (BPF_RB_FORCE_WAKEUP when the ring fills up) is served at once:
    // libuv watches the ring's fd alongside everything else.
    try {
      this.poller = koffi.node.poll(this.reader.fd, { readable: true }, () => this.drain());
    } catch (err) {
      this.o.onError?.(err as Error); // the timer alone still drains
    }
    this.drain();
  }

  /** Bytes committed and not yet read (tests, metrics). */
  backlogBytes(): number {
    return this.reader?.pendingBytes() ?? 0;
  }

  /** The next timed drain: sooner while records come, later (up to idleIntervalMs) while none do. */
  private schedule(ms: number): void {
    this.period = ms;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const n = this.drain();
      if (!this.reader) return;
      const base = this.o.intervalMs ?? 5;
      this.schedule(n > 0 || this.immediate ? base : Math.min(this.period * 2, Math.max(base, this.o.idleIntervalMs ?? 40)));
    }, ms);
  }

  /** Records delivered (0: the ring was empty, or a drain is already queued). */
  private drain(): number {
    if (!this.reader || !this.deliver || this.immediate) return 0;
    try {
      const batch = this.o.batch ?? 4096;
      const n = this.reader.drain(batch, this.deliver);
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
  private deliver?: RecordSink;
  lostCount = 0;
  start(deliver: RecordSink): void {
    this.deliver = deliver;
  }
  push(record: Buffer): void {
    this.deliver?.(record, 0, record.length);
  }
  lost(): number {
    return this.lostCount;
  }
  close(): void {
    this.deliver = undefined;
  }
}
