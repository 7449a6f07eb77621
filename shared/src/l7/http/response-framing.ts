// The server's half of one proxied HTTP/1.1 connection: responses framed as they stream in (heads
// parsed, bodies scanned, never buffered whole) and passed on byte for byte, each one matched to the
// oldest request the server owes an answer. A client's dropped `Connection: close` (upstream reuse)
// is put back into the head of its response. Queueing and ending are the connection's (connection.ts).
import { Buffer } from 'node:buffer'; // not the global accessor: proxy/raw-socket.ts says why
import { answered } from './exchange.ts';
import { HeadCarry } from './carry.ts';
import { BodyScanner, HttpParseError, findHeadEnd, parseResponseHead, type ResponseHead } from './parse.ts';
import type { Pending } from './queue.ts';
import { switchProblem } from './switch.ts';

export const enum Rs {
  HEAD,
  BODY,
  BODY_CLOSE,
  TUNNEL,
}

const CLOSE_LINE = Buffer.from('connection: close\r\n', 'latin1');

/** What the response side asks of its connection. */
export interface ResponseHost {
  /** Bytes for the client. */
  toClient(b: Buffer): void;
  /** The slot the next response answers (undefined: the server owes nothing). */
  nextUpstream(): Pending | undefined;
  /** A response nobody asked for (e.g. 408): it is passed on, then the connection closes. */
  unsolicited(): void;
  /** The server closes the upstream after this response. */
  upstreamWillClose(): void;
  /** The server agreed to switch protocols for `p`: `rest` are the tunnel's first bytes. */
  switched(p: Pending, rest: Buffer): void;
  /** The response at the head of the queue, after which the connection ends, ends within the bytes
   *  written next (its completion follows at once). */
  lastResponseEnds(): void;
  /** The response at the head of the queue is complete (`delimitedByClose`: by the server's FIN). */
  responseComplete(delimitedByClose: boolean): void;
}

export class ResponseFramer {
  state = Rs.HEAD;
  private readonly body = new BodyScanner();
  /** The start of a head not complete yet (carry.ts: appended to in place, searched once). */
  private readonly carry = new HeadCarry();
  /** Where the search for the head's end may resume in the buffer being walked (0: from its start). */
  private resume = 0;
  /** Start of the byte range of the chunk being walked that is to be forwarded (-1: none). */
  private fwd = -1;
  /** Where "connection: close" goes into the chunk being walked (the head's final CRLF; -1: nowhere):
   *  the next cut writes the head with it and the bytes after it as one new buffer (one request per
   *  connection: every response), not a new head and then a second copy joining it to the rest. */
  private closeAt = -1;
  /** The head being handled, filled in by parseResponseHead (read only before the next one). */
  private readonly head: ResponseHead = { status: 0, minor: 1, keepAlive: true, headLength: 0, body: 'none', contentLength: 0 };

  constructor(private readonly host: ResponseHost) {}

  /** Between responses, with no part of the next one read. */
  get idle(): boolean {
    return this.state === Rs.HEAD && !this.carry.pending;
  }

  /** Bytes from the server; throws when they cannot be framed. */
  feed(chunk: Buffer): void {
    if (this.state === Rs.TUNNEL) {
      this.host.toClient(chunk);
      return;
    }
    let buf = chunk;
    if (this.carry.pending) {
      this.resume = this.carry.scanned;
      buf = this.carry.join(chunk);
    }
    this.consume(buf);
  }

  /** The response being read is complete (also when the server's FIN ends a close-delimited body). */
  complete(): void {
    const delimitedByClose = this.state === Rs.BODY_CLOSE;
    this.state = Rs.HEAD;
    this.host.responseComplete(delimitedByClose);
  }

