// The two sockets of one proxied connection, apart from HTTP: the client's (diverted by the datapath)
// and the upstream one to its original destination, opened on demand. Flow control between them
// (the client is read only while nothing holds it: a full upstream buffer, a full pipeline, an
// upgrade waiting for the server's answer; the upstream is read only while the client's buffer
// drains) and how they end (each side ended once, the client given the chance to close first).
import type net from 'node:net';
import { shutdownWriteNow } from '../proxy/sockets.ts';

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
function end(s: net.Socket | undefined): void {
  if (s && !s.writableEnded && !s.destroyed) s.end();
}

export class SocketPair {
  upstream?: net.Socket;
  upstreamConnected = false;
  clientEnded = false;
  closed = false;
  private holds = 0;
  private pausedForClient = false;
  /** Waiting for the client to close first (CLIENT_CLOSES_FIRST_MS). */
  private lingerTimer?: NodeJS.Timeout;

  constructor(
    readonly client: net.Socket,
    private readonly connect: () => net.Socket,
    private readonly ev: PairEvents,
  ) {
    client.setNoDelay(true);
    client.on('data', ev.clientData);
    client.on('end', () => {
      this.clientEnded = true;
      if (this.lingerTimer) {
        this.stopLingering();
        end(client);
      }
      ev.clientEnd();
    });
    client.on('error', () => this.destroy());
    client.on('close', () => this.destroy());
    client.on('drain', () => {
      if (this.pausedForClient) {
        this.pausedForClient = false;
        this.upstream?.resume();
      }
    });
  }

  /** The last response was complete and the client was given the chance to close first. */
  get lingering(): boolean {
    return this.lingerTimer !== undefined;
  }

  /** Opens the upstream connection unless it is open. */
  ensureUpstream(): void {
    if (this.upstream) return;
    const u = this.connect();
    this.upstream = u;
    u.setNoDelay(true);
    u.on('connect', () => {
      this.upstreamConnected = true;
    });
    u.on('data', this.ev.upstreamData);
    u.on('end', this.ev.upstreamEnd);
    u.on('error', this.ev.upstreamError);
    u.on('close', this.ev.upstreamEnd);
    u.on('drain', () => this.release(Hold.UPSTREAM_FULL));
  }

  /** The upstream never connected: forget it (its close still comes, as upstreamEnd). */
  dropUpstream(): void {
    this.upstream = undefined;
  }

  toUpstream(b: Buffer): void {
    if (!this.upstream || this.upstream.destroyed) return;
    if (!this.upstream.write(b)) this.hold(Hold.UPSTREAM_FULL);
  }

  toClient(b: Buffer): void {
    if (this.client.destroyed) return;
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

  /** Half-close towards the server (it gets the FIN and still answers). */
  endUpstream(): void {
    end(this.upstream);
  }

  /** Half-close towards the client (in a tunnel it may still send). */
  endClient(): void {
    end(this.client);
  }

  /** Ends both sides once what is queued is written; `letClientClose`: the client can tell the last
   *  response is complete, so it gets CLIENT_CLOSES_FIRST_MS to close first. */
  finish(letClientClose: boolean): void {
    if (this.closed) return;
    end(this.upstream);
    if (letClientClose && !this.clientEnded) {
      this.lingerTimer ??= setTimeout(() => {
        this.lingerTimer = undefined;
        end(this.client);
      }, CLIENT_CLOSES_FIRST_MS);
      return;
    }
    this.stopLingering();
    if (!this.clientEnded && !this.client.writableEnded) shutdownWriteNow(this.client as never);
    end(this.client);
  }

  private stopLingering(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = undefined;
    }
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopLingering();
    this.client.destroy();
    this.upstream?.destroy();
    this.ev.closed();
  }
}
