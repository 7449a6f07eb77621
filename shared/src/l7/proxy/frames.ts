// The control channel between the agent and its proxy workers: length-prefixed JSON messages over a
// unix socket (4-byte big-endian length, then UTF-8 JSON). Pure framing plus the message types.
import type { ProxySnapshot } from './snapshot.ts';
import type { RecordTuple } from './records.ts';

export const MAX_FRAME = 256 * 1024 * 1024;

export type WorkerMessage =
  | { t: 'hello'; pid: number; index: number; port: number; version: string; kind: 'http' }
  /** Request and response records since the last batch; `lost` counts records dropped while the agent was away. */
  | { t: 'records'; r: RecordTuple[]; lost?: number }
  | { t: 'stats'; connections: number; requests: number; denied: number; rssBytes: number };

export type AgentMessage =
  | { t: 'policy'; snapshot: ProxySnapshot }
  /** Stop accepting, finish open connections for at most drainMs, exit. */
  | { t: 'stop'; drainMs: number };

export function encodeFrame(msg: WorkerMessage | AgentMessage): Buffer {
  const body = Buffer.from(JSON.stringify(msg));
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** Feeds socket data, calls back once per complete message; throws on an oversized or unreadable frame. */
export class FrameReader<T> {
  private buf: Buffer = Buffer.alloc(0);

  constructor(private readonly onMessage: (m: T) => void) {}

  push(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > MAX_FRAME) throw new Error(`control frame of ${len} bytes exceeds ${MAX_FRAME}`);
      if (this.buf.length < 4 + len) return;
      const body = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      this.onMessage(JSON.parse(body.toString('utf8')) as T);
    }
  }
}
