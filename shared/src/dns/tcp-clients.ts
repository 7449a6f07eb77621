// The DNS proxy's open TCP client connections, bounded. Every endpoint whose DNS is diverted can open
// TCP connections to the proxy, and each holds a socket and its buffers in the agent: without a bound,
// one pod that opens connections and never sends (or sends a byte now and then, which resets an idle
// timer) grows the agent's memory and file descriptors until it runs out, and DNS fails for every pod.
//
// So: an idle connection is closed after `idleMs`; one client address holds at most `perClient`, and
// all together at most `max`. Past a limit the least recently active connection goes (of that address
// first, else of all): a client that floods only ever closes its own connections, and a flood spread
// over many addresses cannot lock new clients out (refusing the newcomer would). Closing fails
// closed: a query in flight on a closed connection is never answered, and a real resolver asks again on
// a new connection. Its answer may still be learned (its addresses put in the datapath for the
// endpoint) when learning had begun, or the answer came from upstream before the close took the
// upstream connection down (tcp.ts): the policy allowed that query, so those are addresses its rule
// lets the endpoint reach anyway, as with a UDP answer whose client stopped waiting; nothing else is
// let through. Each close is counted and logged (at most once every `logEveryMs`, with the count
// since the last line), and closedBy() says which limit closed a connection, for the flow records of
// the queries it took down (tcp.ts).
import type net from 'node:net';

export interface TcpClientLimits {
  /** Connections open at once, all clients together. */
  max: number;
  /** Connections open at once from one client address. */
  perClient: number;
  /** A connection with no traffic either way for this long is closed. */
  idleMs: number;
}

export const TCP_CLIENT_LIMITS: TcpClientLimits = { max: 1024, perClient: 64, idleMs: 30_000 };

type Log = { warn(o: object, msg: string): void };

export class TcpClients {
  /** Each open connection and its client address, least recently active first (a Map keeps insertion
   *  order; touch() moves a connection to the end). */
  private readonly all = new Map<net.Socket, string>();
  private readonly byClient = new Map<string, Set<net.Socket>>();
  private readonly limits: TcpClientLimits;
  /** Connections closed to stay within the limits (the log says which limit). */
  evicted = 0;
  private unlogged = 0;
  private lastLog = -Infinity;
  /** Why the proxy closed a connection, for those it closed itself (a limit or the idle timeout). */
  private readonly closedWhy = new WeakMap<net.Socket, string>();

  constructor(
    limits: Partial<TcpClientLimits> | undefined,
    private readonly log: Log,
    private readonly logEveryMs = 10_000,
  ) {
    this.limits = { ...TCP_CLIENT_LIMITS, ...limits };
  }

  get size(): number {
    return this.all.size;
  }

  /** Takes a new connection from `client` in, closing the least recently active one first if a
   *  limit is reached. The connection leaves the set however it ends ('close' follows every end:
   *  error, idle timeout, the peer's RST, its FIN once our answers are out (tcp.ts), destroy). */
  admit(c: net.Socket, client: string): void {
    let mine = this.byClient.get(client);
    if (!mine) this.byClient.set(client, (mine = new Set()));
    if (mine.size >= this.limits.perClient) this.evict(first(mine), 'perClient', client, mine.size);
    else if (this.all.size >= this.limits.max) this.evict(first(this.all.keys()), 'max', client, this.all.size);
    this.all.set(c, client);
    mine.add(c);
    c.setTimeout(this.limits.idleMs, () => {
      this.closedWhy.set(c, `connection idle for ${this.limits.idleMs / 1000} s (--dns-proxy-tcp-idle-timeout)`);
      c.destroy();
    });
    c.once('close', () => this.remove(c));
  }

  /** The client sent something: this connection is now its most recently active. */
  touch(c: net.Socket): void {
    const client = this.all.get(c);
    if (client === undefined) return;
    this.all.delete(c);
    this.all.set(c, client);
    const mine = this.byClient.get(client);
    mine?.delete(c);
    mine?.add(c);
  }

  /** Why the proxy closed `c` (which limit, or the idle timeout); undefined when it did not. */
  closedBy(c: net.Socket): string | undefined {
    return this.closedWhy.get(c);
  }

  /** Closes them all (the proxy stops). */
  closeAll(): void {
    for (const c of this.all.keys()) c.destroy();
  }

  private remove(c: net.Socket): void {
    const client = this.all.get(c);
    if (client === undefined) return;
    this.all.delete(c);
    const mine = this.byClient.get(client);
    if (mine?.delete(c) && !mine.size) this.byClient.delete(client);
  }

  /** Out of the set at once (the limit holds before its 'close' comes), then destroyed. */
  private evict(c: net.Socket, limit: 'perClient' | 'max', newcomer: string, open: number): void {
    const victim = this.all.get(c);
    this.remove(c);
    this.closedWhy.set(
      c,
      limit === 'perClient'
        ? `connection evicted: ${victim} over ${this.limits.perClient} connections (--dns-proxy-tcp-max-per-client)`
        : `connection evicted: over ${this.limits.max} connections (--dns-proxy-tcp-max)`,
    );
    c.destroy();
    this.evicted++;
    this.unlogged++;
    const now = performance.now();
    if (now - this.lastLog < this.logEveryMs) return;
    this.lastLog = now;
    this.log.warn(
      { limit, value: this.limits[limit], open, client: victim, newcomer, closed: this.unlogged, closedTotal: this.evicted },
      limit === 'perClient'
        ? `DNS proxy: client ${victim} opened more than ${this.limits.perClient} TCP connections: closed its least recently active one (queries in flight there go unanswered)`
        : `DNS proxy: more than ${this.limits.max} TCP connections open: closed the least recently active one, from ${victim} (queries in flight there go unanswered)`,
    );
    this.unlogged = 0;
  }
}

const first = (it: Iterable<net.Socket>): net.Socket => it[Symbol.iterator]().next().value as net.Socket;
