// An upstream socket's events go to whoever holds it now: the socket pair of the client connection
// using it (pair.ts), or the pool keeping it idle (proxy/upstream-pool.ts), or nobody (being closed:
// its events are dropped, errors included). The listeners are added once per socket, as plain
// functions, and a hand-over only changes the holder: an upstream reused for one request per client
// connection went through twenty listener additions and removals per connection otherwise.
import type { UpstreamSocket } from './socket.ts';

export interface UpstreamHolder {
  upstreamData(s: UpstreamSocket, d: Buffer): void;
  /** 'end' or 'close' (may come twice: end, then close). */
  upstreamEnd(s: UpstreamSocket): void;
  upstreamError(s: UpstreamSocket): void;
  upstreamDrain(s: UpstreamSocket): void;
  upstreamConnect(s: UpstreamSocket): void;
}

const HOLDER = Symbol('membrane.upstreamHolder');
type Held = UpstreamSocket & { [HOLDER]?: UpstreamHolder | null };

function onData(this: Held, d: Buffer): void {
  this[HOLDER]?.upstreamData(this, d);
}
function onEnd(this: Held): void {
  this[HOLDER]?.upstreamEnd(this);
}
function onError(this: Held): void {
  this[HOLDER]?.upstreamError(this);
}
function onDrain(this: Held): void {
  this[HOLDER]?.upstreamDrain(this);
}
function onConnect(this: Held): void {
  this[HOLDER]?.upstreamConnect(this);
}

/** From now on `s`'s events go to `holder` (undefined: nobody). The first call adds the listeners. */
export function holdUpstream(s: UpstreamSocket, holder: UpstreamHolder | undefined): void {
  const h = s as Held;
  if (h[HOLDER] === undefined) {
    s.on('connect', onConnect);
    s.on('data', onData);
    s.on('end', onEnd);
    s.on('error', onError);
    s.on('close', onEnd);
    s.on('drain', onDrain);
  }
  h[HOLDER] = holder ?? null; // null: watched, held by nobody
}

/** Who holds `s` now (undefined: nobody). */
export function upstreamHolder(s: UpstreamSocket): UpstreamHolder | undefined {
  return (s as Held)[HOLDER] ?? undefined;
}
