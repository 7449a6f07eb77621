// What the HTTP proxy connection asks of its owner (a verdict per request) and tells it (one record
// per request and per response), plus the responses the proxy writes itself. Pure.
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks'; // not the global accessor: raw-socket.ts says why
import type { RequestHead } from './parse.ts';
import { cgiName, type HeaderEdit, type RequestView } from './rules.ts';

export interface Verdict {
  allowed: boolean;
  /** Header changes of a matching headerMatches rule (only when allowed). */
  edits: HeaderEdit[];
  /** Opaque to the connection: handed back in the records (which rule, which endpoints). */
  info?: unknown;
}

/** One request and, once it came, its response. */
export interface Exchange {
  method: string;
  /** Path and query as rules saw them. */
  path: string;
  host: string;
  /** "HTTP/1.1" / "HTTP/1.0" */
  protocol: string;
  verdict: Verdict;
  /** performance.now() when the request head was complete. */
  startMs: number;
  /** Status sent to the client (0 until the response head went out). */
  status: number;
  /** Head-to-head latency in ns (0 until the response). */
  latencyNs: number;
  /** Why the proxy answered itself (denied, malformed, upstream unreachable), or, for the record of a
   *  connection it refused (proxy/source-limit.ts: no request was read), conn-limit. */
  localReason?: 'denied' | 'bad-request' | 'upstream-unreachable' | 'conn-limit';
  /** Where the sink wrote the request's record (its batch and offset), so the response's record can
   *  refer to it instead of repeating it (proxy/records.ts); opaque to the connection. */
  recordBatch?: number;
  recordAt?: number;
}

export interface ExchangeSink {
  request(x: Exchange): void;
  response(x: Exchange): void;
}

export type Decide = (head: RequestHead, view: RequestView) => Verdict;

/** What rules see of a request; header names and values only when a rule asks (they cost strings). */
export class HeadView implements RequestView {
  constructor(
    private readonly head: RequestHead,
    readonly path: string,
    readonly host: string,
    readonly altPath: string | undefined,
  ) {}
  get method(): string {
    return this.head.method;
  }
  get names(): string[] {
    return this.head.names;
  }
  get values(): string[] {
    return this.head.values;
  }
}

/** The exchange of a request whose head is complete now (HTTP/1.`minor`). */
export function startExchange(method: string, path: string, host: string, minor: number, verdict: Verdict): Exchange {
  return {
    method,
    path,
    host,
    protocol: minor === 1 ? 'HTTP/1.1' : 'HTTP/1.0',
    verdict,
    startMs: performance.now(),
    status: 0,
    latencyNs: 0,
    localReason: undefined, // one shape for forwarded and answered exchanges (the records read it for each)
    recordBatch: -1, // set here, not later, so every exchange has one shape
    recordAt: 0,
  };
}

/** The response head with `status` went out now. */
export function answered(x: Exchange, status: number): void {
  x.status = status;
  x.latencyNs = Math.round((performance.now() - x.startMs) * 1e6);
}

const DENIED_BODY = 'Access denied';

function canned(status: number, reason: string, body: string, close: boolean, noBody: boolean): Buffer {
  const head = `HTTP/1.1 ${status} ${reason}\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncontent-type: text/plain\r\n${close ? 'connection: close\r\n' : ''}\r\n`;
  return Buffer.from(noBody ? head : head + body, 'latin1');
}

const CACHE = new Map<string, Buffer>();

/** The 403 a denied request gets (no body for HEAD); `close` when the connection ends after it. */
export function deniedResponse(method: string, close: boolean): Buffer {
  const key = `403|${method === 'HEAD'}|${close}`;
  let b = CACHE.get(key);
  if (!b) CACHE.set(key, (b = canned(403, 'Forbidden', DENIED_BODY, close, method === 'HEAD')));
  return b;
}

export function errorResponse(status: 400 | 413 | 431 | 501 | 502 | 503, message: string): Buffer {
  const reasons: Record<number, string> = {
    400: 'Bad Request',
    413: 'Content Too Large',
    431: 'Request Header Fields Too Large',
    501: 'Not Implemented',
    502: 'Bad Gateway',
    503: 'Service Unavailable',
  };
  return canned(status, reasons[status], `${message}\n`, true, false);
}

/** A head with header edits applied (the original names' spelling kept for untouched lines). Every
 *  edit also drops the aliases of its header (rules.ts cgiName), which would carry past the edit the
 *  value it was for: a DELETE or REPLACE leaves none, an ADD only its own. */
export function rewriteHead(buf: Buffer, start: number, end: number, edits: HeaderEdit[]): Buffer {
  let lines = buf.toString('latin1', start, end - 4).split('\r\n');
  const nameOf = (l: string) => l.slice(0, l.indexOf(':')).toLowerCase();
  for (const e of edits) {
    const lname = e.name.toLowerCase();
    const key = cgiName(lname);
    const keepSame = e.op === 'add';
    lines = [
      lines[0],
      ...lines.slice(1).filter((l) => {
        const n = nameOf(l);
        return cgiName(n) !== key || (keepSame && n === lname);
      }),
    ];
    if (e.op === 'add' || e.op === 'replace') lines.push(`${e.name}: ${e.value}`);
  }
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}
