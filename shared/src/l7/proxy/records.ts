// One record per HTTP request and one per response, from the proxy workers to the agent (which turns
// them into L7 flows and metrics). A busy proxy makes tens of thousands a second, so they travel as
// packed binary batches: the worker appends each record to a buffer without building anything, the
// agent reads the few fields its metrics need in place and keeps the bytes in its flow ring, and a
// flow is decoded only when someone reads it. Header values are never sent: they may carry
// credentials. The agent's reader is record-reader.ts. Pure.
//
// Batch: [u8 BATCH_FORMAT][u32 lost][records...]. Record (little-endian):
//   0 u16 length of the record   2 u8 kind (0 request, 1 response)   3 u8 verdict (0 forwarded, 1 denied, 2 error)
//   4 u8 method code (0: name follows)   5 u8 protocol (0 HTTP/1.0, 1 HTTP/1.1)   6 u8 reason code   7 u8 family (4, 6)
//   8 f64 wall-clock ms   16 f64 latency ns   24 u16 status   26 u16 source port   28 u16 destination port   30 u16 pad
//   32 u32 source identity   36 u32 destination identity   40 u32 source endpoint   44 u32 destination endpoint
//   48 u32 endpoint for the latency metric (ingress side first; 0 none)
//   52 source address (4 or 16 bytes), destination address (same family)
//   then: [method if code 0: u8 len + bytes] path: u16 len + bytes, host: u16 len + bytes,
//         u8 side count, per side: u8 direction (0 ingress, 1 egress), u8 allowed, u32 endpoint, u32 rule id,
//         HTTP rule path: u16 len + bytes.
// Strings are latin1, as the proxy read them from the wire; path and host are cut at MAX_TEXT bytes.
// A response whose request's record is in the same batch (most: a batch spans ~15 ms) is written
// into that record (below, "answered") or, when its verdict or reason differs from the request's (an
// upstream that failed), is a short reply record, which names that record rather than repeating its
// addresses, texts and sides (~100 bytes) — kind 2, SHORT bytes: the same fields at 0-26 (method code and protocol copied),
//   28 u32 endpoint for the latency metric   32 u32 offset of the request's record in the batch
//   36 u16 destination port   38 u16 pad.
// Likewise a request that repeats an earlier full request record of the batch but for its ports and
// time (same two ends, method, path, host, protocol and decision: a keep-alive client asking for the
// same thing, or new connections from one client to one server) is a short repeat record, kind 3,
// naming that record; its source port is at 26 and its destination port at 36.
// A response that completes while its request's record (full or repeat) is still in the batch being
// written, with the request's verdict and reason (most: answers take well under a batch's span),
// gets no record of its own: the request's record is marked answered (u8 1 at
// 30 in a full record, at 38 in a repeat) and takes the response's latency at 16 and status at 24;
// the response's time is the request's plus its latency. One record then stands for two flows (the
// reader's index lists it twice, the second time with RESPONSE_VIEW set): half the records and
// bytes the agent reads and indexes at keep-alive. Batches with such records are BATCH_FORMAT 2; an
// agent that knows only 1 refuses them (and says so) rather than losing their responses unseen.
// A refused connection's record (reason conn-limit, full or repeat: worker.ts refuse) stands for
// several refusals of its source (source-limit.ts RefusalRecords): how many is at 16, the f64 a
// request's record otherwise leaves 0 (a request has no latency). 0 there (a record from before the
// count) stands for one.
import { Buffer } from 'node:buffer'; // not the global accessor: raw-socket.ts says why
import { ipBytes } from '../../net/index.ts';
import type { Exchange } from '../http/exchange.ts';
import type { ConnectionPolicy, ProxyDecision } from './view.ts';

export type RecordKind = 'request' | 'response';
export type RecordVerdict = 'forwarded' | 'denied' | 'error';

