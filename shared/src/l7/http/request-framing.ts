// The client's half of one proxied HTTP/1.1 connection: requests framed as they stream in (heads
// parsed, bodies scanned, never buffered whole), each head handed to the connection for a verdict,
// the allowed bytes forwarded in as few writes as possible, the denied ones dropped. Bytes after an
// upgrade request are held until the server answers. Deciding, queueing and ending are the
// connection's (connection.ts).
import { Buffer } from 'node:buffer'; // not the global accessor: proxy/raw-socket.ts says why
import { rewriteHead } from './exchange.ts';
import { HeadCarry } from './carry.ts';
import { BodyScanner, checkRequestStart, findHeadEnd, parseRequestHead, skipEmptyLines, type RequestHead } from './parse.ts';
import type { Pending } from './queue.ts';

export const enum Rq {
  HEAD,
  BODY,
  WAIT_SWITCH,
  TUNNEL,
  CLOSED,
}

/** What the request side asks of its connection. */
export interface RequestHost {
  /** Idle upstream connections are reused: a client's `Connection: close` need not reach the server. */
  readonly reusesUpstream: boolean;
  /** Bytes for the server (allowed requests in order, tunnel bytes). */
  toUpstream(b: Buffer): void;
  /** A complete request head: decide, queue its response slot (the proxy may answer at once). */
  admit(head: RequestHead): Pending;
  /** The server will close the upstream after this request (the client asked for it). */
  upstreamWillClose(): void;
  /** A request was read to its end: the proxy's own answer to it may go out now. */
  requestComplete(): void;
  /** An upgrade request was read: stop reading the client until the server answers. */
  holdForSwitch(): void;
  /** A request the proxy cannot read safely (`e` says why): answer it in order, then close. */
  badRequest(e: unknown): void;
}

export class RequestFramer {
  state = Rq.HEAD;
  /** An allowed request's body is being forwarded (the upstream is busy). */
  forwardingBody = false;
  private readonly body = new BodyScanner();
  /** The body being read belongs to an allowed request. */
  private forwardBody = false;
  /** The slot of the request whose body is being read. Not "the last slot queued": the server may
   *  answer before the body is all sent (a refused upload), and that slot leaves the queue then. */
  private bodyOf?: Pending;
  /** The start of a head not complete yet (carry.ts: appended to in place, searched once). */
  private readonly carry = new HeadCarry();
  /** Where the search for the head's end may resume in the buffer being walked (0: from its start). */
  private resume = 0;
  /** Bytes held while an upgrade waits for the server's answer (the client is not read meanwhile). */
  private held?: Buffer;
  /** Start of the byte range of the chunk being walked that is to be forwarded (-1: none). */
  private fwd = -1;
  /** Every byte the client sent so far ended a complete request: nothing came after the last one
   *  (the connection can close at once after its response without resetting unread bytes). */
  readToEnd = false;
  /** Request heads read so far (the worker's sweep tells a client that takes too long for one by it). */
  heads = 0;

  constructor(private readonly host: RequestHost) {}

  /** Bytes from the client. */
  feed(chunk: Buffer): void {
    this.readToEnd = false;
    if (this.state === Rq.CLOSED) return;
    if (this.state === Rq.TUNNEL) {
      this.host.toUpstream(chunk);
      return;
    }
    let buf = chunk;
    if (this.held) {
      buf = Buffer.concat([this.held, chunk]);
      this.held = undefined;
    } else if (this.carry.pending) {
      this.resume = this.carry.scanned;
      buf = this.carry.join(chunk);
    }
    try {
      this.consume(buf);
    } catch (e) {
      this.state = Rq.CLOSED;
      this.host.badRequest(e);
    }
  }

  /** Ends the wait for a switch: the bytes held since the upgrade request. */
  takeHeld(): Buffer | undefined {
    const held = this.held;
    this.held = undefined;
    return held;
  }

