// Idle upstream connections of a proxy worker, kept for the next client connection with the same
// key: the source's identity and the original destination (address and port). One request per client
// connection then costs one TCP handshake, not two (nginx's `keepalive` upstreams do the same).
// What makes a connection idle (every request it carried fully sent, every response fully read, the
// server said keep-alive) is the HTTP connection's call (connection.ts); the pool only keeps it:
// never for another key, so one identity's request never rides a connection another identity's
// requests used; never longer than IDLE_MS (shorter than servers' keep-alive timeouts, e.g. Node's
// 5 s, so a server rarely closes one just as it is taken — and when it does, connection.ts replays
// an idempotent request on a fresh connection); and not at all once it said anything or closed.
import type { UpstreamSocket } from '../http/socket.ts';
import { holdUpstream, type UpstreamHolder, upstreamHolder } from '../http/upstream-events.ts';

const IDLE_MS = 2000;
const SWEEP_MS = 1000;
const MAX_PER_KEY = 64;
const MAX_TOTAL = 1024;

/** One key's idle connections, oldest first, and when each became idle (two arrays, not an object
 *  per connection given back: one request per client connection gives one back per request). */
interface Idle {
  s: UpstreamSocket[];
  since: number[];
}

export interface PoolLimits {
  idleMs: number;
  maxPerKey: number;
  maxTotal: number;
}

export class UpstreamPool implements UpstreamHolder {
  private readonly idle = new Map<string, Idle>();
  private total = 0;
  private sweeper?: NodeJS.Timeout;
  /** Upstream connections taken from the pool (for stats). */
  reused = 0;
  private readonly limits: PoolLimits;

  constructor(limits: Partial<PoolLimits> = {}) {
    this.limits = { idleMs: IDLE_MS, maxPerKey: MAX_PER_KEY, maxTotal: MAX_TOTAL, ...limits };
  }

  // Anything at all from an idle connection (upstream-events.ts: the pool holds it) ends it.
  upstreamData(s: UpstreamSocket): void {
    this.drop(s);
  }
  upstreamEnd(s: UpstreamSocket): void {
    this.drop(s);
  }
  upstreamError(s: UpstreamSocket): void {
    this.drop(s);
  }
  upstreamDrain(s: UpstreamSocket): void {
    this.drop(s);
  }
  upstreamConnect(s: UpstreamSocket): void {
    this.drop(s);
  }

  private drop(s: UpstreamSocket): void {
    this.forget(s);
    s.destroy();
  }

  get size(): number {
    return this.total;
  }

  /** The most recently idle open connection for `key`, no longer in the pool (undefined: none). */
  take(key: string): UpstreamSocket | undefined {
    const list = this.idle.get(key);
    while (list?.s.length) {
      const s = list.s.pop()!;
      list.since.pop();
      this.total--;
      this.unwatch(s);
      if (usable(s)) {
        this.reused++;
        return s;
      }
      s.destroy();
    }
    return undefined;
  }

  /** Keeps an idle connection for `key`; false when it is not kept (the caller ends it). */
  give(key: string, s: UpstreamSocket): boolean {
    if (!usable(s) || this.total >= this.limits.maxTotal) return false;
    let list = this.idle.get(key);
    if (!list) this.idle.set(key, (list = { s: [], since: [] }));
    if (list.s.length >= this.limits.maxPerKey) return false;
    list.s.push(s);
    list.since.push(Date.now());
    this.total++;
    holdUpstream(s, this);
    s.resume(); // read, so that a server's FIN (or anything it says) is seen while it sits here
    this.sweeper ??= setInterval(() => this.sweep(), Math.min(SWEEP_MS, this.limits.idleMs)).unref();
    return true;
  }

  /** Closes every idle connection (a new policy, the worker stopping). */
  clear(): void {
    for (const list of this.idle.values())
      for (const s of list.s) {
        this.unwatch(s);
        s.destroy();
      }
    this.idle.clear();
    this.total = 0;
  }

  private sweep(): void {
    const old = Date.now() - this.limits.idleMs;
    for (const [key, list] of this.idle) {
      // Oldest first: take() pops the newest, so the old ones sit at the front.
      let n = 0;
      while (n < list.s.length && list.since[n] <= old) n++;
      list.since.splice(0, n);
      for (const s of list.s.splice(0, n)) {
        this.unwatch(s); // its events (an error included) go nowhere now
        s.end(); // a FIN, not a reset: the server closes its side in its own time
      }
      this.total -= n;
      if (!list.s.length) this.idle.delete(key);
    }
  }

  private forget(s: UpstreamSocket): void {
    this.unwatch(s);
    for (const [key, list] of this.idle) {
      const i = list.s.indexOf(s);
      if (i < 0) continue;
      list.s.splice(i, 1);
      list.since.splice(i, 1);
      this.total--;
      if (!list.s.length) this.idle.delete(key);
      return;
    }
  }

  private unwatch(s: UpstreamSocket): void {
    if (upstreamHolder(s) === this) holdUpstream(s, undefined);
  }
}

function usable(s: UpstreamSocket): boolean {
  return !s.destroyed && !s.readableEnded && !s.writableEnded && s.writableLength === 0 && s.readyState === 'open';
}
