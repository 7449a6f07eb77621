// A proxy worker process: the transparent listener, one HttpProxyConnection per diverted connection,
// and the control connection to the agent (policy in, request/response records out).
//
// It listens only once it has a policy: until then the datapath finds no listener and drops the
// diverted connections (fail closed). It outlives the agent: when the control connection drops it
// keeps enforcing the last policy and reconnects, so an agent restart cuts no L7 connection; records
// made while the agent is away are counted as lost. It exits when told to (draining open connections)
// or when the agent's state directory is gone.
import fs from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks'; // not the global accessor: raw-socket.ts says why
import { HttpProxyConnection } from '../http/connection.ts';
import type { Exchange } from '../http/exchange.ts';
import { Diverted } from './diverted.ts';
import { type AgentMessage, encodeFrame, FrameReader, type WorkerMessage } from './frames.ts';
import { LinkList } from './link-list.ts';
import { type ProxySocket, workerIo } from './io.ts';
import type { RecordContext } from './records.ts';
import { RecordSender } from './record-sender.ts';
import { resetOnClose, SocketError, transparentListener } from './sockets.ts';
import {
  defaultMaxConnsPerSource,
  nofileOf,
  REFUSAL_RECORD_MS,
  RefusalLog,
  RefusalRecords,
  refusedExchange,
  type SourceKey,
  SourceLimit,
} from './source-limit.ts';
import { registerListener } from './steering.ts';
import { UpstreamPool } from './upstream-pool.ts';
import { ProxyView } from './view.ts';

export interface WorkerOptions {
  control: string;
  port: number;
  index: number;
  version: string;
  /** The datapath's proxy_listeners map (steering.ts); without it the datapath assigns SYNs at tc. */
  listenersMap?: string;
  /** The worker exits when this path disappears (the agent's state was removed). */
  watchPath: string;
  /** Connections one source may hold open at this worker (source-limit.ts); 0 or none: a sixteenth of
   *  the worker's fd limit, at most 1,024 (defaultMaxConnsPerSource). */
  maxConnsPerSource?: number;
  log: (msg: string, extra?: Record<string, unknown>) => void;
}

const RECONNECT_MS = 500;
/** A client connection with no byte either way for this long is closed (checked every IDLE_SWEEP_MS:
 *  a socket timeout would re-arm a timer on every read and write, several times per request). */
const IDLE_TIMEOUT_MS = 60 * 60 * 1000;
const IDLE_SWEEP_MS = 60_000;
/** See closeSlowHeads; MEMBRANE_L7_HEAD_SWEEP_MS (the agent's environment reaches its workers) for tests. */
const HEAD_SWEEP_MS = Number(process.env.MEMBRANE_L7_HEAD_SWEEP_MS) || 30_000;

/** The worker's soft RLIMIT_NOFILE (Node raised it to the hard one at start); NaN when unreadable. */
function ownNofile(): number {
  try {
    return nofileOf(fs.readFileSync('/proc/self/limits', 'utf8'));
  } catch {
    return Number.NaN;
  }
}

export class ProxyWorker {
  view?: ProxyView;
  private readonly servers: { close(): void }[] = [];
  /** Families whose listener is registered for the socket lookup (steering.ts): the proxy may close first. */
  private readonly steered = new Set<string>();
  private control?: net.Socket;
  /** Records to the agent (record-sender.ts). */
  private readonly records = new RecordSender(
    () => this.control,
    (m) => this.send(m),
  );
  /** Open client connections (Diverted is theirs, below; `clients`, `view`, `upstreams`, `stopping`
   *  and `record` are what it uses of the worker). A linked list, not a Set: link-list.ts says why. */
  readonly clients = new LinkList<Diverted>();
  private stats = { connections: 0, requests: 0, denied: 0 };
  stopping = false;
  private readonly timeOrigin = performance.timeOrigin;
  /** Idle upstream connections by source identity and original destination (upstream-pool.ts). */
  readonly upstreams = new UpstreamPool();
  /** Open client connections per source, bounded (source-limit.ts). */
  readonly sources: SourceLimit;
  private readonly refusals: RefusalLog;
  /** Refusals as records, at most one per source a second with their count (source-limit.ts). */
  private readonly refusalRecords = new RefusalRecords<RecordContext>((ctx, refused) =>
    this.record('request', refusedExchange(), { ...ctx, refused }),
  );

  constructor(private readonly o: WorkerOptions) {
    this.sources = new SourceLimit(o.maxConnsPerSource || defaultMaxConnsPerSource(ownNofile()));
    this.refusals = new RefusalLog((msg, extra) => o.log(msg, extra));
  }

