// The two sockets of one proxied connection, apart from HTTP: the client's (diverted by the datapath)
// and the upstream one to its original destination, opened on demand. Flow control between them
// (the client is read only while nothing holds it: a full upstream buffer, a full pipeline, an
// upgrade waiting for the server's answer; the upstream is read only while the client's buffer
// drains) and how they end (each side ended once, the client given the chance to close first).
import { resetOnClose, sendHeld, shutdownWriteNow } from '../proxy/sockets.ts';
import type { ClientSocket, UpstreamSocket } from './socket.ts';
import { holdUpstream, type UpstreamHolder } from './upstream-events.ts';

/**
 * When asked (finish(true)): after the last response of a connection (Connection: close), framed so
 * the client knows it is complete, the proxy lets the client close first for this long. Only for a
 * listener the datapath hands SYNs with bpf_sk_assign at tc (ConnectionOptions.clientClosesFirst):
 * that skips the kernel's TIME_WAIT check, so a TIME_WAIT on the proxy's side would make the kernel
 * drop a new SYN from the same client port for 60 s. Through the socket lookup program (the normal
 * case) the proxy closes first, as nginx does, and the TIME_WAIT stays on the node.
 */
const CLIENT_CLOSES_FIRST_MS = 1000;

/** Why the client is not being read (several can hold at once). */
export const enum Hold {
  UPSTREAM_FULL = 1,
  PIPELINE = 2,
  SWITCH = 4,
}

export interface PairEvents {
  clientData(chunk: Buffer): void;
  /** The client sent its FIN (the pair has stopped lingering, if it was). */
  clientEnd(): void;
  upstreamData(chunk: Buffer): void;
  /** The upstream ended or closed (may come twice: end, then close). */
  upstreamEnd(): void;
  upstreamError(): void;
  /** Both sockets are destroyed. */
  closed(): void;
}

/** Ends a socket's sending side once: a second end() costs an error object with a stack trace. */
function end(s: ClientSocket | undefined): void {
  if (s && !s.writableEnded && !s.destroyed) s.end();
}

/** Idle upstream connections to take one from and give one back to (proxy/upstream-pool.ts). */
export interface UpstreamReuse {
  take(): UpstreamSocket | undefined;
  /** False: not kept (the pair ends it). */
  give(s: UpstreamSocket): boolean;
}

/** Bytes sent on a reused upstream connection kept for a replay (REPLAY_MAX: no replay). */
const REPLAY_MAX = 16 * 1024;
/** `replay` of a reused upstream nothing was sent on yet: the first write makes a one-element array
 *  (an empty one grows to 17 slots on its first push: ~150 bytes per one-request connection). Never
 *  written to. */
const NOTHING_SENT: Buffer[] = Object.freeze([]) as unknown as Buffer[];

/** The pair a client socket belongs to: its listeners are the same five functions for every socket
 *  (no closures per connection), each calling on the socket's pair. */
const PAIR = Symbol('membrane.pair');
type Owned = ClientSocket & { [PAIR]: SocketPair };

function onClientData(this: Owned, d: Buffer): void {
  this[PAIR].clientData(d);
}
function onClientEnd(this: Owned): void {
  this[PAIR].clientEnd();
}
function onClientGone(this: Owned): void {
  this[PAIR].destroy();
}
function onClientDrain(this: Owned): void {
  this[PAIR].clientDrain();
}

export class SocketPair implements UpstreamHolder {
  upstream?: UpstreamSocket;
  upstreamConnected = false;
  /** The upstream came from the pool and has not answered yet: what was sent on it, for a replay
   *  on a fresh connection if it turns out the server had closed it (undefined: no replay possible). */
  private replay?: Buffer[];
  private replayBytes = 0;
  clientEnded = false;
  closed = false;
  private holds = 0;
  private pausedForClient = false;
  /** Waiting for the client to close first (CLIENT_CLOSES_FIRST_MS). */
  private lingerTimer?: NodeJS.Timeout;
  /** Our FIN went out by shutdownWriteNow with every byte written: the client's FIN closes the socket
   *  (no end(), whose second shutdown, write watch and 'finish' would change nothing). */
  private finSent = false;
  /** holdLastWrite(): the next write to the client goes out held (sendHeld) for the FIN to join it. */
  private holdNext = false;
  /** finish() ran: the client's bytes are read and dropped until it closes (awaitsClientClose). */
  private finishing = false;

