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
  /** Drain period (default 5 ms): the datapath submits without wakeups, so this bounds the delivery
   *  delay. The 1 MiB ring holds ~10k events, so at 300k events/s it leaves ~28 ms for the agent's
   *  worst scheduling or GC delay; idle, 200 wakeups/s cost next to nothing. */
  intervalMs?: number;
  /** Records per event-loop turn; more are drained on the next turn, so the loop never stalls. */
  batch?: number;
  onError?: (err: Error) => void;
}

export class KernelEventSource implements EventSource {
  private reader?: RingBufferReader;
  private timer?: NodeJS.Timeout;
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
    this.timer = setInterval(() => this.drain(), this.o.intervalMs ?? 5);
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

  private drain(): void {
    if (!this.reader || !this.deliver || this.immediate) return;
    try {
      const batch = this.o.batch ?? 4096;
      const n = this.reader.drain(batch, this.deliver);
      if (n >= batch)
        this.immediate = setImmediate(() => {
          this.immediate = undefined;
          this.drain();
        });
    } catch (err) {
      this.o.onError?.(err as Error);
    }
  }

  lost(): number {
    return this.lostCounter.read();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
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
