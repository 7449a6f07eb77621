// How many client connections one source may hold open at a proxy worker at once. Without a bound,
// one pod that opens thousands of connections to an L7 port (or holds them idle within the 30-60 s
// head deadline, worker.ts closeSlowHeads) takes the worker's fds, and every other pod's L7
// connections on the node fail with it. Past the bound a new connection from that source is refused
// at once (reset, no upstream connection, no state kept); other sources are unaffected, and once the
// source's connections close it connects again. Pure: the worker (worker.ts accept, refuse) keys,
// counts and refuses.
//
// The key is what the source cannot change cheaply. Not the source port (free for the asking), not the
// identity (every pod of a deployment shares it, so one pod could lock its siblings out, and every
// client outside the cluster is "world"). A local endpoint counts as itself, by its endpoint id, so a
// dual-stack pod gets one budget, not one per address family; anything else by its address as the
// proxy sees it: the datapath rewrites nothing on the way to the proxy, and a pod cannot send from an
// address that is not its own (the anti-spoofing check), so a new key costs a new pod. (A client
// outside the cluster with a routed IPv6 prefix could spread over addresses; that is the node's
// firewall's to bound.)
//
// Per worker, not per node: what the bound protects is a worker's own RLIMIT_NOFILE, and counting
// node-wide would need the workers (separate processes, the kernel spreading connections over their
// SO_REUSEPORT group) to agree on each accept. A source can so hold up to the bound times the number
// of workers (1-2 by default) node-wide, never more than the bound of any one worker's fds.
import { type Exchange, startExchange, type Verdict } from '../http/exchange.ts';

/** A key per source: a local endpoint's id, or the source address for anything else. */
export type SourceKey = number | string;

function checkedMax(max: number): number {
  if (!Number.isInteger(max) || max < 1)
    throw new Error(`the connection limit per source must be a whole number >= 1, not ${max}`);
  return max;
}

export class SourceLimit {
  /** Open connections per source; a source leaves when its last connection closes. */
  private readonly open = new Map<SourceKey, number>();
  /** Connections refused since the start. */
  refused = 0;

  private limit: number;

  constructor(max: number) {
    this.limit = checkedMax(max);
  }

  get max(): number {
    return this.limit;
  }

  /** A new bound for connections admitted from now on: a source holding more keeps them (nothing is
   *  cut) and is refused until it holds fewer. */
  setMax(max: number): void {
    this.limit = checkedMax(max);
  }

  /** Counts a new connection of `key` in and says true, or says false (nothing counted) when the
   *  source holds `max` already. Each true wants exactly one release(key) when that connection ends. */
  admit(key: SourceKey): boolean {
    const n = this.open.get(key) ?? 0;
    if (n >= this.limit) {
      this.refused++;
      return false;
    }
    this.open.set(key, n + 1);
    return true;
  }

  /** One admitted connection of `key` ended. */
  release(key: SourceKey): void {
    const n = this.open.get(key);
    if (n === undefined) return;
    if (n <= 1) this.open.delete(key);
    else this.open.set(key, n - 1);
  }

  /** Connections `key` holds. */
  count(key: SourceKey): number {
    return this.open.get(key) ?? 0;
  }

  /** Sources holding a connection. */
  get sources(): number {
    return this.open.size;
  }
}

/** At most this many connections per source by default, however many fds the worker may open: memory
 *  per connection (socket buffers, parser state) is the bound past it. nginx, HAProxy and Envoy set no
 *  per-client bound by default; 1,024 is above what one client's pool or load generator holds to one
 *  node (bench:l7 uses at most 50), and a worker under systemd (524,288 fds) or Docker (1,048,576)
 *  needs hundreds of sources at the bound to run out. */
export const MAX_CONNS_PER_SOURCE_CAP = 1024;

/**
 * The bound when none is configured (0): a sixteenth of the worker's fd limit, at most
 * MAX_CONNS_PER_SOURCE_CAP, at least 16. A proxied connection takes two fds (the client's and the
 * upstream one), so one source at the bound holds an eighth of the worker's fds and it takes eight
 * such sources to run it out. The workers get the agent's hard RLIMIT_NOFILE as their soft one (the
 * agent sets none; Node raises its soft limit to the hard one at start): 20,000 on the test machines
 * (1,024 per source), 4,096 gives 256, 1,024 gives 64.
 */
export function defaultMaxConnsPerSource(nofile: number): number {
  if (!Number.isFinite(nofile) || nofile <= 0) return MAX_CONNS_PER_SOURCE_CAP; // unlimited or unknown
  return Math.max(16, Math.min(MAX_CONNS_PER_SOURCE_CAP, Math.floor(nofile / 16)));
}

/** The soft "Max open files" of a /proc/<pid>/limits text; Infinity for "unlimited", NaN when absent. */
export function nofileOf(limits: string): number {
  const m = /^Max open files\s+(\S+)/m.exec(limits);
  if (!m) return Number.NaN;
  return m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
}

/** The verdict of a refused connection's record: no rule decided it (its flow names no policy). */
const REFUSED: Verdict = { allowed: false, edits: [] };

