// The agent's side of the L7 record batches (the format and the worker's writer are in records.ts):
// a batch checked and split into its records, and one record decoded into an L7Record when a flow is
// read. Pure.

import { formatIp } from '../../net/index.ts';
import {
  answeredAt,
  BATCH_FORMAT,
  BATCH_FORMAT_UNANSWERED,
  BATCH_HEADER,
  FIXED,
  KIND_REPEAT,
  KIND_REPLY,
  KIND_REQUEST,
  KIND_RESPONSE,
  type L7Record,
  methodOfCode,
  REASONS,
  RESPONSE_VIEW,
  refusedCount,
  SHORT,
  verdictName,
} from './records.ts';

/** A batch's flows as the agent takes them: each record's offset and time in arrays kept from batch
 *  to batch, so indexing a batch allocates nothing per record (the agent's profile under keep-alive
 *  load had a third of its thread in the garbage collector: an offsets array grown per batch and a
 *  boxed number per Buffer#readDoubleLE, which was not inlined). An answered request record (records.ts)
 *  is listed twice: its request, then its response (the offset with RESPONSE_VIEW, the time plus the
 *  latency). Valid until the next read(). */
export class BatchIndex {
  offsets = new Int32Array(2048);
  /** Each record's wall-clock time, ms (the same field in every kind of record). */
  times = new Float64Array(2048);
  count = 0;
  /** Records the worker could not send before this batch (its header). */
  lost = 0;

  /** Indexes batch. Throws on a malformed batch. */
  read(batch: Buffer): void {
    if (batch.length < BATCH_HEADER || (batch[0] !== BATCH_FORMAT && batch[0] !== BATCH_FORMAT_UNANSWERED))
      throw new Error(`not an L7 record batch (format ${batch[0]})`);
    const dv = new DataView(batch.buffer, batch.byteOffset, batch.length);
    const n = batch.length;
    let i = BATCH_HEADER;
    let count = 0;
    this.count = 0;
    // The numbers are read with byte operations and the DataView (int32 and inlined), not
    // readUInt16LE/readUInt32LE: those compute in doubles, and the agent's profile had a third of
    // onBatch in Builtins_NumberToString, once per record, under this loop.
    while (i < n) {
      const len = n - i >= 2 ? batch[i] | (batch[i + 1] << 8) : 0;
      const kind = batch[i + 2];
      const short = kind === KIND_REPLY || kind === KIND_REPEAT;
      const badLength = short ? len !== SHORT : len < FIXED + 8 || kind > KIND_RESPONSE;
      if (badLength || i + len > n) throw new Error(`L7 record batch cut at byte ${i}`);
      // A reply names an earlier request record of this batch, full or repeat; a repeat a full one
      // (decodeRecord reads that one too). An offset of 2^31 or more reads negative: no record is there.
      const at = batch[i + 32] | (batch[i + 33] << 8) | (batch[i + 34] << 16) | (batch[i + 35] << 24);
      if (short && !isRequestAt(batch, this.offsets, count, at, kind === KIND_REPLY))
        throw new Error(`L7 short record at byte ${i} names no request record`);
      if (count + 2 > this.offsets.length) this.grow();
      const time = dv.getFloat64(i + 8, true);
      this.offsets[count] = i;
      this.times[count] = time;
      count++;
      if (kind === KIND_REQUEST || kind === KIND_REPEAT) {
        const answered = batch[answeredAt(batch, i)];
        if (answered === 1) {
          this.offsets[count] = i | RESPONSE_VIEW;
          this.times[count] = time + dv.getFloat64(i + 16, true) / 1e6;
          count++;
        } else if (answered !== 0) throw new Error(`L7 record at byte ${i}: answered is ${answered}`);
      }
      i += len;
    }
    this.count = count;
    this.lost = dv.getUint32(1, true);
  }

  private grow(): void {
    const offsets = new Int32Array(this.offsets.length * 2);
    offsets.set(this.offsets);
    const times = new Float64Array(this.times.length * 2);
    times.set(this.times);
    this.offsets = offsets;
    this.times = times;
  }
}

/** A batch's lost-record count and the offset of each record (BatchIndex, as plain numbers). Throws on a
 *  malformed batch. */
export function readBatch(batch: Buffer): { lost: number; offsets: number[] } {
  const ix = new BatchIndex();
  ix.read(batch);
  return { lost: ix.lost, offsets: Array.from(ix.offsets.subarray(0, ix.count)) };
}

/** Whether a full (or, `repeatToo`, a repeat) request record starts at `at` (offsets[0..count): the
 *  batch's records so far, ascending). */
