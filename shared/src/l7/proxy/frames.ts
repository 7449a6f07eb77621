// The control channel between the agent and its proxy workers: length-prefixed messages over a unix
// socket (4-byte big-endian length, then the body). A body is UTF-8 JSON (it starts with "{") or a
// binary batch of request/response records (it starts with records.ts BATCH_FORMAT). Pure framing
// plus the message types.
import type { CountsDelta } from './request-counts.ts';
import type { ProxySnapshot } from './snapshot.ts';

export const MAX_FRAME = 256 * 1024 * 1024;

export type WorkerMessage =
  | { t: 'hello'; pid: number; index: number; port: number; version: string; kind: 'http' }
  | { t: 'stats'; connections: number; requests: number; denied: number; rssBytes: number }
  /** What the metrics count since the last one (request-counts.ts), sent before the batch it goes with. */
  | ({ t: 'counts' } & CountsDelta)
  /** Flows the worker let go unsent (held-batches.ts), older than the batches that follow. */
  | { t: 'skipped'; flows: number }
  /** Everything held when `collect` id came has been sent (it follows the batches). */
  | { t: 'collected'; id: number };

export type AgentMessage =
  | { t: 'policy'; snapshot: ProxySnapshot }
  /** The agent's settings for its workers, sent on every hello: a worker adopted from an earlier agent
   *  takes the current agent's, not the ones it was started with. maxConnsPerSource 0: the default. */
  | {
      t: 'config';
      maxConnsPerSource: number;
      /** Hold batches (held-batches.ts) up to this many flows while nobody follows; 0: send each at once. */
      holdFlows?: number;
      /** Someone follows flows: send each batch at once. */
      follow?: boolean;
    }
  /** Send what is held now, then { t: 'collected', id }. */
  | { t: 'collect'; id: number }
  /** Stop accepting, finish open connections for at most drainMs, exit. */
  | { t: 'stop'; drainMs: number };

export function encodeFrame(msg: WorkerMessage | AgentMessage): Buffer {
  const body = Buffer.from(JSON.stringify(msg));
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** The length prefix of a binary body (records.ts RecordWriter.take): write it, then the body. */
export function frameHeader(bodyLength: number): Buffer {
  const h = Buffer.allocUnsafe(4);
  h.writeUInt32BE(bodyLength, 0);
  return h;
}

const JSON_START = 0x7b; // "{"

/**
 * Feeds socket data, calls back once per complete message (JSON bodies parsed, binary ones as they
 * are); throws on an oversized or unreadable frame. A frame that arrives in many chunks is joined
 * once, when it is complete.
 */
export class FrameReader<T> {
  private buf: Buffer = Buffer.alloc(0);
  /** Chunks of an incomplete frame beyond buf, and their total length with buf. */
  private parts: Buffer[] = [];
  private have = 0;
  private want = 0;

  constructor(
    private readonly onMessage: (m: T) => void,
    private readonly onBinary?: (body: Buffer) => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.want) {
      this.parts.push(chunk);
      this.have += chunk.length;
      if (this.have < this.want) return;
      this.buf = Buffer.concat([this.buf, ...this.parts], this.have);
      this.parts = [];
      this.want = 0;
    } else {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    }
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > MAX_FRAME) throw new Error(`control frame of ${len} bytes exceeds ${MAX_FRAME}`);
      if (this.buf.length < 4 + len) {
        this.want = 4 + len;
        this.have = this.buf.length;
        return;
      }
      const body = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      if (body[0] === JSON_START) this.onMessage(JSON.parse(body.toString('utf8')) as T);
      else if (this.onBinary) this.onBinary(body);
      else throw new Error(`unexpected binary control frame (first byte ${body[0]})`);
    }
  }
}
