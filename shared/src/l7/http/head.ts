// Request and response heads, parsed in one pass over the bytes (this runs for every request and
// response the proxy carries, so: no regular expressions, no string per line, no array per header).
// The strict rules (see parse.ts) are checked on the way: control characters, bare CR or LF, obs-fold,
// whitespace before a colon, repeated or malformed framing headers. Strings are made only for what is
// needed: method, target and the framing headers at once; the other headers' names and values when
// something asks for them (rules that test headers, header rewrites), from the bytes of the chunk
// being processed. The pass over the header lines is header-scan.ts's; the start line, the framing
// and the head objects are here. Pure.
import { absoluteForm, HttpParseError, type RequestHead, type ResponseHead } from './parse.ts';
import { is, type Scan, scanHeaders, TCHAR, text } from './header-scan.ts';

/** The last request target made into a string (by any connection of this process): the next request
 *  with the same bytes, as keep-alive clients and one client's new connections mostly send, gets the
 *  same string instead of a new one (a call into Node's C++ each), and every later comparison of it
 *  (the decision's and the records' "same as last time") is one of identity. */
let lastTarget = '';

function badRequestLine(buf: Buffer, start: number, end: number): HttpParseError {
  return new HttpParseError(
    400,
    `malformed request line ${JSON.stringify(buf.toString('latin1', start, Math.min(start + 80, end)))}`,
  );
}

function badStatusLine(buf: Buffer, start: number, end: number): HttpParseError {
  return new HttpParseError(
    502,
    `malformed status line ${JSON.stringify(buf.toString('latin1', start, Math.min(start + 80, end)))}`,
  );
}

/** A keep-alive decision from Connection tokens without building a list (the common case is one token). */
function hasToken(v: string | undefined, token: string): boolean {
  if (v === undefined) return false;
  // One token (scanHeaders trimmed it): compared in place, no list and no lower-cased copy (this runs
  // for every response: "keep-alive" against "close" took a sixth of the response head's parse).
  if (v.indexOf(',') < 0) return sameLower(v, token);
  for (const t of v.split(',')) if (t.trim().toLowerCase() === token) return true;
  return false;
}

/** The message's Connection header(s) name `token` (lower case): one line is read in place, a value
 *  with a list in it or several lines as a string (Scan.conn). */
function connHas(buf: Buffer, s: Scan, token: string): boolean {
  if (!s.connCount) return false;
  if (s.conn !== undefined) return hasToken(s.conn, token);
  const vs = s.connVs;
  const ve = s.connVe;
  for (let k = vs; k < ve; k++) if (buf[k] === 44 /* , */) return hasToken(buf.toString('latin1', vs, ve), token);
  return is(buf, vs, ve - vs, token); // one token, trimmed (scanHeaders), compared ignoring ASCII case
}

