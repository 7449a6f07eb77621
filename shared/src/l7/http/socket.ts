// What the proxy's HTTP connection needs of its two sockets. net.Socket has all of it; the proxy
// workers use the lighter RawSocket (proxy/raw-socket.ts) for both.

/**
 * What the pair needs of the client's socket: a net.Socket, or the worker's lighter RawSocket
 * (proxy/raw-socket.ts) for connections it accepts itself.
 */
export interface ClientSocket {
  on(event: 'data' | 'end' | 'error' | 'close' | 'drain', listener: (...args: never[]) => void): unknown;
  write(b: Buffer): boolean;
  pause(): unknown;
  resume(): unknown;
  end(): unknown;
  destroy(): unknown;
  /** Destroys it without the 'close' event, when the caller does what that event would have done
   *  (RawSocket: one call into JavaScript fewer per connection). */
  destroyQuietly?(): void;
  setNoDelay(noDelay: boolean): unknown;
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  readonly writableLength: number;
}

/** An upstream connection: also whether it can still be reused (proxy/upstream-pool.ts). */
export interface UpstreamSocket extends ClientSocket {
  on(event: 'connect' | 'data' | 'end' | 'error' | 'close' | 'drain', listener: (...args: never[]) => void): unknown;
  readonly readableEnded: boolean;
  /** 'open' once connected (net.Socket's values). */
  readonly readyState: string;
}
