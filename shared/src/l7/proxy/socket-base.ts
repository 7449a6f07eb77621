// What the proxy worker's two socket layers share (raw-socket.ts on libuv handles, epoll-socket.ts on
// the worker's own epoll loop; io.ts picks one): the state SocketPair (http/pair.ts), the worker and the
// upstream pool read, one listener per event, and the accepted connection's addresses. Each layer
// keeps its own reading and writing, which is where they differ.
import type { UpstreamSocket } from '../http/socket.ts';
import { type SynAddresses, synAddresses } from './sockets.ts';
import type { Address } from './uv.ts';

type Listener = (...args: never[]) => void;

/** Filled by synAddresses for each accepted connection and read at once: the same object every time
 *  (a fresh one gets its properties added one by one, a map transition each). */
const SYN: SynAddresses = { localAddress: '', localPort: 0, remoteAddress: '', remotePort: 0 };

export abstract class ProxySocketBase implements UpstreamSocket {
  destroyed = false;
  writableEnded = false;
  readableEnded = false;
  writableLength = 0;
  bytesRead = 0;
  bytesWritten = 0;
  needDrain = false;
  /** Our FIN is out. */
  shutdownDone = false;
  /** connect(): not connected yet; writes, end() and reading wait. */
  protected connecting = false;
  protected reading = false;
  protected connectTimer?: NodeJS.Timeout;
  onconnect?: () => void;
  ondata?: (d: Buffer) => void;
  onend?: () => void;
  onerror?: (e: Error) => void;
  onclose?: () => void;
  ondrain?: () => void;
  localAddress?: string;
  localPort?: number;
  remoteAddress?: string;
  remotePort?: number;
  remoteFamily?: string;

  abstract write(b: Buffer): boolean;
  abstract end(): this;
  abstract destroy(): this;
  abstract pause(): this;
  abstract resume(): this;
  abstract setNoDelay(on?: boolean): this;

  /** An accepted connection's two ends: from the saved SYN when `savedSyn` (one system call; sockets.ts
   *  transparentListener keeps it), otherwise from `local` and `remote` (getsockname, getpeername). */
  protected takeAddresses(
    fd: number,
    savedSyn: boolean,
    local: () => Address | undefined,
    remote: () => Address | undefined,
  ): void {
    if (savedSyn && synAddresses(fd, SYN)) {
      this.localAddress = SYN.localAddress;
      this.localPort = SYN.localPort;
      this.remoteAddress = SYN.remoteAddress;
      this.remotePort = SYN.remotePort;
      this.remoteFamily = 'IPv4';
      return;
    }
    // One at a time: the two may hand out the same reused object.
    const l = local();
    this.localAddress = l?.address;
    this.localPort = l?.port;
    const r = remote();
    this.remoteAddress = r?.address;
    this.remotePort = r?.port;
    this.remoteFamily = r?.family;
  }

  /** Destroys it without the 'close' event: for the owner that destroys it and knows (SocketPair). */
  destroyQuietly(): void {
    this.onclose = undefined;
    this.destroy();
  }

  get readyState(): string {
    return this.connecting ? 'opening' : this.destroyed ? 'closed' : 'open';
  }

  /** Starts reading (call once the listeners are on). */
  start(): void {
    this.resume();
  }

  /** One listener per event (the pair's): a second one would silently replace it, so it throws. */
  on(event: string, fn: Listener): this {
    const f = fn as never;
    const had =
      event === 'data'
        ? this.ondata
        : event === 'end'
          ? this.onend
          : event === 'error'
            ? this.onerror
            : event === 'close'
              ? this.onclose
              : event === 'drain'
                ? this.ondrain
                : event === 'connect'
                  ? this.onconnect
                  : undefined;
    if (had) throw new Error(`${this.constructor.name} has a '${event}' listener already`);
    if (event === 'data') this.ondata = f;
    else if (event === 'end') this.onend = f;
    else if (event === 'error') this.onerror = f;
    else if (event === 'close') this.onclose = f;
    else if (event === 'drain') this.ondrain = f;
    else if (event === 'connect') this.onconnect = f;
    else throw new Error(`${this.constructor.name} has no '${event}' event`);
    return this;
  }
}
