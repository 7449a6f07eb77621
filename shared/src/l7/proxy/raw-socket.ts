// Accepted client connections of the proxy as libuv TCP handles with a small socket-like face, not
// net.Socket. One request per connection is a common way to use HTTP, and profiles of the workers put
// most of a connection's user-space CPU in net.Socket: its construction on accept (a Duplex stream,
// dozens of fields, megamorphic property loads), and each read and write through the stream machinery
// (push, 'data', the Writable's buffering and callbacks). The proxy needs none of that: it reads a
// chunk, frames it, writes it on. This is what net.Socket does underneath (Node's stream_base
// commons), kept to what SocketPair (http/pair.ts) and the worker use: events data/end/error/close/
// drain, write() with the same backpressure answer, pause/resume, end (FIN after queued bytes),
// destroy, and the byte counters of the idle sweep. The upstream side stays net.Socket (pooled, and
// net.connect's connecting and timeouts are worth keeping).
//
// Node's process.binding('tcp_wrap'/'stream_wrap') is the documented-deprecated path to these
// handles (DEP0111, a warning only with --pending-deprecation); the worker's tests use it as the
// proxy does (shared/test/l7-raw-socket.test.ts, l7-http-proxy.test.ts over raw sockets).
import type { ClientSocket } from '../http/pair.ts';

interface StreamWrapBinding {
  WriteWrap: new () => Req;
  ShutdownWrap: new () => Req;
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kBytesWritten: number;
  kLastWriteWasAsync: number;
}
interface Req {
  handle: TcpHandle;
  oncomplete: (this: Req, status: number) => void;
  owner?: RawSocket;
  buffer?: Buffer;
  bytes?: number;
}
interface Address {
  address?: string;
  family?: string;
  port?: number;
}
interface TcpHandle {
  fd: number;
  onread: (this: TcpHandle) => void;
  onconnection: (err: number, client: TcpHandle | undefined) => void;
  owner?: RawSocket;
  useUserBuffer(b: Buffer): void;
  readStart(): number;
  readStop(): number;
  writeBuffer(req: Req, b: Buffer): number;
  shutdown(req: Req): number;
  close(cb?: () => void): void;
  getsockname(out: Address): number;
  getpeername(out: Address): number;
  open(fd: number): number;
  bind(ip: string, port: number): number;
  listen(backlog: number): number;
}

// biome-ignore lint/suspicious/noExplicitAny: process.binding is untyped
const bindings = process as unknown as { binding(name: string): any };
const tcpWrap = bindings.binding('tcp_wrap') as { TCP: new (type: number) => TcpHandle; constants: { SERVER: number } };
const sw = bindings.binding('stream_wrap') as StreamWrapBinding;
const state = sw.streamBaseState;
const UV_EOF = -4095;
/** write() answers false (wait for 'drain') once this much is queued in the kernel's stead. */
const HIGH_WATER = 16 * 1024;

type Listener = (...args: never[]) => void;

/**
 * Every read lands in this one buffer (libuv reads into it; the callback copies the bytes out before
 * the next read can happen): otherwise Node allocates 64 KiB with malloc per read and shrinks it to
 * what came, and wraps it in a new ArrayBuffer (malloc and friends were 4-5 % of the workers' CPU).
 */
const readBuffer = Buffer.allocUnsafe(64 * 1024);

function onRead(this: TcpHandle): void {
  const s = this.owner;
  if (!s || s.destroyed) return;
  const n = state[sw.kReadBytesOrError];
  if (n > 0) {
    s.bytesRead += n;
    // A copy of its own (pooled when small): framing may keep it, a write may hold it.
    const chunk = Buffer.allocUnsafe(n);
    readBuffer.copy(chunk, 0, 0, n);
    s.ondata?.(chunk);
    return;
  }
  if (n === 0) return;
  if (n === UV_EOF) {
    s.readableEnded = true;
    s.onend?.();
    return;
  }
  s.fail(n);
}

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

function afterShutdown(this: Req): void {
  // Nothing to do: the client's FIN (or an error) is what ends the connection from here.
}