/** The exchange a refused connection's record is made of (records.ts): no method, path or host (no
 *  request was read), the reason conn-limit (a DROPPED flow, flows.ts; counted in metrics.ts). How
 *  many refusals the record stands for is its context's `refused` (RefusalRecords). */
export function refusedExchange(): Exchange {
  const x = startExchange('', '', '', 1, REFUSED);
  x.localReason = 'conn-limit';
  return x;
}

/**
 * The log of refusals, at most one line per `everyMs` (a flood refuses thousands a second): the first
 * refusal is logged at once, later ones are counted and the next line, once `everyMs` is over, says how
 * many and names the last source.
 */
export class RefusalLog {
  private unlogged = 0;
  private last = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly log: (msg: string, extra: Record<string, unknown>) => void,
    private readonly everyMs = 10_000,
  ) {}

  refused(source: string, max: number, now: number): void {
    this.unlogged++;
    if (now - this.last < this.everyMs) return;
    this.last = now;
    this.log('connections refused: their source held the most a worker takes from one source', {
      refused: this.unlogged,
      lastSource: source,
      maxConnsPerSource: max,
    });
    this.unlogged = 0;
  }
}

/** A refusal record is written for a source at most once per this long (worker.ts refuse). */
export const REFUSAL_RECORD_MS = 1000;
/** Sources whose refusals are tracked at once (RefusalRecords); past it the oldest one's count is
 *  written and it is forgotten. A source is refused only while it holds `max` connections, so the
 *  sources refused within a second are bounded by the worker's fds over `max` (8 at the default bound,
 *  defaultMaxConnsPerSource); this is there for a bound configured low. */
export const MAX_REFUSING_SOURCES = 1024;

interface Pending<T> {
  /** When the source's current window ends (its last record was written at until - windowMs). */
  until: number;
  /** Refusals since that record, not written yet. */
  count: number;
  /** The last of them (its ports and policy name the record that writes them). */
  last: T;
}

/**
 * Refusals as records, at most one per source per `windowMs`. Each refusal was one record, so one L7
 * flow in the agent's ring (4,096 flows by default): a pod refusing itself thousands of connections a
 * second pushed every other flow out, its own earlier ones and other pods' alike. The first refusal of
 * a source is written at once with the count 1, and opens its window; the refusals within the window
 * are summed, and written as one record with their count by the first refusal after it (which counts
 * itself in) or by sweep() once the window is over, whichever comes first; a window whose source was
 * not refused again is forgotten by the next sweep. So every refusal is in exactly one record's count
 * (the agent's membrane_l7_connections_refused_total adds them, metrics.ts), and a record's count is
 * at most a second old plus the sweep's interval.
 *
 * Keyed like SourceLimit (an endpoint id, or the source address): what the source cannot change
 * cheaply. By the source port every connection would be a new key, so a record each again; by
 * identity one pod's flood would merge with its siblings' refusals into records naming one pod's address.
 * Pure: `emit` writes the record (worker.ts), the caller passes the clock.
 */
export class RefusalRecords<T> {
  private readonly pending = new Map<SourceKey, Pending<T>>();

  constructor(
    private readonly emit: (last: T, count: number) => void,
    private readonly windowMs = REFUSAL_RECORD_MS,
    private readonly maxSources = MAX_REFUSING_SOURCES,
  ) {}

  /** One connection of `key` refused at `now` (ms, monotonic); `what` names it in a record. */
  refused(key: SourceKey, what: T, now: number): void {
    const p = this.pending.get(key);
    if (p && now < p.until) {
      p.count++;
      p.last = what;
      return;
    }
    if (p) {
      // Its window is over: the refusals in it and this one, in one record, which opens the next.
      this.emit(what, p.count + 1);
      p.count = 0;
      p.until = now + this.windowMs;
      p.last = what;
      return;
    }
    if (this.pending.size >= this.maxSources) {
      // The oldest tracked source (a Map keeps insertion order): its count written, not lost.
      const [oldKey, old] = this.pending.entries().next().value as [SourceKey, Pending<T>];
      this.pending.delete(oldKey);
      if (old.count) this.emit(old.last, old.count);
    }
    this.emit(what, 1);
    this.pending.set(key, { until: now + this.windowMs, count: 0, last: what });
  }

  /** Writes the counts whose window is over (a new window opens for each: still one record a window)
   *  and forgets the sources with nothing left to write. Called every windowMs (worker.ts start). */
  sweep(now: number): void {
    for (const [key, p] of this.pending) {
      if (now < p.until) continue;
      if (!p.count) {
        this.pending.delete(key);
        continue;
      }
      this.emit(p.last, p.count);
      p.count = 0;
      p.until = now + this.windowMs;
    }
  }

  /** Writes every count now, windows or not (the worker is stopping). */
  flush(): void {
    for (const p of this.pending.values()) if (p.count) this.emit(p.last, p.count);
    this.pending.clear();
  }

  /** Sources tracked. */
  get sources(): number {
    return this.pending.size;
  }
}
