// One proxied HTTP/1.1 connection: a client socket (diverted by the datapath) and one upstream socket
// to the client's original destination, opened at the first allowed request. Requests are parsed as
// they stream in and checked one by one; allowed ones are forwarded byte for byte (bodies streamed,
// never buffered whole), denied ones answered with 403 "Access denied" in their place in the
// response order, so keep-alive and pipelining keep working. Upgrade (WebSocket) and CONNECT become
// a plain byte tunnel once the server agrees. Memory per connection is bounded: one message head,
// the sockets' buffers, and pipelining stops reading at MAX_PIPELINE outstanding requests.
// This module ties the parts together and owns the upstream's life (reuse, replay, ending); the
// framing of each direction is request-framing.ts's and response-framing.ts's, the two sockets
// themselves (flow control, ending) pair.ts's, the order of responses queue.ts's.
import { answered, type Decide, type ExchangeSink, errorResponse } from './exchange.ts';
import { Hold, type PairEvents, SocketPair, type UpstreamReuse } from './pair.ts';
import type { RequestHead } from './parse.ts';
import type { ClientSocket, UpstreamSocket } from './socket.ts';
import { badRequestSlot, type Pending, ResponseQueue, requestSlot } from './queue.ts';
import { RequestFramer, type RequestHost, Rq } from './request-framing.ts';
import { ResponseFramer, type ResponseHost, Rs } from './response-framing.ts';

const MAX_PIPELINE = 128;

export interface ConnectionOptions {
  client: ClientSocket;
  /** Opens the upstream connection to the original destination. */
  connect: () => UpstreamSocket;
  decide: Decide;
  sink: ExchangeSink;
  onClose?: () => void;
  /** The listener gets its SYNs past the kernel's TIME_WAIT check (pair.ts): let the client close first. */
  clientClosesFirst?: boolean;
  /** The client socket has TCP_NODELAY already (inherited from the listener). */
  clientNoDelay?: boolean;
  /** Idle upstream connections to reuse (proxy/upstream-pool.ts): a client's `Connection: close` is
   *  then not passed on, and the upstream is handed back when this connection ends with it idle. */
  reuse?: UpstreamReuse;
}

/** Requests that may be sent again when a reused upstream closed before answering (RFC 9110 9.2.2). */
const REPLAYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** clientWait() of a finished connection whose client has not closed (no head count is negative). */
export const CLIENT_CLOSE_OWED = -2;

/**
 * One proxied connection. It is the host of its two framers and of its socket pair itself (their
 * callbacks are its methods): one object per connection instead of some twenty closures, and one
 * request per connection is a common way to use HTTP.
 */
export class HttpProxyConnection implements RequestHost, ResponseHost, PairEvents {
  private readonly io: SocketPair;
  private readonly req: RequestFramer;
  private readonly res: ResponseFramer;
  private readonly pending = new ResponseQueue();
  private upstreamDone = false;
  /** The server keeps the upstream open after what it answered so far (keep-alive both ways). */
  private upKeep = true;
  readonly reusesUpstream: boolean;

  constructor(private readonly o: ConnectionOptions) {
    this.reusesUpstream = o.reuse !== undefined;
    this.io = new SocketPair(o.client, o, this, o.reuse, o.clientNoDelay);
    this.req = new RequestFramer(this);
    this.res = new ResponseFramer(this);
  }
  /** While the proxy waits on the client with nothing owed to it: a mark that stays the same while the
   *  client makes no progress, so two looks that get the same mark mean it took that long. Owing the
   *  next request head (reading it, or idle between requests): how many heads it sent so far. Its last
   *  response delivered and the proxy's FIN sent, the client not yet closed: CLIENT_CLOSE_OWED (what it
   *  sends then is dropped, so it is no progress). -1 otherwise (a body, a response or a tunnel under
   *  way). */
  clientWait(): number {
    if (this.req.state === Rq.HEAD && this.pending.length === 0) return this.req.heads;
    return this.io.awaitsClientClose ? CLIENT_CLOSE_OWED : -1;
  }

  // ---- the framers' and the pair's callbacks (RequestHost, ResponseHost, PairEvents) ---------------

  clientData(d: Buffer): void {
    this.req.feed(d);
  }

  toUpstream(b: Buffer): void {
    this.io.toUpstream(b);
  }

  toClient(b: Buffer): void {
    this.io.toClient(b);
  }

  upstreamWillClose(): void {
    this.upKeep = false;
  }

  requestComplete(): void {
    this.flushLocals();
  }

  holdForSwitch(): void {
    this.io.hold(Hold.SWITCH);
  }

  nextUpstream(): Pending | undefined {
    return this.pending.nextUpstream();
  }

  unsolicited(): void {
    this.req.state = Rq.CLOSED;
  }

  closed(): void {
    this.o.onClose?.();
  }

