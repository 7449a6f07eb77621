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
  /** Header names lower-cased, and their values without surrounding whitespace, in order. */
  names: string[];
  values: string[];
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
  constructor(readonly status: 400 | 413 | 431 | 501 | 502, message: string) {
    super(message);
    this.name = 'HttpParseError';
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Control characters other than HTAB, and CR or LF that are not part of a CRLF pair. */
const BAD_CHARS = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n/;
const DIGITS = /^\d{1,15}$/;

/** tchar (RFC 9110 5.6.2) by char code. */
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;

function isTokenRange(s: string, from: number, to: number): boolean {
  if (to <= from) return false;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c > 127 || !TCHAR[c]) return false;
  }
  return true;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');

/**
 * Where the head that starts at `start` ends (the offset after its CRLFCRLF), -1 when more bytes
 * are needed. Throws when the bytes cannot become a valid head (too long, LF-only line ends).
 */
export function findHeadEnd(buf: Buffer, start: number, end: number): number {
  const i = buf.indexOf(CRLFCRLF, start);
  if (i >= 0 && i + 4 <= end) {
    if (i + 4 - start > MAX_HEAD_BYTES) throw new HttpParseError(431, `the message head is larger than ${MAX_HEAD_BYTES} bytes`);
    return i + 4;
  }
  if (end - start > MAX_HEAD_BYTES) throw new HttpParseError(431, `the message head is larger than ${MAX_HEAD_BYTES} bytes`);
  const lf = buf.indexOf(10, start); // a head made of LF-only lines would never end: refuse it at once
  if (lf >= 0 && lf < end && (lf === start || buf[lf - 1] !== 13)) throw new HttpParseError(400, 'line ends must be CRLF');
  return -1;
}

/** Leading empty lines before a request line are allowed (RFC 9112 2.2): how many bytes to skip. */
export function skipEmptyLines(buf: Buffer, start: number, end: number): number {
  let i = start;
  while (i + 1 < end && buf[i] === 13 && buf[i + 1] === 10) i += 2;
  return i;
}

/** Comma-separated tokens of every header `name`, lower-cased. */
export function headerTokens(names: string[], values: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < names.length; i++) {
    if (names[i] !== name) continue;
    for (const t of values[i].split(',')) {
      const v = t.trim().toLowerCase();
      if (v) out.push(v);
    }
  }
  return out;
}

/** The headers that frame a message and steer the connection, collected in the one pass. */
interface Collected {
  te: string | undefined;
  cl: string | undefined;
  clCount: number;
  conn: string | undefined;
  host: string | undefined;
  hostCount: number;
  expect: string | undefined;
  upgrade: boolean;
}

const join = (a: string | undefined, b: string) => (a === undefined ? b : `${a},${b}`);

/**
 * Header lines of `text` from `pos` (after the start line) into names/values (when given) and the
 * collected framing headers. `text` has been checked for stray control characters already.
 */
function scanHeaders(text: string, pos: number, names: string[] | null, values: string[] | null, status: 400 | 502): Collected {
  const c: Collected = { te: undefined, cl: undefined, clCount: 0, conn: undefined, host: undefined, hostCount: 0, expect: undefined, upgrade: false };
  const len = text.length;
  while (pos < len) {
    let eol = text.indexOf('\r\n', pos);
    if (eol < 0) eol = len;
    const first = text.charCodeAt(pos);
    if (first === 32 || first === 9) throw new HttpParseError(status, 'obsolete header line folding is not accepted');
    const colon = text.indexOf(':', pos);
    if (colon < 0 || colon > eol || !isTokenRange(text, pos, colon)) throw new HttpParseError(status, `malformed header line ${JSON.stringify(text.slice(pos, Math.min(eol, pos + 60)))}`);
    let vs = colon + 1;
    let ve = eol;
    while (vs < ve && (text.charCodeAt(vs) === 32 || text.charCodeAt(vs) === 9)) vs++;
    while (ve > vs && (text.charCodeAt(ve - 1) === 32 || text.charCodeAt(ve - 1) === 9)) ve--;
    const name = text.slice(pos, colon).toLowerCase();
    const value = text.slice(vs, ve);
    if (names) { names.push(name); values!.push(value); }
    switch (name) {
      case 'content-length': c.cl = value; c.clCount++; break;
      case 'transfer-encoding': c.te = join(c.te, value); break;
      case 'connection': c.conn = join(c.conn, value); break;
      case 'host': c.host = value; c.hostCount++; break;
      case 'expect': c.expect = join(c.expect, value); break;
      case 'upgrade': c.upgrade = true; break;
    }
    pos = eol + 2;
  }
  return c;
}

function tokens(v: string | undefined): string[] {
  if (v === undefined) return [];
  const out: string[] = [];
  for (const t of v.split(',')) {
    const x = t.trim().toLowerCase();
    if (x) out.push(x);
  }
  return out;
}

interface Framing { body: 'none' | 'length' | 'chunked' | 'close'; contentLength: number }