  constructor(
    readonly client: ClientSocket,
    /** Opens a fresh upstream connection (called as a method of this object). */
    private readonly opener: { connect(): UpstreamSocket },
    private readonly ev: PairEvents,
    private readonly reuse?: UpstreamReuse,
    /** The client socket has TCP_NODELAY already (accepted sockets inherit it from the listener). */
    clientNoDelay = false,
  ) {
    if (!clientNoDelay) client.setNoDelay(true);
    (client as Owned)[PAIR] = this;
    client.on('data', onClientData);
    client.on('end', onClientEnd);
    client.on('error', onClientGone);
    client.on('close', onClientGone);
    client.on('drain', onClientDrain);
  }

  /** The client socket's events (through the module's listeners above). */
  clientData(d: Buffer): void {
    this.ev.clientData(d);
  }

  clientEnd(): void {
    this.clientEnded = true;
    if (this.finSent) {
      this.destroy(); // both FINs are through and every byte was read: nothing is left to end
      return;
    }
    if (this.lingerTimer) {
      this.stopLingering();
      end(this.client);
    }
    this.ev.clientEnd();
  }

  clientDrain(): void {
    if (this.pausedForClient) {
      this.pausedForClient = false;
      this.upstream?.resume();
    }
  }

  /** The last response was complete and the client was given the chance to close first. */
  get lingering(): boolean {
    return this.lingerTimer !== undefined;
  }

  /** finish() ran, the whole response is with the kernel (Node holds none of it) and the client has
   *  not closed: all that is left is to read and drop what it sends until it does. A client can trickle
   *  bytes for ever here, so the worker's sweep bounds it (worker.ts closeSlowHeads; nginx:
   *  lingering_time 30 s); a close() then still lets the kernel deliver what it holds of the response. */
  get awaitsClientClose(): boolean {
    return this.finishing && !this.closed && !this.clientEnded && this.client.writableLength === 0;
  }

  /** Opens the upstream connection unless it is open. */
  ensureUpstream(): void {
    if (this.upstream) return;
    const idle = this.reuse?.take();
    if (idle) {
      this.attach(idle);
      this.upstreamConnected = true;
      this.replay = NOTHING_SENT;
      this.replayBytes = 0;
    } else {
      this.attach(this.opener.connect());
      this.upstream!.setNoDelay(true);
    }
  }

  /** The upstream came from the pool and nothing was heard from it yet, with what was sent on it kept. */
  get replayable(): boolean {
    return this.replay !== undefined;
  }

  /** What was sent on the reused upstream may not be sent twice (e.g. a request with a body). */
  stopReplay(): void {
    this.replay = undefined;
  }

  /** The reused upstream was closed by the server before it answered: the same bytes on a fresh one. */
  replayOnFreshUpstream(): void {
    const bytes = this.replay ?? [];
    this.replay = undefined;
    this.detach()?.destroy();
    this.attach(this.opener.connect());
    this.upstream!.setNoDelay(true);
    for (const b of bytes) this.toUpstream(b);
  }

  /** Hands the idle upstream to the pool (or ends it when the pool does not keep it). */
  releaseUpstream(): void {
    const u = this.detach();
    if (u) this.giveUpstream(u);
  }

  /** Takes the idle upstream off this pair (for giveUpstream once the client side is ended). */
  detachUpstream(): UpstreamSocket | undefined {
    return this.detach();
  }

  /** Hands an idle upstream this pair held to the pool (or ends it when the pool does not keep it). */
  giveUpstream(u: UpstreamSocket): void {
    if (!this.reuse?.give(u)) end(u);
  }

  // The upstream's events (upstream-events.ts), while this pair holds it.
  upstreamData(_s: UpstreamSocket, d: Buffer): void {
    if (this.replay) this.stopReplay();
    this.ev.upstreamData(d);
  }
  upstreamEnd(): void {
    this.ev.upstreamEnd();
  }
  upstreamError(): void {
    this.ev.upstreamError();
  }
  upstreamDrain(): void {
    this.release(Hold.UPSTREAM_FULL);
  }
  upstreamConnect(): void {
    this.upstreamConnected = true;
  }

  private attach(u: UpstreamSocket): void {
    this.upstream = u;
    this.upstreamConnected = false;
    holdUpstream(u, this);
    if (this.pausedForClient) u.pause();
  }

  private detach(): UpstreamSocket | undefined {
    const u = this.upstream;
    if (!u) return undefined;
    this.upstream = undefined;
    this.upstreamConnected = false;
    this.replay = undefined;
    holdUpstream(u, undefined); // its events (an error included) go nowhere from now on
    this.release(Hold.UPSTREAM_FULL);
    return u;
  }

  /** The upstream never connected: forget it (its close still comes, as upstreamEnd), and what it
   *  held up: a client held for its full buffer would otherwise never be read again. */
  dropUpstream(): void {
    this.upstream = undefined;
    this.release(Hold.UPSTREAM_FULL);
  }

