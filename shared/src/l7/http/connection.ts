// One proxied HTTP/1.1 connection: a client socket (diverted by the datapath) and one upstream socket
// to the client's original destination, opened at the first allowed request. Requests are parsed as
// they stream in and checked one by one; allowed ones are forwarded byte for byte (bodies streamed,
// never buffered whole), denied ones answered with 403 "Access denied" in their place in the
// response order, so keep-alive and pipelining keep working. Upgrade (WebSocket) and CONNECT become
// a plain byte tunnel once the server agrees. Memory per connection is bounded: one message head,
// the sockets' buffers, and pipelining stops reading at MAX_PIPELINE outstanding requests. The two
// sockets themselves (flow control, ending) are pair.ts's, the order of responses queue.ts's.
import type net from 'node:net';
import {
  BodyScanner,
  checkRequestStart,
  HttpParseError,
  findHeadEnd,
  parseRequestHead,
  parseResponseHead,
  skipEmptyLines,
  type RequestHead,
} from './parse.ts';
import { answered, errorResponse, rewriteHead, type Decide, type ExchangeSink } from './exchange.ts';
import { Hold, SocketPair, type UpstreamReuse } from './pair.ts';
import { badRequestSlot, type Pending, ResponseQueue, requestSlot } from './queue.ts';

const MAX_PIPELINE = 128;
const enum Rq {
  HEAD,
  BODY,
  WAIT_SWITCH,
  TUNNEL,
  CLOSED,
}
const enum Rs {
  HEAD,
  BODY,
  BODY_CLOSE,
  TUNNEL,
}

export interface ConnectionOptions {
  client: net.Socket;
  /** Opens the upstream connection to the original destination. */
  connect: () => net.Socket;
  decide: Decide;
  sink: ExchangeSink;
  onClose?: () => void;
  /** The listener gets its SYNs past the kernel's TIME_WAIT check (pair.ts): let the client close first. */
  clientClosesFirst?: boolean;
  /** Idle upstream connections to reuse (proxy/upstream-pool.ts): a client's `Connection: close` is
   *  then not passed on, and the upstream is handed back when this connection ends with it idle. */
  reuse?: UpstreamReuse;
}

/** Requests that may be sent again when a reused upstream closed before answering (RFC 9110 9.2.2). */
const REPLAYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);
const CLOSE_LINE = Buffer.from('connection: close\r\n', 'latin1');

export class HttpProxyConnection {
  private readonly io: SocketPair;
  private upstreamDone = false;
  private rq = Rq.HEAD;
  private rs = Rs.HEAD;
  private readonly reqBody = new BodyScanner();
  private readonly resBody = new BodyScanner();
  private forwardBody = false;
  private carryIn?: Buffer;
  private carryUp?: Buffer;
  private readonly pending = new ResponseQueue();
  /** Start of the byte range of the chunk being walked that is to be forwarded (-1: none). */
  private fwdIn = -1;
  private fwdOut = -1;
  /** The server keeps the upstream open after what it answered so far (keep-alive both ways). */
  private upKeep = true;
  /** An allowed request's body is being forwarded. */
  private upBody = false;
  /** A response head with "connection: close" added, written together with the bytes after it. */
  private headOut?: Buffer;

  constructor(private readonly o: ConnectionOptions) {
    this.io = new SocketPair(
      o.client,
      o.connect,
      {
        clientData: (d) => this.onClientData(d),
        clientEnd: () => this.onClientEnd(),
        upstreamData: (d) => this.onUpstreamData(d),
        upstreamEnd: () => this.onUpstreamEnd(),
        upstreamError: () => this.onUpstreamError(),
        closed: () => this.o.onClose?.(),
      },
      o.reuse,
    );
  }

  // ---- client -> upstream ------------------------------------------------------------------------

  private onClientData(chunk: Buffer): void {
    if (this.rq === Rq.CLOSED) return;
    if (this.rq === Rq.TUNNEL) {
      this.io.toUpstream(chunk);
      return;
    }
    let buf = chunk;
    if (this.carryIn) {
      buf = Buffer.concat([this.carryIn, chunk]);
      this.carryIn = undefined;
    }
    try {
      this.consumeRequests(buf);
    } catch (e) {
      this.failRequest(e);
    }
  }

