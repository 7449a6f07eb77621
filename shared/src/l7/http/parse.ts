// HTTP/1.1 message heads and body framing for the L7 proxy (RFC 9112). Pure.
//
// The proxy forwards the bytes it received, unchanged; it parses only to know where each message
// starts and ends and what a request asks for. Where two parsers could disagree about a message's
// boundaries (request smuggling), this one refuses instead of guessing: a request with both
// Transfer-Encoding and Content-Length, a repeated or malformed Content-Length, a transfer coding
// other than a final "chunked", obs-fold continuation lines, bare LF line ends, whitespace before a
// header's colon, or control characters in a header all get a 400 and the connection is closed. The
// server never sees such a request, so it cannot read it differently from how the policy did.

export const MAX_HEAD_BYTES = 64 * 1024;
/** Longest chunk-size line (size, extensions) and all trailers of one chunked body. */
const MAX_CHUNK_LINE = 4096;
const MAX_TRAILER_BYTES = 64 * 1024;

export type BodyKind = 'none' | 'length' | 'chunked' | 'close';

export interface RequestHead {
  method: string;
  /** The request-target as sent (origin-form "/a?b", absolute-form, authority-form or "*"). */
  target: string;
  /** HTTP/1.<minor> */
  minor: 0 | 1;
  /** Header names lower-cased, and their values without surrounding whitespace, in order. Built on
   *  first use from the bytes of the chunk the head came in: ask while that chunk is processed. */
  readonly names: string[];
  readonly values: string[];
  body: 'none' | 'length' | 'chunked';
  contentLength: number;
  /** The Host header (one, for HTTP/1.1). */
  host: string | undefined;
  /** The client wants the connection kept open after this exchange. */
  keepAlive: boolean;
  /** Connection: upgrade with an Upgrade header (e.g. WebSocket). */
  upgrade: boolean;
  expectContinue: boolean;
  /** Bytes of the head, CRLFCRLF included. */
  headLength: number;
  /** When the one Connection header of an HTTP/1.1 request is exactly "close": that line's start
   *  and the offset after its CRLF in the chunk the head came in (-1: otherwise). */
  closeLine: number;
  closeLineEnd: number;
}

export interface ResponseHead {
  status: number;
  minor: 0 | 1;
  body: BodyKind;
  contentLength: number;
  keepAlive: boolean;
  headLength: number;
}

