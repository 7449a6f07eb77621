// The proxy worker's connections on its own epoll loop (epoll-loop.ts; the default,
// io.ts), with RawSocket's face (raw-socket.ts: the events, write()'s backpressure answer, pause and
// resume, half-close, the counters), so SocketPair (http/pair.ts), the worker and the upstream pool use
// either unchanged. Its system calls go through koffi to libc: one read per readable event into one
// shared buffer, a send per write (queued on EAGAIN until the socket is writable again).
import { Buffer } from 'node:buffer'; // not the global accessor: raw-socket.ts says why
import koffi from 'koffi';
import {
  EPOLLERR,
  EPOLLHUP,
  EPOLLIN,
  EPOLLOUT,
  type EpollHandler,
  modify,
  park,
  unwatch,
  watch,
  watchAgain,
} from './epoll-loop.ts';
import { sockaddr, sockaddrAddress } from './epoll-addr.ts';
import {
  EAGAIN,
  EINPROGRESS,
  errnoName,
  ETIMEDOUT,
  libc,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SO_ERROR,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  SOL_TCP,
  TCP_NODELAY,
} from './libc.ts';
import { ProxySocketBase } from './socket-base.ts';

const { read, send, shutdown, close, socket, connect, setsockopt, getsockopt } = libc();

/** send(): never block, no SIGPIPE (an error comes back as -1). */
const MSG_FLAGS = MSG_DONTWAIT | MSG_NOSIGNAL;
/** write() answers false (wait for 'drain') once this much is queued: RawSocket's answer. */
const HIGH_WATER = 16 * 1024;

const one = new Int32Array([1]);
const intOut = new Int32Array(1);
const intLen = new Uint32Array(1);
/** Every read lands here and is copied out at once (framing may keep a chunk, a queued write holds it). */
const readBuffer = Buffer.allocUnsafe(64 * 1024);
const readMemory = readBuffer.buffer;
const readOffset = readBuffer.byteOffset;

/** A connection on the epoll loop (see the top of this file). */
export class EpollSocket extends ProxySocketBase implements EpollHandler {
  gen = 0;
  /** Bytes the kernel did not take yet, oldest first (their memory is the writer's: not copied). */
  private queue: Buffer[] = [];
  /** The epoll mask asked for; -1: out of the set (hung up while not reading: park()). */
  private interest = 0;
  /** The fd is closed already (or never was open): never close its number again, another socket may
   *  have it by now. */
  private fdClosed = false;
  /** What sockets.ts's sendHeld and shutdownWriteNow use of a socket: its fd. */
  readonly _handle: { fd: number };

  /** `accepted`: from a listener (its addresses are read now: from the saved SYN when `savedSyn`, as
   *  sockets.ts's transparentListener keeps them, otherwise getsockname/getpeername). Never throws: a
   *  socket that cannot be watched (or an fd < 0, -errno: socket() failed) closes what it has and fails
   *  a turn later, 'error' naming the call and errno, then 'close', as a refused connect does. */
  constructor(
    readonly fd: number,
    accepted = true,
    savedSyn = false,
  ) {
    super();
    this._handle = { fd };
    const err = fd < 0 ? fd : watch(fd, 0, this);
    if (err) {
      if (fd >= 0) close(fd);
      this.fdClosed = true;
      process.nextTick(() => this.fail(-err, fd < 0 ? 'socket' : `epoll_ctl fd ${fd}`)); // listeners first
      return;
    }
    if (!accepted) return;
    this.takeAddresses(
      fd,
      savedSyn,
      () => sockaddrAddress(fd, false),
      () => sockaddrAddress(fd, true),
    );
  }