  /** Walks buf; forwards allowed bytes in as few writes as possible (a range is flushed at each cut). */
  private consumeRequests(buf: Buffer): void {
    const len = buf.length;
    let i = 0;
    this.fwdIn = -1;
    while (i < len) {
      switch (this.rq) {
        case Rq.HEAD: {
          i = skipEmptyLines(buf, i, len);
          if (i >= len) break;
          const end = findHeadEnd(buf, i, len);
          if (end < 0) {
            checkRequestStart(buf, i, len);
            this.cutIn(buf, i);
            this.carryIn = buf.subarray(i);
            return;
          }
          const head = parseRequestHead(buf, i, end);
          const p = this.admit(head);
          if (p.x.verdict.allowed) {
            // "Connection: close" is for the client's connection, which still ends after the
            // response; the upstream one is kept for the next client (hop-by-hop, RFC 9110 7.6.1).
            const dropClose = this.o.reuse !== undefined && head.closeLine >= 0 && !p.switching && !p.x.verdict.edits.length;
            if (!head.keepAlive && !dropClose) this.upKeep = false;
            if (head.body !== 'none') this.upBody = true;
            if (p.x.verdict.edits.length) {
              this.cutIn(buf, i);
              this.io.toUpstream(rewriteHead(buf, i, end, p.x.verdict.edits));
              this.fwdIn = end;
            } else if (dropClose) {
              // One write (one segment to the server), as the unchanged head would be.
              p.closeDropped = true;
              this.cutIn(buf, i);
              this.io.toUpstream(Buffer.concat([buf.subarray(i, head.closeLine), buf.subarray(head.closeLineEnd, end)]));
              this.fwdIn = end;
            } else if (this.fwdIn < 0) this.fwdIn = i;
          } else {
            this.cutIn(buf, i);
          }
          this.forwardBody = p.x.verdict.allowed;
          i = end;
          if (head.body === 'none') this.requestDone(p);
          else {
            this.rq = Rq.BODY;
            this.reqBody.start(head.body, head.contentLength);
          }
          if (p.closeAfter && !p.x.verdict.allowed && head.body !== 'none' && head.expectContinue) {
            // The client waits for 100 Continue before sending the body; it will not get one.
            this.rq = Rq.CLOSED;
          }
          break;
        }
        case Rq.BODY: {
          if (this.forwardBody && this.fwdIn < 0) this.fwdIn = i;
          const end = this.reqBody.scan(buf, i, len);
          if (end < 0) {
            i = len;
            break;
          }
          i = end;
          this.requestDone(this.pending.last());
          break;
        }
        case Rq.WAIT_SWITCH:
          // Bytes after an upgrade request belong to the new protocol if the server switches, or
          // are the next request if it does not: hold them (the socket is paused) until it answers.
          this.cutIn(buf, i);
          this.carryIn = this.carryIn ? Buffer.concat([this.carryIn, buf.subarray(i)]) : buf.subarray(i);
          return;
        case Rq.TUNNEL:
          if (this.fwdIn < 0) this.fwdIn = i;
          i = len;
          break;
        case Rq.CLOSED:
          this.cutIn(buf, i);
          return;
      }
    }
    this.cutIn(buf, len);
  }

  /** Forwards the allowed range of the current client chunk that ends at `at`. */
  private cutIn(buf: Buffer, at: number): void {
    if (this.fwdIn >= 0 && at > this.fwdIn) this.io.toUpstream(buf.subarray(this.fwdIn, at));
    this.fwdIn = -1;
  }

  private cutOut(buf: Buffer, at: number): void {
    const part = this.fwdOut >= 0 && at > this.fwdOut ? buf.subarray(this.fwdOut, at) : undefined;
    if (this.headOut) {
      this.io.toClient(part ? Buffer.concat([this.headOut, part]) : this.headOut);
      this.headOut = undefined;
    } else if (part) this.io.toClient(part);
    this.fwdOut = -1;
  }

  /** A complete request head: decide, queue its response slot, answer now if it is the proxy's turn. */
  private admit(head: RequestHead): Pending {
    const p = requestSlot(head, this.o.decide);
    if (p.x.verdict.allowed) {
      this.io.ensureUpstream();
      if (!REPLAYABLE.has(head.method) || head.body !== 'none' || p.switching) this.io.stopReplay();
    }
    this.pending.push(p);
    this.o.sink.request(p.x);
    if (this.pending.length >= MAX_PIPELINE) this.io.hold(Hold.PIPELINE);
    this.flushLocals();
    return p;
  }

