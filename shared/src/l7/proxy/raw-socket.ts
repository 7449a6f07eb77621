// Accepted client connections of the proxy as libuv TCP handles with a small socket-like face, not
// net.Socket. One request per connection is a common way to use HTTP, and profiles of the workers put
// most of a connection's user-space CPU in net.Socket: its construction on accept (a Duplex stream,
// dozens of fields, megamorphic property loads), and each read and write through the stream machinery
// (push, 'data', the Writable's buffering and callbacks). The proxy needs none of that: it reads a
// chunk, frames it, writes it on. This is what net.Socket does underneath (Node's stream_base
// commons), kept to what SocketPair (http/pair.ts) and the worker use: events data/end/error/close/
// drain/connect, write() with the same backpressure answer, pause/resume, end (FIN after queued
// bytes), destroy, closed by itself once both directions ended (as net.Socket with allowHalfOpen),
// and the byte counters of the idle sweep. Upstream connections are RawSockets too (connect()):
// each request and response of a keep-alive connection crosses one of each.
// The bindings are uv.ts's, listeners raw-listener.ts's; the worker's tests use these as the proxy
// does (shared/test/l7-raw-socket.test.ts, l7-http-proxy.test.ts over raw sockets).
// Buffer and performance imported, not the globals: Node defines those as accessors on the global
// object, and every use in optimized code went through a global load IC and the getter (about 1 % of a
// worker's CPU in a one-request-per-connection profile).
import { Buffer } from 'node:buffer';
import { armYield, yieldUs } from './sched.ts';
import { pendingSocketError } from './sockets.ts';
import { ProxySocketBase } from './socket-base.ts';
import { type Address, type ConnectReq, type Req, state, sw, type TcpHandle, tcpWrap, UV_EOF, UV_ETIMEDOUT } from './uv.ts';

/** write() answers false (wait for 'drain') once this much is queued in the kernel's stead. */
const HIGH_WATER = 16 * 1024;

/** Filled by getsockname/getpeername for each accepted connection and read at once: the same object
 *  every time (a fresh one gets its three properties added one by one, a map transition each). */
const ADDRESS: Address = { address: undefined, family: undefined, port: undefined };
function address(h: TcpHandle, which: 'getsockname' | 'getpeername'): Address {
  ADDRESS.address = ADDRESS.family = ADDRESS.port = undefined;
  h[which](ADDRESS);
  return ADDRESS;
}

/**
 * Every read lands in this one buffer (libuv reads into it; the callback copies the bytes out before
 * the next read can happen): otherwise Node allocates 64 KiB with malloc per read and shrinks it to
 * what came, and wraps it in a new ArrayBuffer (malloc and friends were 4-5 % of the workers' CPU).
 */
const readBuffer = Buffer.allocUnsafe(64 * 1024);
const readMemory = readBuffer.buffer;
const readOffset = readBuffer.byteOffset;
/** Read once here, not per read and write: the binding object and Buffer (a function with dozens of
 *  properties) are dictionary-mode objects, and a load from one was a generic LoadIC call in the
 *  worker's profile (onRead: ~0.3 % of its CPU at keep-alive). */
const kReadBytesOrError = sw.kReadBytesOrError;
const kLastWriteWasAsync = sw.kLastWriteWasAsync;
const allocUnsafe = Buffer.allocUnsafe;

function onRead(this: TcpHandle): void {
  const s = this.owner;
  if (!s || s.destroyed) return;
  const n = state[kReadBytesOrError];
  if (n > 0) {
    s.bytesRead += n;
    // A copy of its own (pooled when small): framing may keep it, a write may hold it (libuv writes
    // the rest of a partial write from the chunk's memory while the next read refills readBuffer).
    // A typed-array set from a view of the memory and offset read once: Buffer#copy (node 20)
    // validates, reads readBuffer.buffer (JSTypedArray::GetBuffer, ~0.7 % of a keep-alive worker's
    // CPU) and makes the same view per call (~350 against ~260 ns a 120-byte chunk in a loop).
    const chunk = allocUnsafe(n);
    chunk.set(new Uint8Array(readMemory, readOffset, n));
    s.ondata?.(chunk);
    if (yieldUs) armYield();
    return;
  }
  if (n === 0) return;
  if (n === UV_EOF) {
    // A reset after data comes as EOF from libuv (sockets.ts pendingSocketError): an error it is.
    const err = pendingSocketError(s);
    if (err) {
      s.fail(-err);
      return;
    }
    s.readableEnded = true;
    s.onend?.();
    s.closeIfDone();
    return;
  }
  s.fail(n);
}

function writeReq(): Req {
  const req = new sw.WriteWrap();
  req.oncomplete = afterWrite;
  return req;
}

/**
 * The request object of the next write. Node binds one to libuv only when the kernel does not take
 * the whole write at once (StreamBase::Write tries a plain write() first); a write it takes whole,
 * the common case, leaves the object untouched, so the next write uses it again instead of making
 * a new one through Node's C++ template (two writes per proxied request).
 */
let spareWrite: Req = writeReq();

function afterWrite(this: Req, status: number): void {
  const s = this.owner!;
  s.writableLength -= this.bytes!;
  this.buffer = undefined;
  if (status < 0) {
    s.fail(status);
    return;
  }
  if (s.writableLength === 0 && s.needDrain && !s.destroyed) {
    s.needDrain = false;
    s.ondrain?.();
  }
}

function afterShutdown(this: Req, status: number): void {
  const s = this.owner!;
  if (status < 0) s.fail(status);
  else {
    s.shutdownDone = true;
    s.closeIfDone();
  }
}

/** The handle's close callback (called on the handle): one function for every socket, no closure each. */
function afterClose(this: TcpHandle): void {
  this.owner?.onclose?.();
}