  start(): void {
    this.connectControl();
    setInterval(() => this.sendStats(), 5000).unref();
    setInterval(() => this.closeIdle(), IDLE_SWEEP_MS).unref();
    setInterval(() => this.closeSlowHeads(), HEAD_SWEEP_MS).unref();
    setInterval(() => this.refusalRecords.sweep(performance.now()), REFUSAL_RECORD_MS).unref();
    setInterval(() => {
      if (!fs.existsSync(this.o.watchPath)) this.exit('the agent state directory is gone');
    }, 2000).unref();
  }

  // ---- control channel ---------------------------------------------------------------------------

  private connectControl(): void {
    if (this.stopping) return;
    const s = net.connect(this.o.control);
    const reader = new FrameReader<AgentMessage>((m) => this.onMessage(m));
    s.on('connect', () => {
      this.control = s;
      this.send({ t: 'hello', pid: process.pid, index: this.o.index, port: this.o.port, version: this.o.version, kind: 'http' });
      this.records.sendHeld(); // what was made while no agent was there: flows and counts
    });
    s.on('data', (d: Buffer) => {
      try {
        reader.push(d);
      } catch (err) {
        this.o.log('bad control frame', { err: String(err) });
        s.destroy();
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      if (this.control === s) this.control = undefined;
      setTimeout(() => this.connectControl(), RECONNECT_MS).unref();
    });
  }

  private send(m: WorkerMessage): void {
    this.control?.write(encodeFrame(m));
  }

  private onMessage(m: AgentMessage): void {
    if (m.t === 'policy') {
      this.view = new ProxyView(m.snapshot);
      // Endpoints or identities may have changed: no connection made before carries on.
      this.upstreams.clear();
      if (!this.servers.length) this.listen();
    } else if (m.t === 'config') {
      this.configure(m.maxConnsPerSource);
      this.records.configure(m.holdFlows ?? 0, m.follow ?? true);
    } else if (m.t === 'collect') {
      this.records.collect(m.id);
    } else if (m.t === 'stop') {
      this.drainAndExit(m.drainMs);
    }
  }

  /** The agent's settings (sent on every hello): an agent restarted with another
   *  --l7-proxy-max-conns-per-source applies it to the workers it adopts, without restarting them. */
  private configure(maxConnsPerSource: number): void {
    const max = maxConnsPerSource > 0 ? maxConnsPerSource : defaultMaxConnsPerSource(ownNofile());
    if (max === this.sources.max) return;
    const was = this.sources.max;
    this.sources.setMax(max);
    this.o.log('connection limit per source set by the agent', { maxConnsPerSource: max, was });
  }

  // ---- listening ---------------------------------------------------------------------------------

  private listen(): void {
    for (const family of [4, 6] as const) {
      let fd: number;
      try {
        fd = transparentListener(family, this.o.port);
      } catch (e) {
        if (family === 6 && e instanceof SocketError) continue; // a node without IPv6
        this.o.log('cannot listen', { err: String(e) });
        this.exit('cannot listen');
        return;
      }
      if (this.o.listenersMap) {
        try {
          registerListener(this.o.listenersMap, family, this.o.index, this.o.port, fd);
          this.steered.add(family === 4 ? 'IPv4' : 'IPv6');
        } catch (e) {
          this.o.log('cannot register the listener for the socket lookup (SYNs are assigned at tc instead)', { err: String(e) });
        }
      }
      // Accepted connections are EpollSockets (io.ts) or RawSockets, never net.Sockets (raw-socket.ts says why).
      this.servers.push(
        workerIo.listen(
          fd,
          4096,
          (c) => this.accept(c),
          (errno) => this.o.log('accept error', { errno }),
          family === 4, // transparentListener keeps IPv4 SYNs: each connection's addresses come from its SYN
        ),
      );
    }
    this.o.log('listening', {
      port: this.o.port,
      families: this.servers.length,
      io: workerIo.name,
      maxConnsPerSource: this.sources.max,
    });
  }

  private accept(client: ProxySocket): void {
    const dstIp = client.localAddress;
    const dstPort = client.localPort;
    const srcIp = client.remoteAddress;
    const srcPort = client.remotePort;
    // Only the datapath's diverted connections: one to the listener's own address is a local process.
    if (
      !this.view ||
      !dstIp ||
      !srcIp ||
      dstPort === undefined ||
      srcPort === undefined ||
      dstIp === '127.0.0.1' ||
      dstIp === '::1'
    ) {
      client.destroy();
      return;
    }
    const policy = this.view.connection(srcIp, dstIp, dstPort);
    // A local endpoint by its id (both its addresses count together), anything else by its address:
    // source-limit.ts says why.
    const source = policy.src.endpoint ?? srcIp;
    if (!this.sources.admit(source)) {
      this.refuse(client, source, { srcPort, dstPort, policy });
      return;
    }
    const d = new Diverted(this, client, dstIp, dstPort, srcIp, srcPort, policy, source);
    d.clientClosesFirst = !this.steered.has(client.remoteFamily ?? '');
    this.clients.add(d);
    this.stats.connections++;
    try {
      d.conn = new HttpProxyConnection(d);
    } catch (e) {
      d.onClose(); // its count back; the listener closes the socket (fail closed)
      throw e;
    }
    client.start(); // reading starts once the connection has its listeners
  }

  /** A connection whose source holds sources.max already: reset (SO_LINGER 0: no FIN handshake and no
   *  TIME_WAIT left in the node's stack per refusal, which a flood would pile up) before anything is
   *  read or any upstream connection made, nothing kept. The operator sees it as an L7 flow DROPPED
   *  with the reason conn-limit (flows.ts) and in membrane_l7_connections_refused_total (metrics.ts),
   *  from the same records as every request, one per source a second at most, each with its count
   *  (RefusalRecords); the log says it at most every 10 s. */
  private refuse(client: ProxySocket, source: SourceKey, ctx: RecordContext): void {
    resetOnClose(client);
    client.destroy();
    const now = performance.now();
    this.refusals.refused(ctx.policy.src.ip, this.sources.max, now);
    this.refusalRecords.refused(source, ctx, now);
  }

  /** A client gets one to two HEAD_SWEEP_MS for a request head, from its connection or its last
   *  response: seen owing the same head at two sweeps in a row, its connection is closed. Without it a
   *  client trickling a head (slowloris) or idling between requests held the worker's fd and memory for
   *  the hour of the idle timeout, and enough such connections from one pod would run the proxy, and
   *  every pod's L7 traffic, out of them. nginx: client_header_timeout 60 s, keepalive_timeout 75 s.
   *  The same for a client told FIN after its last response that does not close (clientWait
   *  CLIENT_CLOSE_OWED): the proxy reads and drops its bytes, and one trickling a byte now and then
   *  held the fd for ever (the idle timeout sees the bytes). nginx: lingering_time 30 s. */
  private closeSlowHeads(): void {
    this.clients.forEach((d) => {
      const owed = d.conn?.clientWait() ?? -1;
      if (owed !== -1 && owed === d.headMark) d.client.destroy();
      else d.headMark = owed;
    });
  }

  private closeIdle(): void {
    const now = Date.now();
    this.clients.forEach((d) => {
      const c = d.client;
      const bytes = c.bytesRead + c.bytesWritten;
      if (bytes !== d.idleBytes) {
        d.idleBytes = bytes;
        d.idleSince = now;
      } else if (now - d.idleSince >= IDLE_TIMEOUT_MS) c.destroy();
    });
  }

  // ---- records -----------------------------------------------------------------------------------

  record(kind: 'request' | 'response', x: Exchange, ctx: RecordContext): void {
    if (kind === 'request' && x.localReason !== 'conn-limit') {
      this.stats.requests++;
      if (x.localReason === 'denied') this.stats.denied++;
    }
    // No clock read here. A request's record is made as its head completes (connection.ts admit): its
    // exchange's start is that time. A response's is made once it is complete and carries the time its
    // head went out (start + latency: the clock read answered() took), as its latency does; for a
    // response read whole, as most are, the same moment, for a longer one when the upstream answered.
    this.records.record(kind, x, ctx, this.timeOrigin + x.startMs + (kind === 'request' ? 0 : x.latencyNs / 1e6));
  }

  private sendStats(): void {
    this.send({ t: 'stats', ...this.stats, rssBytes: this.rss() });
  }

  private lastRss = 0;
  /** The resident size, or the last one read: Node reads it from /proc/self/stat, which takes an fd, and
   *  a worker out of fds (a flood of connections: integration/l7-epoll-attack.test.ts) got EMFILE thrown
   *  and exited as crashed, every connection with it. */
  private rss(): number {
    try {
      this.lastRss = process.memoryUsage.rss();
    } catch {
      /* out of fds: the last one read */
    }
    return this.lastRss;
  }

  // ---- stopping ----------------------------------------------------------------------------------

  private drainAndExit(drainMs: number): void {
    if (this.stopping) return;
    this.stopping = true;
    for (const s of this.servers) s.close();
    this.upstreams.clear();
    this.refusalRecords.flush();
    this.records.sendHeld(); // the writer's batch and what is held, whether or not it holds
    if (!this.clients.size) {
      this.exit('stopped');
      return;
    }
    const timer = setTimeout(() => this.exit('stopped (drain time over)'), drainMs);
    const check = setInterval(() => {
      if (!this.clients.size) {
        clearTimeout(timer);
        clearInterval(check);
        this.exit('stopped');
      }
    }, 50);
  }

  private exit(why: string): void {
    this.o.log('exiting', { why });
    this.refusalRecords.flush();
    this.records.sendHeld(); // the writer's batch and what is held, whether or not it holds
    this.clients.forEach((d) => {
      d.client.destroy();
    });
    process.exit(0);
  }
}