  private requestDone(p: Pending): void {
    this.upBody = false;
    if (!p.complete) {
      p.complete = true;
      this.flushLocals();
    }
    if (p.switching) {
      this.rq = Rq.WAIT_SWITCH;
      this.io.hold(Hold.SWITCH);
    } else {
      this.rq = p.closeAfter ? Rq.CLOSED : Rq.HEAD;
    }
  }

  private failRequest(e: unknown): void {
    // A request the proxy cannot read safely: answer it in order, then close.
    this.rq = Rq.CLOSED;
    const p = badRequestSlot(e);
    this.pending.push(p);
    this.o.sink.request(p.x);
    this.flushLocals();
  }

  private onClientEnd(): void {
    // Half-close: in a tunnel, or with responses still owed, the server gets the FIN and answers.
    if (this.rq === Rq.TUNNEL || this.pending.owesUpstream()) {
      this.upKeep = false;
      this.io.endUpstream();
    }
    this.maybeFinish();
  }

  // ---- upstream -> client ------------------------------------------------------------------------

  private onUpstreamData(chunk: Buffer): void {
    if (this.io.closed) return;
    if (this.rs === Rs.TUNNEL) {
      this.io.toClient(chunk);
      return;
    }
    let buf = chunk;
    if (this.carryUp) {
      buf = Buffer.concat([this.carryUp, chunk]);
      this.carryUp = undefined;
    }
    try {
      this.consumeResponses(buf);
    } catch {
      this.io.destroy(); // a server we cannot frame: nothing sensible to tell the client mid-stream
    }
  }

  private consumeResponses(buf: Buffer): void {
    const len = buf.length;
    let i = 0;
    this.fwdOut = -1;
    while (i < len) {
      if (this.rs === Rs.TUNNEL || this.rs === Rs.BODY_CLOSE) {
        if (this.fwdOut < 0) this.fwdOut = i;
        i = len;
        break;
      }
      // Locals at the head are written the moment they get there: the head answers this data.
      const p = this.pending.nextUpstream();
      if (!p) {
        if (this.fwdOut < 0) this.fwdOut = i;
        i = len;
        this.rq = Rq.CLOSED;
        break;
      } // unsolicited (e.g. 408): pass on, then close
      switch (this.rs) {
        case Rs.HEAD: {
          const end = findHeadEnd(buf, i, len);
          if (end < 0) {
            this.cutOut(buf, i);
            this.carryUp = buf.subarray(i);
            return;
          }
          const head = parseResponseHead(buf, i, end, p.x.method);
          if (this.fwdOut < 0) this.fwdOut = i;
          i = end;
          if (head.status < 200 && head.status !== 101) break; // interim (100 Continue...): the final one follows
          answered(p.x, head.status);
          if (p.switching && (head.status === 101 || (p.x.method === 'CONNECT' && head.status < 300))) {
            this.cutOut(buf, i);
            this.startTunnel(p, buf.subarray(i));
            return;
          }
          if (head.status === 101) throw new HttpParseError(502, 'switching protocols without an upgrade request');
          if (p.closeDropped && head.keepAlive) {
            // The client asked for close and the connection ends after this response: say so.
            this.headOut = Buffer.concat([buf.subarray(this.fwdOut, i - 2), CLOSE_LINE]);
            this.fwdOut = i - 2;
          }
          if (!head.keepAlive) {
            p.closeAfter = true;
            this.upKeep = false;
          }
          if (head.body === 'length' || head.body === 'chunked') {
            this.rs = Rs.BODY;
            this.resBody.start(head.body, head.contentLength);
          } else if (head.body === 'close') {
            this.rs = Rs.BODY_CLOSE;
            p.closeAfter = true;
            this.upKeep = false;
          } else {
            this.cutOut(buf, i);
            this.responseDone();
          }
          break;
        }
        case Rs.BODY: {
          if (this.fwdOut < 0) this.fwdOut = i;
          const end = this.resBody.scan(buf, i, len);
          if (end < 0) {
            i = len;
            break;
          }
          i = end;
          this.cutOut(buf, i);
          this.responseDone();
          break;
        }
      }
    }
    this.cutOut(buf, len);
  }