function afterConnect(this: ConnectReq, status: number): void {
  this.owner?.connected(status);
}

/** An accepted TCP connection (see the top of this file). */
export class RawSocket extends ProxySocketBase {
  private queued?: Buffer[];
  private noDelay = false;

  /** `savedSyn`: accepted from a listener with TCP_SAVE_SYN (sockets.ts transparentListener), whose
   *  saved SYN gives both ends' addresses in one system call (synAddresses). */
  constructor(
    readonly _handle: TcpHandle,
    accepted = true,
    savedSyn = false,
  ) {
    super();
    _handle.owner = this;
    _handle.onread = onRead;
    _handle.useUserBuffer(readBuffer);
    if (!accepted) return;
    this.takeAddresses(
      _handle.fd,
      savedSyn,
      () => address(_handle, 'getsockname'),
      () => address(_handle, 'getpeername'),
    );
  }

  /** A connection to ip:port; 'connect' when it is up, 'error' (then 'close') when it fails or takes
   *  longer than timeoutMs. Writes and end() before that are queued; reading starts once it is up
   *  (unless paused). */
  static connect(ip: string, port: number, timeoutMs: number): RawSocket {
    const s = new RawSocket(new tcpWrap.TCP(tcpWrap.constants.SOCKET), false);
    s.connecting = true;
    s.reading = true; // read once connected, as a net.Socket with a 'data' listener does
    const req = new tcpWrap.TCPConnectWrap();
    req.oncomplete = afterConnect;
    req.owner = s;
    req.address = ip;
    req.port = port;
    const err = ip.includes(':') ? s._handle.connect6(req, ip, port) : s._handle.connect(req, ip, port);
    if (err)
      process.nextTick(() => s.fail(err)); // the caller adds its listeners first
    else s.connectTimer = setTimeout(() => s.fail(UV_ETIMEDOUT), timeoutMs);
    return s;
  }

  /** The connect request completed (status < 0: failed). */
  connected(status: number): void {
    clearTimeout(this.connectTimer);
    if (this.destroyed) return;
    if (status < 0) {
      this.fail(status);
      return;
    }
    this.connecting = false;
    if (this.noDelay) this._handle.setNoDelay(true);
    this.onconnect?.();
    const queued = this.queued;
    this.queued = undefined;
    if (queued) {
      for (const b of queued) {
        this.writableLength -= b.length;
        this.send(b);
      }
      if (this.writableLength === 0 && this.needDrain && !this.destroyed) {
        this.needDrain = false;
        this.ondrain?.();
      }
    }
    if (this.destroyed) return;
    if (this.writableEnded) this.shutdown();
    if (this.reading) this.readStart();
  }

  /** Accepted sockets inherit TCP_NODELAY from the listener (sockets.ts); connect()'s set it once up. */
  setNoDelay(on = true): this {
    this.noDelay = on;
    if (on && !this.connecting && !this.destroyed) this._handle.setNoDelay(true);
    return this;
  }

  write(b: Buffer): boolean {
    if (this.destroyed || this.writableEnded) return false;
    if (this.connecting) {
      (this.queued ??= []).push(b);
      this.writableLength += b.length;
      if (this.writableLength < HIGH_WATER) return true;
      this.needDrain = true;
      return false;
    }
    return this.send(b);
  }

  private send(b: Buffer): boolean {
    if (this.destroyed) return false;
    const req = spareWrite;
    req.handle = this._handle;
    const err = this._handle.writeBuffer(req, b);
    if (err !== 0) {
      spareWrite = writeReq();
      this.fail(err);
      return false;
    }
    this.bytesWritten += b.length;
    if (state[kLastWriteWasAsync]) {
      // The kernel took part of it; libuv writes the rest when the socket drains. This request
      // object is libuv's until then: the next write gets a new one.
      spareWrite = writeReq();
      req.owner = this;
      req.buffer = b;
      req.bytes = b.length;
      this.writableLength += b.length;
      if (this.writableLength >= HIGH_WATER) {
        this.needDrain = true;
        return false;
      }
    }
    return true;
  }

  pause(): this {
    if (this.reading && !this.destroyed) {
      this.reading = false;
      this._handle.readStop();
    }
    return this;
  }

  resume(): this {
    if (!this.reading && !this.destroyed && !this.readableEnded) {
      this.reading = true;
      if (!this.connecting) this.readStart();
    }
    return this;
  }

  private readStart(): void {
    const err = this._handle.readStart();
    if (err) this.fail(err);
  }

  /** Our FIN, after whatever is queued. */
  end(): this {
    if (this.writableEnded || this.destroyed) return this;
    this.writableEnded = true;
    if (!this.connecting) this.shutdown();
    return this;
  }

  private shutdown(): void {
    const req = new sw.ShutdownWrap();
    req.handle = this._handle;
    req.oncomplete = afterShutdown;
    req.owner = this;
    const err = this._handle.shutdown(req);
    if (err < 0) this.fail(err);
  }

  /** Both directions ended (the peer's FIN read, ours through): closed, as net.Socket closes itself. */
  closeIfDone(): void {
    if (this.readableEnded && this.shutdownDone) this.destroy();
  }

  destroy(): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.reading = false;
    clearTimeout(this.connectTimer);
    // No 'close' listener: no close callback either (Node then calls no JavaScript when the handle is closed).
    this._handle.close(this.onclose ? afterClose : undefined);
    return this;
  }

  /** A read, write or shutdown failed with errno `err` (negative): 'error', then closed. */
  fail(err: number): void {
    if (this.destroyed) return;
    const e = new Error(`client socket error ${err}`);
    this.destroy();
    this.onerror?.(e);
  }
}
