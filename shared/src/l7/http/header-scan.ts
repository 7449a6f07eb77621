// The header lines of a message head, in one pass over the bytes (head.ts's request and response
// heads run through it for every message the proxy carries): the strict rules checked on the way
// (control characters, bare CR or LF, obs-fold, whitespace before a colon, repeated or malformed
// framing headers), the framing headers' values collected, nothing else made into strings. Pure.
import { HttpParseError } from './parse.ts';

/** tchar (RFC 9110 5.6.2) by byte. */
export const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;

const enum H {
  OTHER,
  HOST,
  CONTENT_LENGTH,
  TRANSFER_ENCODING,
  CONNECTION,
  EXPECT,
  UPGRADE,
}

const lower = (b: number) => (b >= 65 && b <= 90 ? b | 32 : b);

export function is(buf: Buffer, at: number, len: number, name: string): boolean {
  if (len !== name.length) return false;
  for (let i = 0; i < len; i++) if (lower(buf[at + i]) !== name.charCodeAt(i)) return false;
  return true;
}

/** Which framing header a name is (by length first: almost every header is none of them). */
function kind(buf: Buffer, at: number, len: number): H {
  switch (len) {
    case 4:
      return is(buf, at, len, 'host') ? H.HOST : H.OTHER;
    case 6:
      return is(buf, at, len, 'expect') ? H.EXPECT : H.OTHER;
    case 7:
      return is(buf, at, len, 'upgrade') ? H.UPGRADE : H.OTHER;
    case 10:
      return is(buf, at, len, 'connection') ? H.CONNECTION : H.OTHER;
    case 14:
      return is(buf, at, len, 'content-length') ? H.CONTENT_LENGTH : H.OTHER;
    case 17:
      return is(buf, at, len, 'transfer-encoding') ? H.TRANSFER_ENCODING : H.OTHER;
    default:
      return H.OTHER;
  }
}

/** What one pass over the header lines collects. One instance, reset per head (scanHeaders is never
 *  re-entered and its callers copy what they keep): a Scan and an offsets array per message were
 *  ~500 of the ~4,100 bytes a one-request-per-connection request allocated (l7-alloc.ts). */
export class Scan {
  te: string | undefined = undefined;
  /** The (last) Content-Length's value when it is 1-15 digits, else -1; its text only when it is not
   *  (for the error): every response with a body has one, and a string per head was a C++ call each. */
  clN = -1;
  cl: string | undefined = undefined;
  clCount = 0;
  /** The Connection value(s) as a string, made only for a second Connection line (joined with a
   *  comma); a single one is read in place (connVs, connVe: connHas), as almost every message has one
   *  line with one token and a string each was a C++ call per request and per response. */
  conn: string | undefined = undefined;
  connVs = -1;
  connVe = -1;
  /** The (last) Connection line: its start and the offset after its CRLF; how many there were. */
  connLine = -1;
  connLineEnd = -1;
  connCount = 0;
  host: string | undefined = undefined;
  hostCount = 0;
  expect: string | undefined = undefined;
  upgrade = false;

  reset(): this {
    this.te = this.cl = this.conn = this.host = this.expect = undefined;
    this.clN = this.connVs = this.connVe = this.connLine = this.connLineEnd = -1;
    this.clCount = this.connCount = this.hostCount = 0;
    this.upgrade = false;
    return this;
  }
}

const SCAN = new Scan();

const join = (a: string | undefined, b: string) => (a === undefined ? b : `${a},${b}`);

/** The last Host value made into a string (by any connection of this process): as head.ts's
 *  lastTarget says, the next head with the same bytes gets the same string. */
let lastHost = '';

/** buf[from, to) as a latin1 string, the same string as `last` when the bytes are its. */
export function text(buf: Buffer, from: number, to: number, last: string): string {
  const n = to - from;
  if (last.length === n) {
    let k = 0;
    while (k < n && buf[from + k] === last.charCodeAt(k)) k++;
    if (k === n) return last;
  }
  return buf.toString('latin1', from, to);
}

/** Header lines from `at` to `end` (the offset of the head's final CRLF): every line ends in CRLF. */
export function scanHeaders(buf: Buffer, at: number, end: number, status: 400 | 502): Scan {
  const s = SCAN.reset();
  let line = at;
  while (line < end) {
    const first = buf[line];
    if (first === 32 || first === 9) throw new HttpParseError(status, 'obsolete header line folding is not accepted');
    let j = line;
    while (TCHAR[buf[j]]) j++;
    if (j === line || buf[j] !== 58 /* : */)
      throw new HttpParseError(
        status,
        `malformed header line ${JSON.stringify(buf.toString('latin1', line, Math.min(line + 60, end)))}`,
      );
    const colon = j++;
    // The value runs to the first control character (tab allowed), which must be the line's CRLF: two
    // compares per byte of the common case (a visible character), this loop being most of a head's parse.
    let c = buf[j];
    while (c > 31 ? c !== 127 : c === 9) c = buf[++j];
    if (c !== 13 || buf[j + 1] !== 10) throw new HttpParseError(status, 'control characters or a bare CR/LF in the message head');
    let vs = colon + 1;
    let ve = j;
    while (vs < ve && (buf[vs] === 32 || buf[vs] === 9)) vs++;
    while (ve > vs && (buf[ve - 1] === 32 || buf[ve - 1] === 9)) ve--;
    switch (kind(buf, line, colon - line)) {
      case H.OTHER:
        break;
      case H.HOST:
        s.host = lastHost = text(buf, vs, ve, lastHost);
        s.hostCount++;
        break;
      case H.CONTENT_LENGTH:
        s.clN = digitsValue(buf, vs, ve);
        s.cl = s.clN < 0 ? buf.toString('latin1', vs, ve) : undefined;
        s.clCount++;
        break;
      case H.TRANSFER_ENCODING:
        s.te = join(s.te, buf.toString('latin1', vs, ve));
        break;
      case H.CONNECTION:
        if (s.connCount) s.conn = join(s.conn ?? buf.toString('latin1', s.connVs, s.connVe), buf.toString('latin1', vs, ve));
        s.connVs = vs;
        s.connVe = ve;
        s.connLine = line;
        s.connLineEnd = j + 2;
        s.connCount++;
        break;
      case H.EXPECT:
        s.expect = join(s.expect, buf.toString('latin1', vs, ve));
        break;
      case H.UPGRADE:
        s.upgrade = true;
        break;
    }
    line = j + 2;
  }
  return s;
}

/** The number in buf[from, to) when it is 1-15 ASCII digits (exact as a double), else -1 (a loop over
 *  the bytes, no string and no regular expression: this runs for every response). */
export function digitsValue(buf: Buffer, from: number, to: number): number {
  if (to <= from || to - from > 15) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const c = buf[i];
    if (c < 48 || c > 57) return -1;
    n = n * 10 + (c - 48);
  }
  return n;
}