  /** A complete request head: decide, queue its response slot, answer now if it is the proxy's turn. */
  admit(head: RequestHead): Pending {
    const p = requestSlot(head, this.o);
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

  badRequest(e: unknown): void {
    // A request the proxy cannot read safely: answer it in order, then close.
    const p = badRequestSlot(e);
    this.pending.push(p);
    this.o.sink.request(p.x);
    this.flushLocals();
  }

  clientEnd(): void {
    // Half-close: in a tunnel, or with responses still owed, the server gets the FIN and answers.
    if (this.req.state === Rq.TUNNEL || this.pending.owesUpstream()) {
      this.upKeep = false;
      this.io.endUpstream();
    }
    this.maybeFinish();
  }

  upstreamData(chunk: Buffer): void {
    if (this.io.closed) return;
    try {
      this.res.feed(chunk);
    } catch {
      this.io.destroy(); // a server we cannot frame: nothing sensible to tell the client mid-stream
    }
  }

  lastResponseEnds(): void {
    // The FIN rides with the response's last bytes, so the proxy closes first for certain (not a
    // client that closes as soon as it has read them). Not when the client is to close first.
    if (!this.o.clientClosesFirst) this.io.holdLastWrite();
  }

  /** The response at the head of the queue is complete. */
  responseComplete(delimitedByClose: boolean): void {
    const p = this.pending.nextUpstream();
    if (!p) return;
    this.pending.remove(p);
    // The connection's last response: it is ended before the record is made, so the FIN follows the
    // response's last byte as closely as it can and the proxy, not a client that closes as soon as it
    // has read the response (wrk, curl), closes first and keeps the TIME_WAIT. (A refused upgrade
    // resumes reading first, as before.)
    const endNow = p.closeAfter && !p.switching;
    if (endNow) this.finishAfterFlush(!delimitedByClose);
    this.o.sink.response(p.x);
    if (p.switching && this.req.state === Rq.WAIT_SWITCH) this.resumeAfterRefusedSwitch();
    if (p.closeAfter && !endNow) this.finishAfterFlush(!delimitedByClose);
    this.flushLocals();
    this.unpausePipeline();
  }

  /** The server agreed to switch protocols for `p`: a byte tunnel from now on. */
  switched(p: Pending, rest: Buffer): void {
    this.pending.remove(p);
    this.o.sink.response(p.x);
    this.res.state = Rs.TUNNEL;
    this.req.state = Rq.TUNNEL;
    if (rest.length) this.io.toClient(rest);
    const held = this.req.takeHeld();
    if (held?.length) this.io.toUpstream(held);
    this.io.release(Hold.SWITCH);
  }

  private resumeAfterRefusedSwitch(): void {
    this.req.state = Rq.HEAD;
    const held = this.req.takeHeld();
    this.io.release(Hold.SWITCH);
    if (held?.length) this.req.feed(held);
  }

  /** Writes the proxy's own responses that are next in order. */
  private flushLocals(): void {
    for (let p = this.pending.takeReadyLocal(); p; p = this.pending.takeReadyLocal()) {
      this.io.toClient(p.local!);
      answered(p.x, Number(p.local!.toString('latin1', 9, 12)));
      if (p.closeAfter) {
        this.finishAfterFlush(p.x.localReason === 'denied'); // closed first, recorded after (above)
        this.o.sink.response(p.x);
        return;
      }
      this.o.sink.response(p.x);
    }
    this.unpausePipeline();
    this.maybeFinish();
  }

  private unpausePipeline(): void {
    if (this.pending.length < MAX_PIPELINE / 2) this.io.release(Hold.PIPELINE);
  }

  upstreamEnd(): void {
    if (this.io.closed || this.upstreamDone) return;
    if (this.replayOnFresh()) return;
    this.upstreamDone = true;
    if (this.res.state === Rs.TUNNEL) {
      this.io.endClient();
      return;
    } // the client may still send (half-close)
    if (this.res.state === Rs.BODY) {
      // A response cut short (its length or chunks say so): so is the client's connection, never
      // ended as if the answer were whole.
      this.io.cut();
      return;
    }
    if (this.res.state === Rs.BODY_CLOSE) this.res.complete();
    // Requests the server will never answer: the connection ends like the server's did.
    this.req.state = Rq.CLOSED;
    this.pending.clear();
    if (this.io.lingering) return; // the last response was complete: the client closes first
    this.finishAfterFlush();
  }

  upstreamError(): void {
    if (this.io.closed) return;
    if (this.replayOnFresh()) return;
    if (this.io.upstreamConnected) {
      // A response under way is cut (a reset); otherwise both sockets are closed.
      if (this.res.state === Rs.BODY || this.res.state === Rs.BODY_CLOSE) this.io.cut();
      else this.io.destroy();
      return;
    }
    this.upstreamDone = true;
    // Never reached the destination: each request still owed an answer gets 503, in order.
    this.req.state = Rq.CLOSED;
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
      !this.req.forwardingBody &&
      this.res.idle &&
      !this.pending.owesUpstream()
    );
  }

  /** Ends the connection once what is queued is written; `letClientClose`: the client can tell the
   *  last response is complete, so it gets the chance to close first (pair.ts). */
  private finishAfterFlush(letClientClose = false): void {
    if (this.io.closed) return;
    this.req.state = Rq.CLOSED;
    // An idle upstream is taken off the pair first and handed to the pool only once the client side
    // is ended: the pool's work is not between the response's last write and the client's FIN.
    const idle = this.upstreamIdle() ? this.io.detachUpstream() : undefined;
    this.io.finish(letClientClose && this.o.clientClosesFirst === true, this.req.readToEnd);
    if (idle) this.io.giveUpstream(idle);
  }

  /** The client is gone and nothing is owed to it: close both sides. */
  private maybeFinish(): void {
    if (!this.io.clientEnded || this.req.state === Rq.TUNNEL || this.pending.length) return;
    if (this.upstreamIdle()) this.io.releaseUpstream();
    this.io.endUpstream();
    this.io.endClient();
  }

  destroy(): void {
    this.io.destroy();
  }
}