export const BATCH_FORMAT = 2;
/** The format before answered records (read as ever: it has none). */
export const BATCH_FORMAT_UNANSWERED = 1;
export const BATCH_HEADER = 5;
export const FIXED = 52;
export const SHORT = 40;
export const KIND_REQUEST = 0;
export const KIND_RESPONSE = 1;
export const KIND_REPLY = 2;
export const KIND_REPEAT = 3;
const MAX_TEXT = 8192;
const METHODS = ['', 'GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
const METHOD_CODE = new Map(METHODS.map((m, i) => [m, i]));
const VERDICTS: RecordVerdict[] = ['forwarded', 'denied', 'error'];
export const REASONS = ['', 'denied', 'bad-request', 'upstream-unreachable', 'conn-limit'] as const;
/** The reason code of a refused connection's record (worker.ts refuse): a request record with no request. */
export const REASON_CONN_LIMIT = 4;
const REASON_CODE = new Map<string, number>(REASONS.map((r, i) => [r, i]));

/** A record's verdict code: a refused connection is dropped (1), as a denied request is. */
export const verdictCode = (reason: string | undefined): number =>
  reason === 'denied' || reason === 'conn-limit' ? 1 : reason ? 2 : 0;

const reasonCode = (reason: string | undefined): number => (reason ? (REASON_CODE.get(reason) ?? 0) : 0);

export const verdictName = (v: number): RecordVerdict => VERDICTS[v] ?? 'error';
/** The code of a standard method, 0 for any other. */
export const methodCode = (method: string): number => METHOD_CODE.get(method) ?? 0;

/** The endpoint whose latency series an exchange counts in: the ingress side's (the server's), else
 *  the first side's; 0 with no side. */
export function metricEndpointOf(sides: readonly { direction: string; endpoint: number }[]): number {
  for (const s of sides) if (s.direction === 'ingress') return s.endpoint;
  return sides.length ? sides[0].endpoint : 0;
}

/** The standard method of a method code, '' for any other method. */
export const methodOfCode = (code: number): string => METHODS[code] ?? '';

export interface L7Record {
  kind: RecordKind;
  /** Wall-clock time in ms (with sub-ms fraction). */
  timeMs: number;
  src: { ip: string; port: number; identity: number; endpoint?: number };
  dst: { ip: string; port: number; identity: number; endpoint?: number };
  method: string;
  /** Path and query, as the rules saw it. */
  path: string;
  host: string;
  protocol: string;
  /** Response status (0 for a request record). */
  status: number;
  latencyNs: number;
  verdict: RecordVerdict;
  /** Why the proxy answered itself: denied, bad-request, upstream-unreachable; conn-limit: the record
   *  of a connection refused before any request (its method, path and host are empty). */
  reason?: string;
  /** conn-limit: how many connections of its source the record stands for (its ports: the last one's). */
  refused?: number;
  sides: { direction: 'ingress' | 'egress'; endpoint: number; allowed: boolean; ruleId: number; httpRule?: string }[];
}

/** Everything the connection knows besides the exchange. */
export interface RecordContext {
  srcPort: number;
  dstPort: number;
  policy: ConnectionPolicy;
  /** A refused connection's record (conn-limit): how many refusals it stands for (1 if not given). */
  refused?: number;
}

/** Set in an offset of the reader's index (record-reader.ts BatchIndex): the response of the answered
 *  request record at the offset without it. A batch is at most 256 MiB (frames.ts MAX_FRAME). */
export const RESPONSE_VIEW = 1 << 30;

/** Where a request record (full or repeat) at b[off] says it was answered (1) in place. */
export const answeredAt = (b: Buffer, off: number): number => off + (b[off + 2] === KIND_REPEAT ? 38 : 30);

/** Offsets of the fields the agent reads in place (the same in every kind of record). */
export const At = { KIND: 2, VERDICT: 3, METHOD: 4, REASON: 6, TIME: 8, LATENCY: 16, REFUSED: 16, STATUS: 24 } as const;

/** How many refused connections the conn-limit record at b[off] stands for (0 there, an older record: one). */
export const refusedCount = (b: Buffer, off: number): number => {
  const n = b.readDoubleLE(off + At.REFUSED);
  return Number.isFinite(n) && n >= 1 ? n : 1; // NaN or infinite: not a count this writer wrote
};

/** Whether the record at b[off] is a response (a full one or a reply). */
export const isResponse = (b: Buffer, off: number): boolean =>
  b[off + At.KIND] === KIND_RESPONSE || b[off + At.KIND] === KIND_REPLY;

/** The endpoint for the latency metric of the record at b[off] (0: none). */
export const metricEndpoint = (b: Buffer, off: number): number =>
  b.readUInt32LE(off + (b[off + At.KIND] >= KIND_REPLY ? 28 : 48));

/** What a full request record was written from (RecordWriter's repeat check), one per policy. */
interface LastRequest {
  batch: number;
  at: number;
  method: string;
  path: string;
  host: string;
  protocol: string;
  reason: string | undefined;
  info: unknown;
}

/** The record bytes that are the same for every exchange between the policy's two ends (ports aside),
 *  made once per policy: connections between the same addresses share it, and one request per
 *  connection is a common way to use HTTP. */
const policyBytes = new WeakMap<ConnectionPolicy, Buffer>();

function fixedBytes(p: ConnectionPolicy): Buffer {
  const cached = policyBytes.get(p);
  if (cached) return cached;
  const src = ipBytes(p.src.ip);
  const dst = ipBytes(p.dst.ip);
  const b = Buffer.alloc(FIXED + src.length + dst.length);
  b[7] = src.length === 4 ? 4 : 6;
  b.writeUInt32LE(p.src.identity >>> 0, 32);
  b.writeUInt32LE(p.dst.identity >>> 0, 36);
  b.writeUInt32LE(p.src.endpoint ?? 0, 40);
  b.writeUInt32LE(p.dst.endpoint ?? 0, 44);
  src.copy(b, FIXED);
  dst.copy(b, FIXED + src.length);
  policyBytes.set(p, b);
  return b;
}

const viewOf = (b: Buffer) => new DataView(b.buffer, b.byteOffset, b.length);

/** Appends records to a batch (worker side); take() hands over the batch and starts a new one. */
export class RecordWriter {
  private buf: Buffer;
  /** A DataView of buf for the numbers: its setters compile to plain stores, where Buffer's write*()
   *  methods stayed calls (not inlined in these large functions) in the worker's profile. */
  private dv: DataView;
  private at = BATCH_HEADER;
  private n = 0;
  /** Records of this batch that were answered in place: each is two flows. */
  private answered = 0;
  /** Counts batches taken: an exchange's request record is in this batch when its recordBatch is this. */
  private batch = 0;
  /** The last full request record per connection policy (ports aside, the same for its connections). */
  private readonly last = new WeakMap<ConnectionPolicy, LastRequest>();

  constructor(private readonly size = 256 * 1024) {
    this.buf = Buffer.allocUnsafe(size);
    this.dv = viewOf(this.buf);
  }

  get count(): number {
    return this.n;
  }
  /** The flows this batch stands for (an answered record is two). */
  get flows(): number {
    return this.n + this.answered;
  }
  get bytes(): number {
    return this.at;
  }

  add(kind: RecordKind, x: Exchange, ctx: RecordContext, timeMs: number): void {
    if (kind === 'response' && x.recordBatch === this.batch) {
      const req = x.recordAt ?? 0;
      const b = this.buf;
      const flag = answeredAt(b, req);
      // Answered in place when the response says what the request's record says (an upstream that
      // failed after a forwarded request does not: a reply record carries its own verdict).
      if (b[flag] === 0 && b[req + 3] === verdictCode(x.localReason) && b[req + 6] === reasonCode(x.localReason)) {
        b[flag] = 1;
        this.answered++;
        this.dv.setFloat64(req + 16, x.latencyNs, true);
        this.dv.setUint16(req + 24, x.status, true);
        return;
      }
      this.short(KIND_REPLY, x, timeMs, req, 0, 0, x.latencyNs);
      return;
    }
    const last = kind === 'request' ? this.last.get(ctx.policy) : undefined;
    if (
      last &&
      last.batch === this.batch &&
      last.info === x.verdict.info &&
      last.method === x.method &&
      last.path === x.path &&
      last.host === x.host &&
      last.protocol === x.protocol &&
      last.reason === x.localReason
    ) {
      x.recordBatch = this.batch;
      x.recordAt = this.at;
      this.short(KIND_REPEAT, x, timeMs, last.at, ctx.srcPort, ctx.dstPort, ctx.refused ?? 0);
      return;
    }
    const fixed = fixedBytes(ctx.policy);
    const d = x.verdict.info as ProxyDecision | undefined;
    const sides = d?.sides ?? [];
    const mcode = methodCode(x.method);
    // Worst case: fixed part, three strings at their caps, the sides with their rule paths.
    let need = fixed.length + 1 + (mcode ? 0 : 256) + 4 + 2 * MAX_TEXT + 1;
    for (const s of sides) need += 12 + (s.http?.path.length ?? 0);
    if (this.at + need > this.buf.length) this.grow(need);
    const b = this.buf;
    const dv = this.dv;
    const start = this.at;
    b.set(fixed, start); // a typed-array copy: Buffer#copy makes a view of the source per call
    dv.setUint16(start + 26, ctx.srcPort, true);
    dv.setUint16(start + 28, ctx.dstPort, true);
    b[start + 2] = kind === 'request' ? 0 : 1;
    b[start + 3] = verdictCode(x.localReason);
    b[start + 4] = mcode;
    b[start + 5] = x.protocol === 'HTTP/1.0' ? 0 : 1;
    b[start + 6] = reasonCode(x.localReason);
    dv.setFloat64(start + 8, timeMs, true);
    dv.setFloat64(start + 16, kind === 'response' ? x.latencyNs : (ctx.refused ?? 0), true);
    dv.setUint16(start + 24, kind === 'response' ? x.status : 0, true);
    dv.setUint32(start + 48, metricEndpointOf(sides), true);
    let i = start + fixed.length;
    if (!mcode) i = text8(b, i, x.method);
    i = text16(b, i, x.path);
    i = text16(b, i, x.host);
    b[i++] = sides.length;
    for (const s of sides) {
      b[i] = s.direction === 'egress' ? 1 : 0;
      b[i + 1] = s.allowed ? 1 : 0;
      dv.setUint32(i + 2, s.endpoint, true);
      dv.setUint32(i + 6, s.ruleId >>> 0, true);
      i = text16(b, i + 10, s.http?.path ?? '');
    }
    dv.setUint16(start, i - start, true);
    this.at = i;
    this.n++;
    if (kind === 'request') {
      x.recordBatch = this.batch;
      x.recordAt = start;
      this.remember(ctx.policy, x, start);
    }
  }

  private remember(p: ConnectionPolicy, x: Exchange, at: number): void {
    let m = this.last.get(p);
    if (!m) {
      m = { batch: 0, at: 0, method: '', path: '', host: '', protocol: '', reason: undefined, info: undefined };
      this.last.set(p, m);
    }
    m.batch = this.batch;
    m.at = at;
    m.method = x.method;
    m.path = x.path;
    m.host = x.host;
    m.protocol = x.protocol;
    m.reason = x.localReason;
    m.info = x.verdict.info;
  }

  /** A reply (the response of the exchange whose request record is at `req` in this batch) or a
   *  repeat (a request whose record would be the one at `req` but for its ports and time); `at16`:
   *  the reply's latency, the repeat's refusal count. */
  private short(kind: number, x: Exchange, timeMs: number, req: number, srcPort: number, dstPort: number, at16: number): void {
    if (this.at + SHORT > this.buf.length) this.grow(SHORT);
    const b = this.buf;
    const dv = this.dv;
    const start = this.at;
    b[start] = SHORT;
    b[start + 1] = 0;
    b[start + 2] = kind;
    b[start + 3] = verdictCode(x.localReason);
    b[start + 4] = b[req + 4];
    b[start + 5] = b[req + 5];
    b[start + 6] = reasonCode(x.localReason);
    b[start + 7] = 0;
    dv.setFloat64(start + 8, timeMs, true);
    dv.setFloat64(start + 16, at16, true);
    dv.setUint16(start + 24, kind === KIND_REPLY ? x.status : 0, true);
    dv.setUint16(start + 26, srcPort, true);
    dv.setUint32(start + 28, dv.getUint32(req + (b[req + At.KIND] >= KIND_REPLY ? 28 : 48), true), true); // metricEndpoint(b, req)
    dv.setUint32(start + 32, req, true);
    dv.setUint16(start + 36, dstPort, true);
    dv.setUint16(start + 38, 0, true);
    this.at = start + SHORT;
    this.n++;
  }

  /** The batch so far (header filled in, `lost` records counted), or undefined when empty. `reuse`:
   *  the caller copies the batch before the next add() (held-batches.ts), so the buffer is written again. */
  take(lost: number, reuse = false): Buffer | undefined {
    if (!this.n) return undefined;
    const out = this.buf.subarray(0, this.at);
    out[0] = BATCH_FORMAT;
    out.writeUInt32LE(lost, 1);
    // The batch leaves with its buffer (the socket may still hold it): the next one gets a new one.
    if (!reuse) {
      this.buf = Buffer.allocUnsafe(this.size);
      this.dv = viewOf(this.buf);
    }
    this.at = BATCH_HEADER;
    this.n = 0;
    this.answered = 0;
    this.batch++;
    return out;
  }

  private grow(need: number): void {
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + need));
    this.buf.copy(next, 0, 0, this.at);
    this.buf = next;
    this.dv = viewOf(next);
  }
}

/** Most texts are short (a path, a host): copied byte by byte, below this, instead of a call into
 *  Node's C++ string writer. Latin1 either way (a char code's low byte). */
const SHORT_TEXT = 64;

function latin1(b: Buffer, at: number, s: string, n: number): void {
  if (n <= SHORT_TEXT) for (let k = 0; k < n; k++) b[at + k] = s.charCodeAt(k);
  else b.write(s.length > n ? s.slice(0, n) : s, at, 'latin1');
}

function text8(b: Buffer, i: number, s: string): number {
  const n = Math.min(s.length, 255);
  latin1(b, i + 1, s, n);
  b[i] = n;
  return i + 1 + n;
}

function text16(b: Buffer, i: number, s: string): number {
  const n = Math.min(s.length, MAX_TEXT);
  latin1(b, i + 2, s, n);
  b[i] = n & 0xff;
  b[i + 1] = n >>> 8;
  return i + 2 + n;
}