function isRequestAt(b: Buffer, offsets: Int32Array, count: number, at: number, repeatToo: boolean): boolean {
  let hi = count - 1;
  // Most replies follow their request's record at once (and at one request per connection most
  // records are replies): the last record first, then a binary search. An answered record's second
  // entry (RESPONSE_VIEW) is the same record.
  if (hi >= 0 && (offsets[hi] & ~RESPONSE_VIEW) === at)
    return b[at + 2] === KIND_REQUEST || (repeatToo && b[at + 2] === KIND_REPEAT);
  let lo = 0;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const o = offsets[mid] & ~RESPONSE_VIEW;
    if (o === at) return b[at + 2] === KIND_REQUEST || (repeatToo && b[at + 2] === KIND_REPEAT);
    if (o < at) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

/** The record at batch[off] as an object (a flow is being built from it); off with RESPONSE_VIEW: the
 *  response an answered request record stands for too. */
export function decodeRecord(b: Buffer, off: number): L7Record {
  if (off & RESPONSE_VIEW) {
    const at = off & ~RESPONSE_VIEW;
    const r = decodeRecord(b, at); // its request; the response was judged the same (records.ts add)
    const latencyNs = b.readDoubleLE(at + 16);
    return { ...r, kind: 'response', timeMs: r.timeMs + latencyNs / 1e6, status: b.readUInt16LE(at + 24), latencyNs };
  }
  if (b[off + 2] === KIND_REPEAT) {
    const r = decodeRecord(b, b.readUInt32LE(off + 32));
    r.timeMs = b.readDoubleLE(off + 8);
    r.src.port = b.readUInt16LE(off + 26);
    r.dst.port = b.readUInt16LE(off + 36);
    if (r.reason === 'conn-limit') r.refused = refusedCount(b, off);
    return r;
  }
  if (b[off + 2] === KIND_REPLY) {
    const r = decodeRecord(b, b.readUInt32LE(off + 32));
    const reason = REASONS[b[off + 6]] ?? '';
    const { reason: _, refused: __, ...rest } = r;
    return {
      ...rest,
      kind: 'response',
      timeMs: b.readDoubleLE(off + 8),
      status: b.readUInt16LE(off + 24),
      latencyNs: b.readDoubleLE(off + 16),
      verdict: verdictName(b[off + 3]),
      ...(reason ? { reason } : {}),
    };
  }
  const alen = b[off + 7] === 6 ? 16 : 4;
  let i = off + FIXED + 2 * alen;
  const str8 = () => {
    const n = b[i];
    const s = b.toString('latin1', i + 1, i + 1 + n);
    i += 1 + n;
    return s;
  };
  const str16 = () => {
    const n = b.readUInt16LE(i);
    const s = b.toString('latin1', i + 2, i + 2 + n);
    i += 2 + n;
    return s;
  };
  const mcode = b[off + 4];
  const method = mcode ? methodOfCode(mcode) : str8();
  const path = str16();
  const host = str16();
  const count = b[i++];
  const sides: L7Record['sides'] = [];
  for (let k = 0; k < count; k++) {
    const direction = b[i] ? 'egress' : 'ingress';
    const allowed = b[i + 1] === 1;
    const endpoint = b.readUInt32LE(i + 2);
    const ruleId = b.readUInt32LE(i + 6);
    i += 10;
    const httpRule = str16();
    sides.push({ direction, endpoint, allowed, ruleId, ...(httpRule ? { httpRule } : {}) });
  }
  const srcEp = b.readUInt32LE(off + 40);
  const dstEp = b.readUInt32LE(off + 44);
  const reason = REASONS[b[off + 6]] ?? '';
  const refused = reason === 'conn-limit';
  const response = b[off + 2] === KIND_RESPONSE; // an answered request's record holds its response's status and latency too
  return {
    kind: response ? 'response' : 'request',
    timeMs: b.readDoubleLE(off + 8),
    src: {
      ip: formatIp(b.subarray(off + FIXED, off + FIXED + alen)),
      port: b.readUInt16LE(off + 26),
      identity: b.readUInt32LE(off + 32),
      ...(srcEp ? { endpoint: srcEp } : {}),
    },
    dst: {
      ip: formatIp(b.subarray(off + FIXED + alen, off + FIXED + 2 * alen)),
      port: b.readUInt16LE(off + 28),
      identity: b.readUInt32LE(off + 36),
      ...(dstEp ? { endpoint: dstEp } : {}),
    },
    method,
    path,
    host,
    protocol: b[off + 5] === 0 ? 'HTTP/1.0' : 'HTTP/1.1',
    status: response ? b.readUInt16LE(off + 24) : 0,
    latencyNs: response ? b.readDoubleLE(off + 16) : 0, // a request's: 0, or a refusal's count, or an answer's latency
    verdict: verdictName(b[off + 3]),
    ...(reason ? { reason } : {}),
    ...(refused ? { refused: refusedCount(b, off) } : {}),
    sides,
  };
}