export class HttpParseError extends Error {
  constructor(
    readonly status: 400 | 413 | 431 | 501 | 502,
    message: string,
  ) {
    super(message);
    this.name = 'HttpParseError';
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The offset after the first CRLFCRLF in buf[start, end), -1 when there is none. A loop here, not
 * Buffer#indexOf: that is a call into Node's C++ (validation, the buffer's memory looked up, a string
 * search set up) that cost more than the scan of a head of a few hundred bytes (profile of a keep-alive
 * worker: ~1 % of its CPU; a loop over a 160-byte response head: ~230 against ~350 ns). The byte 3
 * past a candidate start decides how far to skip: a CRLFCRLF cannot contain a byte other than CR or LF.
 */
function headEnd(buf: Buffer, start: number, end: number, from: number): number {
  let i = Math.max(from, start + 3); // where the last LF would be
  while (i < end) {
    const c = buf[i];
    if (c === 10) {
      if (buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) return i + 1;
      i += 2; // this LF can be at most the pattern's second byte
    } else if (c === 13) i += 1;
    else i += 4;
  }
  return -1;
}

/**
 * Where the head that starts at `start` ends (the offset after its CRLFCRLF), -1 when more bytes
 * are needed. Throws when the bytes cannot become a valid head (too long, LF-only line ends).
 * `from`: bytes before it were searched already (a head carried from earlier reads, carry.ts): the
 * search and the line-end check look at the new ones only.
 */
export function findHeadEnd(buf: Buffer, start: number, end: number, from = 0): number {
  const i = headEnd(buf, start, end, from);
  if (i >= 0) {
    if (i - start > MAX_HEAD_BYTES) throw new HttpParseError(431, `the message head is larger than ${MAX_HEAD_BYTES} bytes`);
    return i;
  }
  if (end - start > MAX_HEAD_BYTES) throw new HttpParseError(431, `the message head is larger than ${MAX_HEAD_BYTES} bytes`);
  const lf = buf.indexOf(10, from > start ? from - 1 : start); // a head made of LF-only lines would never end: refuse it at once
  if (lf >= 0 && lf < end && (lf === start || buf[lf - 1] !== 13)) throw new HttpParseError(400, 'line ends must be CRLF');
  return -1;
}

const TOKEN_BYTE = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TOKEN_BYTE[c.charCodeAt(0)] = 1;

/**
 * For a request head that is not complete yet: throws at once when its first bytes cannot begin a
 * request line (a method is a token, then a space). A TLS ClientHello or other bytes that are not
 * HTTP/1.x would otherwise wait for a CRLFCRLF that never comes, the client for an answer. True once
 * the method and its space are there (nothing more to check); `from`: the bytes before it were
 * checked already, all method bytes.
 */
export function checkRequestStart(buf: Buffer, start: number, end: number, from = start): boolean {
  for (let i = from; i < end; i++) {
    const c = buf[i];
    if (c === 32 && i > start) return true;
    if (!TOKEN_BYTE[c]) throw new HttpParseError(400, 'not an HTTP/1.x request');
  }
  return false;
}

/** Leading empty lines before a request line are allowed (RFC 9112 2.2): how many bytes to skip. */
export function skipEmptyLines(buf: Buffer, start: number, end: number): number {
  let i = start;
  while (i + 1 < end && buf[i] === 13 && buf[i + 1] === 10) i += 2;
  return i;
}

/** Heads are parsed in head.ts (one pass over the bytes); re-exported here with the types. */
export { parseRequestHead, parseResponseHead } from './head.ts';

/** An absolute-form request-target ("http://host:port/path?q", RFC 9112 3.2.2): its authority
 *  without userinfo, and what follows it; undefined for any other form. */
export function absoluteForm(target: string): { authority: string; rest: string } | undefined {
  const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/([^/?#]*)(.*)$/.exec(target);
  return m ? { authority: m[1].replace(/^[^@]*@/, ''), rest: m[2] } : undefined;
}

/** Validates a header name for rule compilation and rewrites. */
export function isToken(s: string): boolean {
  return TOKEN.test(s);
}

const enum Chunk {
  SIZE,
  EXT,
  SIZE_LF,
  DATA,
  DATA_CR,
  DATA_LF,
  TRAILER_START,
  TRAILER,
  TRAILER_LF,
  END_LF,
  DONE,
}

/**
 * Finds the end of a chunked body without copying it: feed it bytes, it says how many belong to the
 * body. Chunk sizes are hex digits only (no whitespace), extensions and trailers are bounded.
 */
export class ChunkedScanner {
  private state = Chunk.SIZE;
  private size = 0;
  private digits = 0;
  private lineBytes = 0;
  private trailerBytes = 0;

  get done(): boolean {
    return this.state === Chunk.DONE;
  }

  /** Consumes buf[start, end): the offset where the body ended, or -1 when all of it is body. */
  scan(buf: Buffer, start: number, end: number): number {
    let i = start;
    while (i < end) {
      switch (this.state) {
        case Chunk.DATA: {
          const n = Math.min(this.size, end - i);
          this.size -= n;
          i += n;
          if (this.size === 0) this.state = Chunk.DATA_CR;
          continue;
        }
        case Chunk.SIZE: {
          const c = buf[i];
          const v = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
          if (v >= 0) {
            if (++this.digits > 12) throw new HttpParseError(413, 'chunk size too large');
            this.size = this.size * 16 + v;
          } else if (this.digits && c === 59) {
            // ';' chunk extension
            this.state = Chunk.EXT;
          } else if (this.digits && c === 13) {
            this.state = Chunk.SIZE_LF;
          } else {
            throw new HttpParseError(400, 'malformed chunk size');
          }
          break;
        }
        case Chunk.EXT: {
          const c = buf[i];
          if (++this.lineBytes > MAX_CHUNK_LINE) throw new HttpParseError(400, 'chunk extension too long');
          if (c === 13) this.state = Chunk.SIZE_LF;
          else if (c === 10 || c === 0) throw new HttpParseError(400, 'malformed chunk extension');
          break;
        }
        case Chunk.SIZE_LF:
          if (buf[i] !== 10) throw new HttpParseError(400, 'chunk size line must end with CRLF');
          this.lineBytes = 0;
          this.digits = 0;
          this.state = this.size === 0 ? Chunk.TRAILER_START : Chunk.DATA;
          break;
        case Chunk.DATA_CR:
          if (buf[i] !== 13) throw new HttpParseError(400, 'chunk data must end with CRLF');
          this.state = Chunk.DATA_LF;
          break;
        case Chunk.DATA_LF:
          if (buf[i] !== 10) throw new HttpParseError(400, 'chunk data must end with CRLF');
          this.state = Chunk.SIZE;
          break;
        case Chunk.TRAILER_START:
          this.state = buf[i] === 13 ? Chunk.END_LF : Chunk.TRAILER;
          if (this.state === Chunk.TRAILER) continue; // look at this byte again as trailer text
          break;
        case Chunk.TRAILER: {
          const c = buf[i];
          if (++this.trailerBytes > MAX_TRAILER_BYTES) throw new HttpParseError(431, 'trailers too large');
          if (c === 13) this.state = Chunk.TRAILER_LF;
          else if (c === 10 || c === 0) throw new HttpParseError(400, 'malformed trailer');
          break;
        }
        case Chunk.TRAILER_LF:
          if (buf[i] !== 10) throw new HttpParseError(400, 'trailer lines must end with CRLF');
          this.state = Chunk.TRAILER_START;
          break;
        case Chunk.END_LF:
          if (buf[i] !== 10) throw new HttpParseError(400, 'chunked body must end with CRLF');
          this.state = Chunk.DONE;
          return i + 1;
        case Chunk.DONE:
          return i;
      }
      i++;
    }
    return -1;
  }
}

/** Where a message body ends, fed chunk by chunk: a Content-Length count or chunked framing. One per
 *  direction of a connection, restarted for each message that has a body. */
export class BodyScanner {
  private left = 0;
  private chunks?: ChunkedScanner;

  start(body: 'length' | 'chunked', contentLength: number): void {
    this.chunks = body === 'chunked' ? new ChunkedScanner() : undefined;
    this.left = contentLength;
  }

  /** Consumes buf[start, end): the offset where the body ended, or -1 when all of it is body. */
  scan(buf: Buffer, start: number, end: number): number {
    if (this.chunks) return this.chunks.scan(buf, start, end);
    const n = Math.min(this.left, end - start);
    this.left -= n;
    return this.left === 0 ? start + n : -1;
  }
}
