// One diverted client connection as the worker holds it (worker.ts): what its HttpProxyConnection asks
// of the worker (upstream connections and their reuse, a verdict per request, a record per request and
// response), what its records say of it (ports, the connection's policy), and the source's count of
// open connections (source-limit.ts) it gives back when it ends.
import type { ConnectionOptions, HttpProxyConnection } from '../http/connection.ts';
import type { Exchange, ExchangeSink, Verdict } from '../http/exchange.ts';
import type { UpstreamReuse } from '../http/pair.ts';
import type { RequestHead } from '../http/parse.ts';
import type { RequestView } from '../http/rules.ts';
import type { UpstreamSocket } from '../http/socket.ts';
import type { Linked } from './link-list.ts';
import { type ProxySocket, workerIo } from './io.ts';
import type { RecordContext } from './records.ts';
import type { SourceKey } from './source-limit.ts';
import type { ConnectionPolicy, ProxyDecision } from './view.ts';
import type { ProxyWorker } from './worker.ts';

const UPSTREAM_CONNECT_TIMEOUT_MS = 10_000;

/**
 * One diverted client connection as its HttpProxyConnection sees it (upstream connections, their
 * reuse, a verdict per request, a record per request and response) and as its records see it (ports
 * and the connection's policy): one object with methods, not a closure each, per connection.
 */
export class Diverted implements ConnectionOptions, UpstreamReuse, ExchangeSink, RecordContext, Linked<Diverted> {
  readonly reuse: UpstreamReuse = this;
  readonly sink: ExchangeSink = this;
  readonly clientNoDelay = true; // the listener has TCP_NODELAY (sockets.ts)
  clientClosesFirst = false;
  /** The upstream pool key of the connection taken from the pool (undefined: none taken). */
  private taken?: string;
  /** Byte count at the last idle sweep, and since when it is that (ProxyWorker.closeIdle). -1: no
   *  sweep yet, the first one starts the clock (no clock read per connection; the timeout is an hour). */
  idleBytes = -1;
  idleSince = 0;
  /** The connection, and its clientWait() at the last head sweep (ProxyWorker.closeSlowHeads). */
  conn?: HttpProxyConnection = undefined;
  headMark = -1;
  /** decide()'s last decision and the verdict made of it. */
  private lastDecision?: ProxyDecision = undefined;
  private lastVerdict?: Verdict = undefined;
  /** ProxyWorker.clients' links. */
  prevLink?: Diverted = undefined;
  nextLink?: Diverted = undefined;

  constructor(
    private readonly w: ProxyWorker,
    readonly client: ProxySocket,
    private readonly dstIp: string,
    readonly dstPort: number,
    private readonly srcIp: string,
    readonly srcPort: number,
    public policy: ConnectionPolicy,
    /** Its source's key in the worker's SourceLimit (admitted there before this was made). */
    private source: SourceKey | undefined,
  ) {}

  /** Only connections that carried this identity's requests to this destination share a key. */
  private key(): string {
    const p = this.policy; // one per source, destination and port (ProxyView.connection)
    return (p.poolKey ??= `${p.src.identity}|${this.dstIp}|${this.dstPort}`);
  }

  connect(): UpstreamSocket {
    return workerIo.connect(this.dstIp, this.dstPort, UPSTREAM_CONNECT_TIMEOUT_MS);
  }

  take(): UpstreamSocket | undefined {
    this.taken = this.key();
    return this.w.upstreams.take(this.taken);
  }

  give(u: UpstreamSocket): boolean {
    return !this.w.stopping && this.taken === this.key() && this.w.upstreams.give(this.taken, u);
  }

  decide(_head: RequestHead, req: RequestView): Verdict {
    const view = this.w.view!;
    if (this.policy.revision !== view.revision) this.policy = view.connection(this.srcIp, this.dstIp, this.dstPort);
    const d = view.decide(this.policy, req);
    // Decisions are shared and read-only (view.ts), and so are verdicts: the last one again, not a copy.
    if (d !== this.lastDecision) {
      this.lastDecision = d;
      this.lastVerdict = { allowed: d.allowed, edits: d.edits, info: d };
    }
    return this.lastVerdict!;
  }

  request(x: Exchange): void {
    this.w.record('request', x, this);
  }

  response(x: Exchange): void {
    this.w.record('response', x, this);
  }

  /** Once per connection (SocketPair calls it once); also from the worker when the connection could
   *  not be set up: its source's count is given back exactly once either way. */
  onClose(): void {
    this.w.clients.delete(this);
    if (this.source !== undefined) this.w.sources.release(this.source);
    this.source = undefined;
  }
}
