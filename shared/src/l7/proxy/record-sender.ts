// A worker's records on their way to the agent: each request and response into the batch being
// written (records.ts), the metrics' counts summed (request-counts.ts), and the batches sent at once
// while someone follows flows (or the agent asked for that: an older one sends no config), else held
// (held-batches.ts) and sent twice a second or when the agent collects. While no agent is connected
// (a restart) they are held too, once an agent has said how many to keep, and its successor gets them;
// records made before that, or past the buffer bounds, are counted as lost. The counts never are.
import type net from 'node:net';
import type { Exchange } from '../http/exchange.ts';
import { frameHeader, type WorkerMessage } from './frames.ts';
import { HeldBatches } from './held-batches.ts';
import { methodCode, metricEndpointOf, type RecordContext, RecordWriter, verdictCode } from './records.ts';
import { RequestCounts } from './request-counts.ts';
import type { ProxyDecision } from './view.ts';

/** At most this long between a record and its batch's leaving: each batch wakes the agent, and
 *  its cost there is mostly per batch (micro-benchmark: 2.3 against 2.5-3.0 µs per request at 18,000
 *  requests/s with 50 against 20 ms). */
const FLUSH_MS = 50;
/** A batch goes out before its frame outgrows one 64 KiB read of the agent's (Node reads a socket in
 *  64 KiB pieces): a frame in two pieces is joined there, a copy and a fresh buffer each time. Only a
 *  last record over the 512 bytes left makes it larger. */
const FLUSH_BYTES = 64 * 1024 - 4 - 512;
const MAX_BUFFERED_RECORDS = 50_000;
/** How often held batches (nobody follows flows) go to the agent: two runs of its a second, where each
 *  batch sent at once was one every 20-30 ms under load. Under the agent's idle time (idle-memory.ts,
 *  1 s), so a steady load never looks like quiet there, whose memory give-back holds its loop. */
const HOLD_SEND_MS = 500;
const MAX_UNSENT_BYTES = 16 * 1024 * 1024;

export class RecordSender {
  private readonly writer = new RecordWriter();
  private readonly held = new HeldBatches(0);
  private readonly counts = new RequestCounts();
  private holdFlows = 0;
  private follow = true;
  private lost = 0;
  private flushTimer?: NodeJS.Timeout;

  constructor(
    /** The control connection to the agent, when there is one. */
    private readonly control: () => net.Socket | undefined,
    private readonly send: (m: WorkerMessage) => void,
  ) {
    setInterval(() => {
      if (this.holding()) this.sendHeld();
    }, HOLD_SEND_MS).unref();
  }

  /** The agent's settings (frames.ts config): hold up to `holdFlows` flows while nobody follows. */
  configure(holdFlows: number, follow: boolean): void {
    this.holdFlows = holdFlows;
    this.follow = follow;
    this.held.setKeep(holdFlows);
    if (!this.holding()) this.sendHeld(); // someone follows now: what is held first
  }

  /** The agent asks for what is held (a flow query, a metrics scrape). */
  collect(id: number): void {
    this.sendHeld();
    this.send({ t: 'collected', id });
  }

  /** A request's or a response's record, made at `timeMs` (wall clock). */
  record(kind: 'request' | 'response', x: Exchange, ctx: RecordContext, timeMs: number): void {
    // The metrics' counts, whatever becomes of the record (request-counts.ts).
    if (kind === 'response') {
      const sides = (x.verdict.info as ProxyDecision | undefined)?.sides ?? [];
      this.counts.response(methodCode(x.method), x.status, verdictCode(x.localReason), metricEndpointOf(sides), x.latencyNs);
    } else if (x.localReason === 'conn-limit') this.counts.refusals(ctx.refused ?? 1);
    if ((!this.control() && !this.holdFlows) || this.writer.count >= MAX_BUFFERED_RECORDS) {
      this.lost++;
      return;
    }
    this.writer.add(kind, x, ctx, timeMs);
    if (this.writer.bytes >= FLUSH_BYTES) this.flush();
    else if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  /** The batch being written: held, or sent with the counts before it. */
  flush(): void {
    if (this.flushTimer) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
    }
    const control = this.control();
    if (!control || this.holding()) {
      // Nobody follows, or no agent (between two: the next one takes them). Without a holdFlows from an
      // agent the writer is empty here: record() counted its records as lost.
      const flows = this.writer.flows;
      const kept = this.writer.take(0, true); // the lost count goes with the first batch sent (sendHeld)
      if (kept) this.held.hold(kept, flows);
      return;
    }
    const n = this.writer.count;
    const batch = this.writer.take(this.lost);
    // An agent that does not keep up: drop the batch rather than buffer without bound (the counts wait
    // for a later flush: they are what the metrics say, and small).
    if (control.writableLength > MAX_UNSENT_BYTES) {
      this.lost += n;
      return;
    }
    // The counts before the batch: once its flows can be read, the metrics count them too.
    const counts = this.counts.take();
    if (counts) this.send({ t: 'counts', ...counts });
    if (!batch) return;
    this.lost = 0;
    control.cork();
    control.write(frameHeader(batch.length));
    control.write(batch);
    control.uncork();
  }

  /** Sends what is held and what the writer has so far: the flows let go unsent, the counts, the
   *  batches, oldest first. */
  sendHeld(): void {
    const control = this.control();
    if (!control) return;
    const flows = this.writer.flows;
    const last = this.writer.take(0, true); // copied by hold()
    if (last) this.held.hold(last, flows);
    if (control.writableLength > MAX_UNSENT_BYTES) return; // kept (bounded) for the next time
    const { skipped, batches } = this.held.take();
    if (skipped) this.send({ t: 'skipped', flows: skipped });
    const counts = this.counts.take();
    if (counts) this.send({ t: 'counts', ...counts });
    if (!batches.length) return;
    batches[0].writeUInt32LE(this.lost, 1); // records.ts: [u8 format][u32 lost]
    this.lost = 0;
    control.cork();
    for (const b of batches) {
      control.write(frameHeader(b.length));
      control.write(b);
    }
    control.uncork();
  }

  private holding(): boolean {
    return this.holdFlows > 0 && !this.follow;
  }
}