/** Transfer-Encoding and Content-Length -> framing; `request` applies the stricter request rules. */
function framing(c: Collected, minor: number, request: boolean): Framing {
  const err = (status: 400 | 501 | 502, msg: string) => new HttpParseError(request ? status : 502, msg);
  if (c.clCount > 1) throw err(400, 'more than one Content-Length header');
  if (c.te !== undefined) {
    const te = tokens(c.te);
    if (c.cl !== undefined) throw err(400, 'both Transfer-Encoding and Content-Length');
    if (request && minor === 0) throw err(400, 'Transfer-Encoding in an HTTP/1.0 request');
    const last = te[te.length - 1];
    if (last === 'chunked') {
      if (te.indexOf('chunked') !== te.length - 1) throw err(400, 'chunked applied more than once');
      return { body: 'chunked', contentLength: -1 };
    }
    // A request body must be delimited; a response without final chunked runs until close.
    if (request) throw err(501, `transfer coding "${last ?? ''}" without a final chunked is not accepted`);
    return { body: 'close', contentLength: -1 };
  }
  if (c.cl !== undefined) {
    if (!DIGITS.test(c.cl)) throw err(400, `Content-Length ${JSON.stringify(c.cl.slice(0, 30))} is not a number`);
    const n = Number(c.cl);
    return n === 0 ? { body: 'none', contentLength: 0 } : { body: 'length', contentLength: n };
  }
  return request ? { body: 'none', contentLength: 0 } : { body: 'close', contentLength: -1 };
}

function headText(buf: Buffer, start: number, headEnd: number, status: 400 | 502): string {
  const text = buf.toString('latin1', start, headEnd - 4);
  if (BAD_CHARS.test(text)) throw new HttpParseError(status, 'control characters or a bare CR/LF in the message head');
  return text;
}

/** Parses the request head in buf[start, headEnd) (headEnd from findHeadEnd). */
export function parseRequestHead(buf: Buffer, start: number, headEnd: number): RequestHead {
  const text = headText(buf, start, headEnd, 400);
  let eol = text.indexOf('\r\n');
  if (eol < 0) eol = text.length;
  const sp1 = text.indexOf(' ');
  const sp2 = sp1 < 0 ? -1 : text.indexOf(' ', sp1 + 1);
  if (sp1 < 0 || sp2 < 0 || sp2 > eol || eol - sp2 !== 9 || !isTokenRange(text, 0, sp1) || sp2 === sp1 + 1 ||
      !text.startsWith('HTTP/1.', sp2 + 1) || (text.charCodeAt(eol - 1) !== 48 && text.charCodeAt(eol - 1) !== 49)) {
    throw new HttpParseError(400, `malformed request line ${JSON.stringify(text.slice(0, Math.min(eol, 80)))}`);
  }
  const target = text.slice(sp1 + 1, sp2);
  for (let i = 0; i < target.length; i++) {
    const ch = target.charCodeAt(i);
    if (ch <= 32 || ch === 127) throw new HttpParseError(400, 'malformed request target');
  }
  const minor = text.charCodeAt(eol - 1) === 49 ? 1 : 0;
  const names: string[] = [];
  const values: string[] = [];
  const c = scanHeaders(text, eol + 2, names, values, 400);
  if (c.hostCount > 1) throw new HttpParseError(400, 'more than one Host header');
  if (minor === 1 && c.host === undefined) throw new HttpParseError(400, 'an HTTP/1.1 request needs a Host header');
  // Request framing never runs until close (framing() refuses that for requests).
  const f = framing(c, minor, true) as { body: RequestHead['body']; contentLength: number };
  const conn = tokens(c.conn);
  return {
    method: text.slice(0, sp1), target, minor, names, values, body: f.body, contentLength: f.contentLength, host: c.host,
    keepAlive: minor === 1 ? !conn.includes('close') : conn.includes('keep-alive'),
    upgrade: c.upgrade && conn.includes('upgrade'),
    expectContinue: tokens(c.expect).includes('100-continue'), headLength: headEnd - start,
  };
}

/** Parses a response head; the request it answers decides whether a body can follow (RFC 9112 6.3). */
export function parseResponseHead(buf: Buffer, start: number, headEnd: number, requestMethod: string): ResponseHead {
  const text = headText(buf, start, headEnd, 502);
  let eol = text.indexOf('\r\n');
  if (eol < 0) eol = text.length;
  const d0 = text.charCodeAt(9), d1 = text.charCodeAt(10), d2 = text.charCodeAt(11);
  if (!text.startsWith('HTTP/1.') || (text.charCodeAt(7) !== 48 && text.charCodeAt(7) !== 49) || text.charCodeAt(8) !== 32 ||
      !(d0 >= 49 && d0 <= 57 && d1 >= 48 && d1 <= 57 && d2 >= 48 && d2 <= 57) || (eol > 12 && text.charCodeAt(12) !== 32)) {
    throw new HttpParseError(502, `malformed status line ${JSON.stringify(text.slice(0, Math.min(eol, 80)))}`);
  }
  const minor = text.charCodeAt(7) === 49 ? 1 : 0;
  const status = (d0 - 48) * 100 + (d1 - 48) * 10 + (d2 - 48);
  const c = scanHeaders(text, eol + 2, null, null, 502);
  const conn = tokens(c.conn);
  const keepAlive = minor === 1 ? !conn.includes('close') : conn.includes('keep-alive');
  const base = { status, minor: minor as 0 | 1, keepAlive, headLength: headEnd - start };
  if (requestMethod === 'HEAD' || status < 200 || status === 204 || status === 304) return { ...base, body: 'none', contentLength: 0 };
  if (requestMethod === 'CONNECT' && status < 300) return { ...base, body: 'none', contentLength: 0 };
  const f = framing(c, minor, false);
  return { ...base, body: f.body, contentLength: f.contentLength };
}

/** Validates a header name for rule compilation and rewrites. */
export function isToken(s: string): boolean {
  return TOKEN.test(s);
}

const enum Chunk { SIZE, EXT, SIZE_LF, DATA, DATA_CR, DATA_LF, TRAILER_START, TRAILER, TRAILER_LF, END_LF, DONE }

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

  get done(): boolean { return this.state === Chunk.DONE; }

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
          } else if (this.digits && c === 59) { // ';' chunk extension
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