/** `v` equals the lower-case `token` ignoring ASCII case. */
function sameLower(v: string, token: string): boolean {
  if (v.length !== token.length) return false;
  for (let i = 0; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if ((c >= 65 && c <= 90 ? c | 32 : c) !== token.charCodeAt(i)) return false;
  }
  return true;
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

interface Framing {
  body: 'none' | 'length' | 'chunked' | 'close';
  contentLength: number;
}

function framingError(request: boolean, status: 400 | 501, msg: string): HttpParseError {
  return new HttpParseError(request ? status : 502, msg);
}

const NO_BODY: Framing = { body: 'none', contentLength: 0 };
const CHUNKED: Framing = { body: 'chunked', contentLength: -1 };
const UNTIL_CLOSE: Framing = { body: 'close', contentLength: -1 };
/** Reused: framing()'s callers copy its fields at once (an object per response with a body, else). */
const LENGTH: Framing = { body: 'length', contentLength: 0 };

/** Transfer-Encoding and Content-Length -> framing; `request` applies the stricter request rules.
 *  (No closures in the per-message functions: each would cost an allocation per message.) */
function framing(s: Scan, minor: number, request: boolean): Framing {
  if (s.clCount > 1) throw framingError(request, 400, 'more than one Content-Length header');
  if (s.te !== undefined) {
    const te = tokens(s.te);
    if (s.clCount) throw framingError(request, 400, 'both Transfer-Encoding and Content-Length');
    if (request && minor === 0) throw framingError(request, 400, 'Transfer-Encoding in an HTTP/1.0 request');
    const last = te[te.length - 1];
    if (last === 'chunked') {
      if (te.indexOf('chunked') !== te.length - 1) throw framingError(request, 400, 'chunked applied more than once');
      return CHUNKED;
    }
    // A request body must be delimited; a response without a final chunked runs until close.
    if (request) throw framingError(request, 501, `transfer coding "${last ?? ''}" without a final chunked is not accepted`);
    return UNTIL_CLOSE;
  }
  if (s.clCount) {
    const n = s.clN;
    if (n < 0) throw framingError(request, 400, `Content-Length ${JSON.stringify((s.cl ?? '').slice(0, 30))} is not a number`);
    if (n === 0) return NO_BODY;
    LENGTH.contentLength = n;
    return LENGTH;
  }
  return request ? NO_BODY : UNTIL_CLOSE;
}

const GET = [71, 69, 84, 32]; // "GET "

/** The header lines in buf[at, end) (validated by scanHeaders: each "name:value" ends in CRLF), as
 *  lower-cased names or as values without surrounding whitespace. Only rules that test headers and
 *  header rewrites ask, so the lines are found again then rather than their offsets kept per request. */
function headerTexts(buf: Buffer, at: number, end: number, names: boolean): string[] {
  const out: string[] = [];
  let line = at;
  while (line < end) {
    let colon = line;
    while (buf[colon] !== 58 /* : */) colon++;
    let j = colon + 1;
    while (buf[j] !== 13) j++;
    if (names) out.push(buf.toString('latin1', line, colon).toLowerCase());
    else {
      let vs = colon + 1;
      let ve = j;
      while (vs < ve && (buf[vs] === 32 || buf[vs] === 9)) vs++;
      while (ve > vs && (buf[ve - 1] === 32 || buf[ve - 1] === 9)) ve--;
      out.push(buf.toString('latin1', vs, ve));
    }
    line = j + 2;
  }
  return out;
}

class ParsedRequest implements RequestHead {
  private n?: string[];
  private v?: string[];

  constructor(
    private readonly buf: Buffer,
    /** The header lines: buf[hs, he). */
    private readonly hs: number,
    private readonly he: number,
    readonly method: string,
    readonly target: string,
    readonly minor: 0 | 1,
    readonly body: 'none' | 'length' | 'chunked',
    readonly contentLength: number,
    readonly host: string | undefined,
    readonly keepAlive: boolean,
    readonly upgrade: boolean,
    readonly expectContinue: boolean,
    readonly headLength: number,
    readonly closeLine: number,
    readonly closeLineEnd: number,
  ) {}

  /** Built on first use, from the chunk the head came in: ask while that chunk is being processed. */
  get names(): string[] {
    return (this.n ??= headerTexts(this.buf, this.hs, this.he, true));
  }

  get values(): string[] {
    return (this.v ??= headerTexts(this.buf, this.hs, this.he, false));
  }
}

/** The request head in buf[start, headEnd) (headEnd from findHeadEnd: after the CRLFCRLF). */
export function parseRequestHead(buf: Buffer, start: number, headEnd: number): RequestHead {
  const end = headEnd - 2; // the final CRLF: every line before it ends in its own CRLF
  let i = start;
  let method: string;
  if (buf[i] === GET[0] && buf[i + 1] === GET[1] && buf[i + 2] === GET[2] && buf[i + 3] === GET[3]) {
    method = 'GET';
    i += 3;
  } else {
    while (TCHAR[buf[i]]) i++;
    if (i === start) throw badRequestLine(buf, start, end);
    method = buf.toString('latin1', start, i);
  }
  if (buf[i] !== 32) throw badRequestLine(buf, start, end);
  const ts = ++i;
  while (i < end && buf[i] > 32 && buf[i] !== 127 && buf[i] !== 35) i++;
  // A "#" is never sent (RFC 9112 3.2: a fragment stays with the client), and nginx ends the path
  // there: "/admin#/../public/x" is its /admin, while dot segments make it /public/x to a rule.
  if (buf[i] === 35) throw new HttpParseError(400, 'a "#" in the request-target (a fragment is never sent)');
  if (i === ts || buf[i] !== 32) throw badRequestLine(buf, start, end);
  const target = (lastTarget = text(buf, ts, i, lastTarget));
  i++;
  // "HTTP/1." then 0 or 1, then CRLF
  if (!isVersion(buf, i) || buf[i + 8] !== 13 || buf[i + 9] !== 10) throw badRequestLine(buf, start, end);
  const minor = buf[i + 7] === 49 ? 1 : 0;
  const s = scanHeaders(buf, i + 10, end, 400);
  if (s.hostCount > 1) throw new HttpParseError(400, 'more than one Host header');
  if (minor === 1 && s.host === undefined) throw new HttpParseError(400, 'an HTTP/1.1 request needs a Host header');
  if (s.host !== undefined && s.host !== lastGoodHost) checkHost(s.host);
  if (buf[ts] !== 47 /* / */ && s.host !== undefined) checkAuthority(target, s.host);
  // Request framing never runs until close (framing() refuses that for requests).
  const f = framing(s, minor, true) as { body: RequestHead['body']; contentLength: number };
  const closeOnly = minor === 1 && s.connCount === 1 && is(buf, s.connVs, s.connVe - s.connVs, 'close');
  return new ParsedRequest(
    buf,
    i + 10,
    end,
    method,
    target,
    minor,
    f.body,
    f.contentLength,
    s.host,
    minor === 1 ? !connHas(buf, s, 'close') : connHas(buf, s, 'keep-alive'),
    s.upgrade && connHas(buf, s, 'upgrade'),
    s.expect !== undefined && tokens(s.expect).includes('100-continue'),
    headEnd - start,
    closeOnly ? s.connLine : -1,
    closeOnly ? s.connLineEnd : -1,
  );
}

/** A Host value as RFC 9110 7.2 has it: uri-host [":" port], where a host is an IP literal in
 *  brackets or a reg-name (unreserved, pct-encoded, sub-delims). A host rule matches the value as
 *  text, while a server or an application takes it apart as a URL authority: "evil.test#.partner.example"
 *  matches ".*\.partner\.example" and is evil.test to `new URL`. Anything else is refused. */
const HOST = /^(?:\[[0-9A-Za-z:.%~_-]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?$/;
/** The last Host value that passed (head-scan hands out the same string for the same bytes). */
let lastGoodHost = '';

function checkHost(host: string): void {
  if (!HOST.test(host)) throw new HttpParseError(400, `Host ${JSON.stringify(host)} is not a host and port`);
  lastGoodHost = host;
}

/** An absolute-form target names its host, and rules match that one (servers should too, RFC 9112
 *  3.2.2), but Node's req.headers.host and the apps that route by it see the Host header: one that
 *  says otherwise would have a request matched as one host and served as another. A client must send
 *  them identical (ibid.), so anything else is refused. */
function checkAuthority(target: string, host: string): void {
  const abs = absoluteForm(target);
  if (abs && abs.authority.toLowerCase() !== host.toLowerCase())
    throw new HttpParseError(
      400,
      `Host ${JSON.stringify(host)} is not the request-target's authority ${JSON.stringify(abs.authority)}`,
    );
}

/** "HTTP/1.0" or "HTTP/1.1" at buf[i..i+8) (the version of a request line's end and a status line's start). */
function isVersion(buf: Buffer, i: number): boolean {
  return (
    buf[i] === 72 && // H
    buf[i + 1] === 84 && // T
    buf[i + 2] === 84 && // T
    buf[i + 3] === 80 && // P
    buf[i + 4] === 47 && // /
    buf[i + 5] === 49 && // 1
    buf[i + 6] === 46 && // .
    (buf[i + 7] === 48 || buf[i + 7] === 49)
  );
}

/** A response head; the request it answers decides whether a body can follow (RFC 9112 6.3). `out`,
 *  when given, is filled in and returned instead of a new object (the framer's one, reused: this runs
 *  for every response). */
export function parseResponseHead(
  buf: Buffer,
  start: number,
  headEnd: number,
  requestMethod: string,
  out?: ResponseHead,
): ResponseHead {
  const end = headEnd - 2;
  const i = start;
  // "HTTP/1.x DDD" then " reason" or nothing, then CRLF
  if (!isVersion(buf, i) || buf[i + 8] !== 32) throw badStatusLine(buf, start, end);
  const d0 = buf[i + 9] - 48,
    d1 = buf[i + 10] - 48,
    d2 = buf[i + 11] - 48;
  if (!(d0 >= 1 && d0 <= 9 && d1 >= 0 && d1 <= 9 && d2 >= 0 && d2 <= 9)) throw badStatusLine(buf, start, end);
  let j = i + 12;
  if (buf[j] === 32) {
    j++;
    while (buf[j] !== 13) {
      const c = buf[j];
      if ((c < 32 && c !== 9) || c === 127) throw badStatusLine(buf, start, end);
      j++;
    }
  }
  if (buf[j] !== 13 || buf[j + 1] !== 10) throw badStatusLine(buf, start, end);
  const minor = buf[i + 7] === 49 ? 1 : 0;
  const status = d0 * 100 + d1 * 10 + d2;
  const s = scanHeaders(buf, j + 2, end, 502);
  const keepAlive = minor === 1 ? !connHas(buf, s, 'close') : connHas(buf, s, 'keep-alive');
  const noBody =
    requestMethod === 'HEAD' || status < 200 || status === 204 || status === 304 || (requestMethod === 'CONNECT' && status < 300);
  const f = noBody ? NO_BODY : framing(s, minor, false);
  if (!out)
    return {
      status,
      minor: minor as 0 | 1,
      keepAlive,
      headLength: headEnd - start,
      body: f.body,
      contentLength: f.contentLength,
    };
  out.status = status;
  out.minor = minor as 0 | 1;
  out.keepAlive = keepAlive;
  out.headLength = headEnd - start;
  out.body = f.body;
  out.contentLength = f.contentLength;
  return out;
}