  private consume(buf: Buffer): void {
    const len = buf.length;
    let i = 0;
    this.fwd = -1;
    while (i < len) {
      if (this.state === Rs.TUNNEL || this.state === Rs.BODY_CLOSE) {
        if (this.fwd < 0) this.fwd = i;
        i = len;
        break;
      }
      // Locals at the head are written the moment they get there: the head answers this data.
      const p = this.host.nextUpstream();
      if (!p) {
        if (this.fwd < 0) this.fwd = i;
        i = len;
        this.host.unsolicited();
        break;
      } // unsolicited (e.g. 408): pass on, then close
      switch (this.state) {
        case Rs.HEAD: {
          const resume = i === 0 ? this.resume : 0; // a carried head starts the buffer
          this.resume = 0;
          const end = findHeadEnd(buf, i, len, resume);
          if (end < 0) {
            this.cut(buf, i);
            this.carry.keep(buf, i);
            return;
          }
          if (this.carry.pending) this.carry.clear();
          const head = parseResponseHead(buf, i, end, p.x.method, this.head);
          if (this.fwd < 0) this.fwd = i;
          const headAt = i;
          i = end;
          if (head.status < 200 && head.status !== 101) break; // interim (100 Continue...): the final one follows
          if (head.status === 101 && p.switching && p.offer) {
            // Only a 101 that switches to what was offered makes a tunnel (switch.ts says why); any
            // other ends the connection, as a response the proxy cannot frame does.
            const problem = switchProblem(p.offer, buf.toString('latin1', headAt, end - 4));
            if (problem) throw new HttpParseError(502, problem);
          }
          answered(p.x, head.status);
          if (p.switching && ((head.status === 101 && p.offer) || (p.x.method === 'CONNECT' && head.status < 300))) {
            this.cut(buf, i);
            this.host.switched(p, buf.subarray(i));
            return;
          }
          if (head.status === 101) throw new HttpParseError(502, 'switching protocols without an upgrade request');
          if (p.closeDropped && head.keepAlive) {
            // The client asked for close and the connection ends after this response: say so.
            this.closeAt = i - 2;
          }
          if (!head.keepAlive) {
            p.closeAfter = true;
            this.host.upstreamWillClose();
          }
          if (head.body === 'length' || head.body === 'chunked') {
            this.state = Rs.BODY;
            this.body.start(head.body, head.contentLength);
          } else if (head.body === 'close') {
            this.state = Rs.BODY_CLOSE;
            p.closeAfter = true;
            this.host.upstreamWillClose();
          } else {
            if (p.closeAfter) this.host.lastResponseEnds();
            this.cut(buf, i);
            this.complete();
          }
          break;
        }
        case Rs.BODY: {
          if (this.fwd < 0) this.fwd = i;
          const end = this.body.scan(buf, i, len);
          if (end < 0) {
            i = len;
            break;
          }
          i = end;
          if (p.closeAfter) this.host.lastResponseEnds();
          this.cut(buf, i);
          this.complete();
          break;
        }
      }
    }
    this.cut(buf, len);
  }

  /** Writes the range of the current server chunk that ends at `at` (after a rewritten head). */
  private cut(buf: Buffer, at: number): void {
    // The whole chunk (a keep-alive response in one read): itself, not a new view of it.
    const from = this.fwd;
    this.fwd = -1;
    if (from < 0 || at <= from) return;
    const closeAt = this.closeAt;
    if (closeAt >= 0) {
      // The head is in this range (cut only ever runs past it): forwarded with the close line in it.
      this.closeAt = -1;
      const out = Buffer.allocUnsafe(at - from + CLOSE_LINE.length);
      if (from === 0 && at === buf.length) {
        // The whole chunk (a response in one read, the usual case): copied whole, its tail moved up
        // in the copy, the line put in the gap. Buffer#copy of a part makes a view of it per call
        // (~190 of the ~3,100 bytes a one-request-per-connection request allocated, l7-alloc.ts).
        out.set(buf, 0);
        out.copyWithin(closeAt + CLOSE_LINE.length, closeAt, at);
        out.set(CLOSE_LINE, closeAt);
      } else {
        buf.copy(out, 0, from, closeAt);
        CLOSE_LINE.copy(out, closeAt - from);
        buf.copy(out, closeAt - from + CLOSE_LINE.length, closeAt, at);
      }
      this.host.toClient(out);
    } else this.host.toClient(from === 0 && at === buf.length ? buf : buf.subarray(from, at));
  }
}