  /** A connection to ip:port: 'connect' once up, 'error' (then 'close') when it fails or takes longer
   *  than timeoutMs. Writes and end() before that are queued; reading starts once it is up. Never
   *  throws: out of fds (EMFILE) is an 'error' a turn later, which the pair answers with a 502. */
  static connect(ip: string, port: number, timeoutMs: number): EpollSocket {
    const sa = sockaddr(ip, port);
    const fd = socket(sa.readUInt16LE(0), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const s = new EpollSocket(fd < 0 ? -koffi.errno() : fd, false);
    s.connecting = true;
    s.reading = true; // read once connected, as a net.Socket with a 'data' listener does
    if (s.fdClosed) return s;
    if (connect(fd, sa, sa.length) < 0 && koffi.errno() !== EINPROGRESS) {
      const e = koffi.errno();
      process.nextTick(() => s.fail(e, `connect ${ip}:${port}`)); // the caller adds its listeners first
      return s;
    }
    s.connectTimer = setTimeout(() => s.fail(ETIMEDOUT, `connect ${ip}:${port}`), timeoutMs);
    s.update();
    return s;
  }

  /** Accepted sockets inherit TCP_NODELAY from the listener; a connecting one takes it before it is up. */
  setNoDelay(on = true): this {
    if (on && !this.destroyed && !this.fdClosed) setsockopt(this.fd, SOL_TCP, TCP_NODELAY, one, 4);
    return this;
  }

  write(b: Buffer): boolean {
    if (this.destroyed || this.writableEnded) return false;
    this.bytesWritten += b.length;
    if (this.connecting || this.queue.length) return this.enqueue(b);
    const n = send(this.fd, b, b.length, MSG_FLAGS);
    if (n === b.length) return true;
    if (n < 0) {
      const e = koffi.errno();
      if (e !== EAGAIN) {
        this.fail(e);
        return false;
      }
      return this.enqueue(b);
    }
    return this.enqueue(b.subarray(n));
  }

  private enqueue(b: Buffer): boolean {
    this.queue.push(b);
    this.writableLength += b.length;
    this.update();
    if (this.writableLength < HIGH_WATER) return true;
    this.needDrain = true;
    return false;
  }

  /** Writable again: as much of the queue as the kernel takes; 'drain' and a pending FIN once empty. */
  private flush(): void {
    const q = this.queue;
    while (q.length) {
      const b = q[0];
      const n = send(this.fd, b, b.length, MSG_FLAGS);
      if (n < 0) {
        const e = koffi.errno();
        if (e !== EAGAIN) this.fail(e);
        return;
      }
      this.writableLength -= n;
      if (n < b.length) {
        q[0] = b.subarray(n);
        return;
      }
      q.shift();
    }
    this.update();
    if (this.needDrain) {
      this.needDrain = false;
      this.ondrain?.();
    }
    if (this.writableEnded && !this.shutdownDone && !this.destroyed) this.sendFin();
  }

  pause(): this {
    if (this.reading && !this.destroyed) {
      this.reading = false;
      this.update();
    }
    return this;
  }

  resume(): this {
    if (!this.reading && !this.destroyed && !this.readableEnded) {
      this.reading = true;
      this.update();
    }
    return this;
  }

  /** Our FIN, after whatever is queued. */
  end(): this {
    if (this.writableEnded || this.destroyed) return this;
    this.writableEnded = true;
    if (!this.connecting && !this.queue.length) this.sendFin();
    return this;
  }

  private sendFin(): void {
    if (shutdown(this.fd, 1 /* SHUT_WR */) < 0) {
      this.fail(koffi.errno());
      return;
    }
    this.shutdownDone = true;
    // Closed a turn later, as libuv's shutdown completes: no 'close' inside the caller's end().
    if (this.readableEnded) process.nextTick(closeIfDone, this);
  }

  destroy(): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.reading = false;
    clearTimeout(this.connectTimer);
    if (!this.fdClosed) {
      this.fdClosed = true;
      unwatch(this.fd, this);
      close(this.fd); // also out of the epoll set
    }
    this.queue = [];
    // 'close' a turn later, as net.Socket and RawSocket emit it; none without a listener.
    if (this.onclose) process.nextTick(emitClose, this);
    return this;
  }

  /** errno `err` on a read, write, shutdown or connect (`call`: which, when not one of those on the
   *  connection's own fd): 'error', then closed. */
  fail(err: number, call?: string): void {
    if (this.destroyed) return;
    const name = errnoName(err);
    const e = Object.assign(new Error(`socket error ${name}${call ? ` (${call})` : ''}`), { code: name, errno: -err });
    this.destroy();
    this.onerror?.(e);
  }

  // ---- the loop's side ---------------------------------------------------------------------------

  /** A listener that throws closes this connection (fail closed: no fd left behind whatever the
   *  process does with the exception) and the exception goes on to the loop. */
  onEvents(mask: number): void {
    try {
      this.dispatch(mask);
    } catch (e) {
      this.destroy();
      throw e;
    }
  }

  private dispatch(mask: number): void {
    if (this.connecting) {
      if (mask & (EPOLLOUT | EPOLLERR | EPOLLHUP)) this.connected();
      return;
    }
    if (mask & EPOLLOUT) this.flush();
    if (this.destroyed) return;
    if (this.reading && !this.readableEnded) {
      if (mask & (EPOLLIN | EPOLLHUP | EPOLLERR)) this.readOnce();
    } else if (mask & EPOLLERR) this.fail(this.soError() || EAGAIN);
    else if (mask & EPOLLHUP && this.interest !== -1) {
      park(this.fd); // hung up while we do not read: reported every wait until we read again
      this.interest = -1;
    }
  }

  private readOnce(): void {
    const n = read(this.fd, readBuffer, readBuffer.length);
    if (n > 0) {
      this.bytesRead += n;
      const chunk = Buffer.allocUnsafe(n);
      chunk.set(new Uint8Array(readMemory, readOffset, n));
      this.ondata?.(chunk);
      return;
    }
    if (n === 0) {
      this.readableEnded = true;
      this.update(); // no more EPOLLIN: a socket at EOF stays readable
      this.onend?.();
      closeIfDone(this);
      return;
    }
    const e = koffi.errno();
    if (e !== EAGAIN) this.fail(e);
  }

  private connected(): void {
    const err = this.soError();
    if (err) {
      this.fail(err);
      return;
    }
    clearTimeout(this.connectTimer);
    this.connecting = false;
    this.onconnect?.();
    if (this.destroyed) return;
    this.update();
    if (this.queue.length) this.flush();
    else if (this.writableEnded && !this.shutdownDone) this.sendFin();
  }

  private soError(): number {
    intLen[0] = 4;
    if (getsockopt(this.fd, SOL_SOCKET, SO_ERROR, intOut, intLen) < 0) return koffi.errno();
    return intOut[0];
  }

  /** The epoll mask this socket's state asks for, given to the loop when it changed. */
  private update(): void {
    if (this.destroyed || this.fdClosed) return;
    let want = 0;
    if (this.connecting || this.queue.length) want |= EPOLLOUT;
    if (this.reading && !this.readableEnded && !this.connecting) want |= EPOLLIN;
    if (want === this.interest) return;
    const r = this.interest === -1 ? watchAgain(this.fd, want, this) : modify(this.fd, want, this);
    this.interest = want;
    if (r < 0) this.fail(-r);
  }
}

function closeIfDone(s: EpollSocket): void {
  if (s.readableEnded && s.shutdownDone && !s.destroyed) s.destroy();
}

function emitClose(s: EpollSocket): void {
  s.onclose?.();
}