  /** The response at the head of the queue is complete. */
  private responseDone(): void {
    const delimitedByClose = this.rs === Rs.BODY_CLOSE;
    this.rs = Rs.HEAD;
    const p = this.pending.nextUpstream();
    if (!p) return;
    this.pending.remove(p);
    this.o.sink.response(p.x);
    if (p.switching && this.rq === Rq.WAIT_SWITCH) this.resumeAfterRefusedSwitch();
    if (p.closeAfter) this.finishAfterFlush(!delimitedByClose);
    this.flushLocals();
    this.unpausePipeline();
  }

  private startTunnel(p: Pending, rest: Buffer): void {
    this.pending.remove(p);
    this.o.sink.response(p.x);
    this.rs = Rs.TUNNEL;
    this.rq = Rq.TUNNEL;
    if (rest.length) this.io.toClient(rest);
    const held = this.carryIn;
    this.carryIn = undefined;
    if (held?.length) this.io.toUpstream(held);
    this.io.release(Hold.SWITCH);
  }

  private resumeAfterRefusedSwitch(): void {
    this.rq = Rq.HEAD;
    const held = this.carryIn;
    this.carryIn = undefined;
    this.io.release(Hold.SWITCH);
    if (held?.length) this.onClientData(held);
  }

  /** Writes the proxy's own responses that are next in order. */
  private flushLocals(): void {
    for (let p = this.pending.takeReadyLocal(); p; p = this.pending.takeReadyLocal()) {
      this.io.toClient(p.local!);
      answered(p.x, Number(p.local!.toString('latin1', 9, 12)));
      this.o.sink.response(p.x);
      if (p.closeAfter) {
        this.finishAfterFlush(p.x.localReason === 'denied');
        return;
      }
    }
    this.unpausePipeline();
    this.maybeFinish();
  }

  private unpausePipeline(): void {
    if (this.pending.length < MAX_PIPELINE / 2) this.io.release(Hold.PIPELINE);
  }

  private onUpstreamEnd(): void {
    if (this.io.closed || this.upstreamDone) return;
    if (this.replayOnFresh()) return;
    this.upstreamDone = true;
    if (this.rs === Rs.TUNNEL) {
      this.io.endClient();
      return;
    } // the client may still send (half-close)
    if (this.rs === Rs.BODY_CLOSE) this.responseDone();
    // Requests the server will never answer: the connection ends like the server's did.
    this.rq = Rq.CLOSED;
    this.pending.clear();
    if (this.io.lingering) return; // the last response was complete: the client closes first
    this.finishAfterFlush();
  }

  private onUpstreamError(): void {
    if (this.io.closed) return;
    if (this.replayOnFresh()) return;
    if (this.io.upstreamConnected) {
      this.io.destroy();
      return;
    }
    this.upstreamDone = true;
    // Never reached the destination: each request still owed an answer gets 503, in order.
    this.rq = Rq.CLOSED;
    this.pending.answerUnanswered(errorResponse(503, 'upstream connect error'), 'upstream-unreachable');
    this.io.dropUpstream();
    this.flushLocals();
    this.finishAfterFlush();
  }

  /** A reused upstream the server had closed before it answered (it closes idle connections when it
   *  likes): its requests, all replayable and kept, go again on a fresh connection. */
  private replayOnFresh(): boolean {
    if (!this.io.replayable || !this.pending.owesUpstream()) return false;
    this.io.replayOnFreshUpstream();
    return true;
  }

  /** Nothing is under way on the upstream and the server keeps it open: it can serve another client. */
  private upstreamIdle(): boolean {
    return (
      this.upKeep &&
      this.io.upstreamConnected &&
      !this.upstreamDone &&
      !this.upBody &&
      this.rs === Rs.HEAD &&
      !this.carryUp &&
      !this.pending.owesUpstream()
    );
  }

  /** Ends the connection once what is queued is written; `letClientClose`: the client can tell the
   *  last response is complete, so it gets the chance to close first (pair.ts). */
  private finishAfterFlush(letClientClose = false): void {
    if (this.io.closed) return;
    this.rq = Rq.CLOSED;
    if (this.upstreamIdle()) this.io.releaseUpstream();
    this.io.finish(letClientClose && this.o.clientClosesFirst === true);
  }

  /** The client is gone and nothing is owed to it: close both sides. */
  private maybeFinish(): void {
    if (!this.io.clientEnded || this.rq === Rq.TUNNEL || this.pending.length) return;
    if (this.upstreamIdle()) this.io.releaseUpstream();
    this.io.endUpstream();
    this.io.endClient();
  }

  destroy(): void {
    this.io.destroy();
  }
}