  toUpstream(b: Buffer): void {
    if (!this.upstream || this.upstream.destroyed) return;
    if (this.replay) {
      this.replayBytes += b.length;
      if (this.replayBytes > REPLAY_MAX) this.replay = undefined;
      else if (this.replay === NOTHING_SENT) this.replay = [b];
      else this.replay.push(b);
    }
    if (!this.upstream.write(b)) this.hold(Hold.UPSTREAM_FULL);
  }

  toClient(b: Buffer): void {
    if (this.client.destroyed) return;
    if (this.holdNext) {
      this.holdNext = false;
      const n = sendHeld(this.client as never, b);
      if (n === b.length) return; // held in the kernel: the FIN (close or shutdown, finish()) releases it
      if (n > 0) b = b.subarray(n); // the rest after it, through Node (the kernel pushes both then)
    }
    if (!this.client.write(b) && !this.pausedForClient) {
      this.pausedForClient = true;
      this.upstream?.pause();
    }
  }

  hold(why: Hold): void {
    if (this.holds & why) return;
    if (!this.holds) this.client.pause();
    this.holds |= why;
  }

  release(why: Hold): void {
    if (!(this.holds & why)) return;
    this.holds &= ~why;
    if (!this.holds) this.client.resume();
  }

  holding(why: Hold): boolean {
    return (this.holds & why) !== 0;
  }

  /** The connection's last response is about to be written (in one write) and the connection ends
   *  right after it (not lingering): that write's last segment is held for the FIN to go out with it. */
  holdLastWrite(): void {
    if (!this.client.destroyed && !this.client.writableEnded) this.holdNext = true;
  }

  /** Half-close towards the server (it gets the FIN and still answers). */
  endUpstream(): void {
    end(this.upstream);
  }

  /** Half-close towards the client (in a tunnel it may still send). */
  endClient(): void {
    end(this.client);
  }

  /** Ends both sides once what is queued is written; `letClientClose`: the client can tell the last
   *  response is complete, so it gets CLIENT_CLOSES_FIRST_MS to close first. `readToEnd`: nothing
   *  came from the client after its last request, which was read to its end. */
  finish(letClientClose: boolean, readToEnd = false): void {
    if (this.closed) return;
    this.finishing = true;
    // Nothing read from the client from now on goes anywhere (the connection's request side is
    // closed), so nothing may hold its reading: the client's FIN (or reset) must be seen, or a client
    // held for a full upstream buffer (a server that stopped reading, or died, mid-upload) and told
    // FIN would wait for its bytes to be read, and the proxy for its FIN, for ever.
    this.readRest();
    end(this.upstream);
    if (letClientClose && !this.clientEnded) {
      this.lingerTimer ??= setTimeout(() => {
        this.lingerTimer = undefined;
        end(this.client);
      }, CLIENT_CLOSES_FIRST_MS);
      return;
    }
    this.stopLingering();
    if (readToEnd && !this.upstream && !this.client.writableEnded && this.client.writableLength === 0) {
      // Every byte of the response is with the kernel and the client sent nothing after the request
      // it was for: close() now. The kernel sends what is queued, then the FIN, as shutdown() would,
      // and the closed socket takes the client's FIN itself: no shutdown, no read of the client's
      // FIN, no wake-up for it (three system calls per connection). nginx closes the same way
      // (lingering_close on: it lingers only when more bytes came). Bytes the client sends after a
      // `Connection: close` request would get a reset: nginx's answer too, and no client does.
      // A corked response needs no shutdown first: close() puts the FIN on the held segment and
      // pushes it, as shutdown() does, so they still leave in one segment (one system call less per
      // connection; the bench's client TIME_WAITs stay 0). Only a client that sends bytes after its
      // `Connection: close` request, in the moment before this close, gets the reset without the
      // response instead of after it.
      this.destroy();
      return;
    }
    if (!this.clientEnded && !this.client.writableEnded && shutdownWriteNow(this.client as never)) {
      this.finSent = true;
      return;
    }
    end(this.client);
  }

  /** Reads the client whatever held it (its bytes are dropped from now on). */
  private readRest(): void {
    if (!this.holds) return;
    this.holds = 0;
    this.client.resume();
  }

  private stopLingering(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
  }

  /** A response cut short (the server reset, or ended it before its length or last chunk): the
   *  client gets a reset, so no client can take what came for the whole answer (a FIN ends a
   *  close-delimited one), whether or not bytes of its were still unread (a close() alone resets only
   *  then). Both sockets are closed. */
  cut(): void {
    if (!this.closed) resetOnClose(this.client);
    this.destroy();
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopLingering();
    // The client's 'close' would only call this again (closed: nothing to do).
    if (this.client.destroyQuietly) this.client.destroyQuietly();
    else this.client.destroy();
    this.upstream?.destroy();
    this.ev.closed();
  }
}
