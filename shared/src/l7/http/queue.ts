// The responses one connection owes its client, in request order (HTTP/1.1 answers in order, pipelined
// or not). Each slot is answered by the upstream or by the proxy itself (a 403, an error): the proxy's
// own answers wait in their place until every response before them went out. Pure.
import { type Decide, deniedResponse, type Exchange, errorResponse, HeadView, startExchange } from './exchange.ts';
import { HttpParseError, type RequestHead } from './parse.ts';
import { normalizeTarget } from './rules.ts';
import { DROP_H2C, offersH2c, type SwitchOffer, switchOffer } from './switch.ts';

export interface Pending {
  x: Exchange;
  /** Answered by the proxy (403 or error), not by the upstream. */
  local?: Buffer;
  /** Upgrade or CONNECT that was forwarded: a 101 / 2xx turns the connection into a tunnel. */
  switching: boolean;
  /** An upgrade's offer, which its 101 must meet (switch.ts); undefined for any other request. */
  offer: SwitchOffer | undefined;
  closeAfter: boolean;
  /** The client's "Connection: close" was not passed on (upstream reuse): its response gets one. */
  closeDropped: boolean;
  /** The request (its body included) has been read; a local answer waits for this, so a client
   *  still sending a denied body is not answered mid-send (HTTP clients then drop the connection). */
  complete: boolean;
}

/** The slot of a complete request head: the verdict (`o.decide`, called as a method), and the proxy's
 *  own answer when it is denied. */
export function requestSlot(head: RequestHead, o: { decide: Decide }): Pending {
  const { path, host, altPath } = normalizeTarget(head.target, head.host);
  let verdict = o.decide(head, new HeadView(head, path, host, altPath));
  let offer: SwitchOffer | undefined;
  if (head.upgrade && verdict.allowed) {
    offer = switchOffer(head);
    if (offersH2c(offer)) {
      verdict = { ...verdict, edits: [...verdict.edits, ...DROP_H2C] }; // verdicts are shared: a new one
      offer = undefined;
    }
  }
  const x = startExchange(head.method, path, host, head.minor, verdict);
  const switching = verdict.allowed && (offer !== undefined || head.method === 'CONNECT');
  let closeAfter = !head.keepAlive;
  let local: Buffer | undefined;
  if (!verdict.allowed) {
    // A client waiting for 100 Continue gets none: the connection ends after the 403.
    closeAfter ||= head.expectContinue && head.body !== 'none';
    local = deniedResponse(head.method, closeAfter);
    x.localReason = 'denied';
  }
  // Every field in the literal (closeDropped too): one shape for every slot, no property added later.
  return {
    x,
    local,
    switching,
    offer,
    closeAfter,
    closeDropped: false,
    complete: head.body === 'none' || (closeAfter && head.expectContinue),
  };
}

/** The slot of a request the proxy cannot read safely: answered with the error, then the connection ends. */
export function badRequestSlot(e: unknown): Pending {
  const err = e instanceof HttpParseError ? e : new HttpParseError(400, 'malformed request');
  const x = startExchange('', '', '', 1, { allowed: false, edits: [] });
  x.localReason = 'bad-request';
  const local = errorResponse(err.status === 502 ? 400 : err.status, err.message);
  return { x, local, switching: false, offer: undefined, closeAfter: true, closeDropped: false, complete: true };
}

/** The queue of a connection that has had no request yet: the first push makes a one-slot array (an
 *  empty one grows to 17 slots on its first push: ~150 bytes per one-request connection, l7-alloc.ts).
 *  Never written to. */
const NO_REQUEST_YET: Pending[] = Object.freeze([]) as unknown as Pending[];

export class ResponseQueue {
  private q: Pending[] = NO_REQUEST_YET;

  get length(): number {
    return this.q.length;
  }

  push(p: Pending): void {
    if (this.q === NO_REQUEST_YET) this.q = [p];
    else this.q.push(p);
  }

  /** The oldest slot the upstream answers (undefined: the upstream owes nothing). */
  nextUpstream(): Pending | undefined {
    const q = this.q;
    return q[0]?.local ? q.find((p) => !p.local) : q[0];
  }

  remove(p: Pending): void {
    // Almost always the head (responses come in order): shift, not splice.
    if (this.q[0] === p) {
      this.q.shift();
      return;
    }
    const i = this.q.indexOf(p);
    if (i >= 0) this.q.splice(i, 1);
  }

  /** The proxy's own answer at the head once its request has been read (undefined: none is due). */
  takeReadyLocal(): Pending | undefined {
    const p = this.q[0];
    if (!p?.local || !p.complete) return undefined;
    this.q.shift();
    return p;
  }

  owesUpstream(): boolean {
    return this.q.some((p) => !p.local);
  }

  clear(): void {
    if (this.q.length) this.q.length = 0;
  }

  /** Every slot the upstream still owed is answered with `local` instead, and the connection ends after. */
  answerUnanswered(local: Buffer, reason: Exchange['localReason']): void {
    for (const p of this.q) {
      if (p.local) continue;
      p.local = local;
      p.x.localReason = reason;
      p.closeAfter = true;
      p.complete = true;
    }
  }
}