/** An accepted TCP connection (see the top of this file). */
export class RawSocket implements ClientSocket {
  destroyed = false;
  writableEnded = false;
  readableEnded = false;
  writableLength = 0;
  bytesRead = 0;
  bytesWritten = 0;
  needDrain = false;
  ondata?: (d: Buffer) => void;
  onend?: () => void;
  onerror?: (e: Error) => void;
  onclose?: () => void;
  ondrain?: () => void;
  private reading = false;
  readonly localAddress?: string;
  readonly localPort?: number;
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  readonly remoteFamily?: string;

  constructor(readonly _handle: TcpHandle) {
    const local: Address = {};
    const remote: Address = {};
    _handle.getsockname(local);
    _handle.getpeername(remote);
    this.localAddress = local.address;
    this.localPort = local.port;
    this.remoteAddress = remote.address;
    this.remotePort = remote.port;
    this.remoteFamily = remote.family;
    _handle.owner = this;
    _handle.onread = onRead;
    _handle.useUserBuffer(readBuffer);
  }

  /** Starts reading (call once the listeners are on). */
  start(): void {
    this.resume();
  }

  /** One listener per event (the pair's): a second one would silently replace it, so it throws. */
  on(event: string, fn: Listener): this {
    const f = fn as never;
    const had = { data: this.ondata, end: this.onend, error: this.onerror, close: this.onclose, drain: this.ondrain }[event];
    if (had) throw new Error(`RawSocket has a '${event}' listener already`);
    if (event === 'data') this.ondata = f;
    else if (event === 'end') this.onend = f;
    else if (event === 'error') this.onerror = f;
    else if (event === 'close') this.onclose = f;
    else if (event === 'drain') this.ondrain = f;
    else throw new Error(`RawSocket has no '${event}' event`);
    return this;
  }

  setNoDelay(): this {
    return this; // accepted sockets inherit TCP_NODELAY from the listener (sockets.ts)
  }

  write(b: Buffer): boolean {
    if (this.destroyed || this.writableEnded) return false;
    const req = new sw.WriteWrap();
    req.handle = this._handle;
    req.oncomplete = afterWrite;
    const err = this._handle.writeBuffer(req, b);
    if (err !== 0) {
      this.fail(err);
      return false;
    }
    this.bytesWritten += b.length;
    if (state[sw.kLastWriteWasAsync]) {
      // The kernel took part of it; libuv writes the rest when the socket drains.
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
      const err = this._handle.readStart();
      if (err) this.fail(err);
    }
    return this;
  }

  /** Our FIN, after whatever is queued. */
  end(): this {
    if (this.writableEnded || this.destroyed) return this;
    this.writableEnded = true;
    const req = new sw.ShutdownWrap();
    req.handle = this._handle;
    req.oncomplete = afterShutdown;
    const err = this._handle.shutdown(req);
    if (err < 0) this.fail(err);
    return this;
  }

  destroy(): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.reading = false;
    this._handle.close(() => this.onclose?.());
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

/** A listening socket (its fd, e.g. sockets.ts's transparentListener) whose connections come as RawSockets. */
export class RawListener {
  private readonly h: TcpHandle;

  constructor(h: TcpHandle, onConnection: (s: RawSocket) => void, onError: (errno: number) => void) {
    this.h = h;
    h.onconnection = (err, client) => {
      if (err || !client) onError(err);
      else onConnection(new RawSocket(client));
    };
  }

  static fromFd(
    fd: number,
    backlog: number,
    onConnection: (s: RawSocket) => void,
    onError: (errno: number) => void,
  ): RawListener {
    const h = new tcpWrap.TCP(tcpWrap.constants.SERVER);
    let err = h.open(fd);
    if (!err) err = h.listen(backlog);
    if (err) throw new Error(`cannot listen on fd ${fd}: errno ${err}`);
    return new RawListener(h, onConnection, onError);
  }

  /** A plain listener on ip:port (port 0: any), for tests. */
  static bind(ip: string, port: number, onConnection: (s: RawSocket) => void): RawListener {
    const h = new tcpWrap.TCP(tcpWrap.constants.SERVER);
    let err = h.bind(ip, port);
    if (!err) err = h.listen(511);
    if (err) throw new Error(`cannot listen on ${ip}:${port}: errno ${err}`);
    return new RawListener(h, onConnection, () => undefined);
  }

  get port(): number {
    const a: Address = {};
    this.h.getsockname(a);
    return a.port ?? 0;
  }

  close(): void {
    this.h.close();
  }
}