  /** Walks buf; forwards allowed bytes in as few writes as possible (a range is flushed at each cut). */
  private consume(buf: Buffer): void {
    const len = buf.length;
    let i = 0;
    this.fwd = -1;
    while (i < len) {
      switch (this.state) {
        case Rq.HEAD: {
          i = skipEmptyLines(buf, i, len);
          if (i >= len) break;
          // A carried head starts the buffer: only its new bytes are searched (and checked) again.
          const resume = i === 0 ? this.resume : 0;
          this.resume = 0;
          const end = findHeadEnd(buf, i, len, resume);
          if (end < 0) {
            const startOk = (resume > 0 && this.carry.startChecked) || checkRequestStart(buf, i, len, resume > 0 ? resume : i);
            this.cut(buf, i);
            this.carry.keep(buf, i);
            this.carry.startChecked = startOk;
            return;
          }
          if (this.carry.pending) this.carry.clear();
          const head = parseRequestHead(buf, i, end);
          this.heads++;
          const p = this.host.admit(head);
          if (p.x.verdict.allowed) {
            // "Connection: close" is for the client's connection, which still ends after the
            // response; the upstream one is kept for the next client (hop-by-hop, RFC 9110 7.6.1).
            const dropClose = this.host.reusesUpstream && head.closeLine >= 0 && !p.switching && !p.x.verdict.edits.length;
            if (!head.keepAlive && !dropClose) this.host.upstreamWillClose();
            if (head.body !== 'none') this.forwardingBody = true;
            if (p.x.verdict.edits.length) {
              this.cut(buf, i);
              this.host.toUpstream(rewriteHead(buf, i, end, p.x.verdict.edits));
              this.fwd = end;
            } else if (dropClose) {
              // The line goes in place: the head's bytes before it move up over it (the chunk is this
              // connection's own, and none of those bytes were handed on yet), so the head and what
              // follows it stay one range, one write, as the unchanged head would be; no new buffer
              // (a Buffer.concat of two views was ~540 of the ~4,100 bytes a one-request-per-connection
              // request allocated, l7-alloc.ts).
              p.closeDropped = true;
              this.cut(buf, i);
              const gap = head.closeLineEnd - head.closeLine;
              buf.copyWithin(i + gap, i, head.closeLine);
              this.fwd = i + gap;
            } else if (this.fwd < 0) this.fwd = i;
          } else {
            this.cut(buf, i);
          }
          this.forwardBody = p.x.verdict.allowed;
          i = end;
          if (head.body === 'none') {
            this.done(p);
            this.readToEnd = i === len;
          } else {
            this.state = Rq.BODY;
            this.bodyOf = p;
            this.body.start(head.body, head.contentLength);
          }
          if (p.closeAfter && !p.x.verdict.allowed && head.body !== 'none' && head.expectContinue) {
            // The client waits for 100 Continue before sending the body; it will not get one.
            this.state = Rq.CLOSED;
          }
          break;
        }
        case Rq.BODY: {
          if (this.forwardBody && this.fwd < 0) this.fwd = i;
          const end = this.body.scan(buf, i, len);
          if (end < 0) {
            i = len;
            break;
          }
          i = end;
          const p = this.bodyOf!;
          this.bodyOf = undefined;
          this.done(p);
          this.readToEnd = i === len;
          break;
        }
        case Rq.WAIT_SWITCH:
          // Bytes after an upgrade request belong to the new protocol if the server switches, or
          // are the next request if it does not: hold them (the socket is paused) until it answers.
          this.cut(buf, i);
          this.held = this.held ? Buffer.concat([this.held, buf.subarray(i)]) : buf.subarray(i);
          return;
        case Rq.TUNNEL:
          if (this.fwd < 0) this.fwd = i;
          i = len;
          break;
        case Rq.CLOSED:
          this.cut(buf, i);
          return;
      }
    }
    this.cut(buf, len);
  }

  /** Forwards the allowed range of the current client chunk that ends at `at`. */
  private cut(buf: Buffer, at: number): void {
    // The whole chunk (a request in one read): itself, not a new view of it.
    if (this.fwd >= 0 && at > this.fwd)
      this.host.toUpstream(this.fwd === 0 && at === buf.length ? buf : buf.subarray(this.fwd, at));
    this.fwd = -1;
  }

  /** The request of slot `p` has been read to its end. */
  private done(p: Pending): void {
    this.forwardingBody = false;
    if (!p.complete) {
      p.complete = true;
      this.host.requestComplete();
    }
    if (p.switching) {
      this.state = Rq.WAIT_SWITCH;
      this.host.holdForSwitch();
    } else {
      this.state = p.closeAfter ? Rq.CLOSED : Rq.HEAD;
    }
  }
}
