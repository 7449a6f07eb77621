// The DNS proxy's UDP relay: a diverted query is checked against the policy (decide), refused by the
// proxy itself when the name is not allowed, else sent with a fresh message ID to the server the
// client asked. The server's answer is read, its names and addresses handed to `learn`, which resolves
// once they are in the datapath, and only then passed to the client unchanged (its ID restored), from
// the server's address (a transparent socket bound to it): the first connection to an answered address
// is never dropped.
//
// What may teach the agent an address: only a response from the very server and port asked, on the
// socket the query went out on, with the query's ID and question. Anything else is ignored. Source
// ports (RFC 5452): an upstream socket is connected to one server (the kernel delivers it only that
// server's datagrams) and serves at most UPSTREAM_QUERIES queries within UPSTREAM_MS before a fresh one
// (a fresh random port) takes over: an off-path forger must still guess port and ID, the port a server
// saw is of no use for long, and a port is not open long enough to be found by scanning side channels
// (SAD DNS). A socket per query cost more than the rest of a query's work (socket, bind, connect,
// epoll, close: the benchmark's largest item). An ICMP error on an upstream socket (real or forged: it
// needs no guessed ID) retires the socket and answers its queries in flight SERVFAIL: the clients ask
// again; no answer is taken from a socket in error.
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import { closeFd, transparentUdpSocket } from '../l7/proxy/sockets.ts';
import { answersQuery, failure, MessageReader, RCODE, refusal, type Answer, type Query } from './message.ts';
import { dnsRecord, loopback, type DnsDecision, type DnsProxyDeps, type DnsStats, type Peer } from './types.ts';

export interface UdpRelayDeps extends Pick<DnsProxyDeps, 'learn' | 'record' | 'originalDestination' | 'log' | 'cacheAnswer'> {
  /** A worker thread's verdict may have to come from the agent's thread (a promise). */
  decide(src: Peer, dst: Peer, proto: 'udp', query: Query): DnsDecision | Promise<DnsDecision>;
}
interface Pending {
  client: Peer;
  server: Peer;
  /** The upstream socket it was sent on; its ID is unique there. */
  up: Upstream;
  id: number;
  clientId: number;
  query: Query;
  /** The client's datagram (its ID overwritten): the datapath's answer cache is keyed by its question. */
  raw: Buffer;
  decision: DnsDecision;
  /** performance.now() when forwarded. */
  t0: number;
  deadline: number;
}

/** A connected UDP socket to one server (a kernel-chosen random source port), shared by at most
 *  UPSTREAM_QUERIES queries within UPSTREAM_MS, then retired (closed once its last query is done). */
interface Upstream {
  key: string;
  socket: dgram.Socket;
  byId: Map<number, Pending>;
  uses: number;
  born: number;
  connected: boolean;
  /** Queries sent before connect() completed. */
  queue: Buffer[];
  retired: boolean;
}

/** Queries waiting for their server. */
const MAX_PENDING = 4096;
/** How many queries, and for how long, one upstream source port serves (see the header). */
const UPSTREAM_QUERIES = 256;
const UPSTREAM_MS = 1000;
const SWEEP_MS = 100;
const REPLY_SOCKET_IDLE_MS = 60_000;
const normalizeAddr = (ip: string) => ip.replace(/^::ffff:/, '').toLowerCase();
/** Addresses are IP literals: no resolver round trip (and no extra tick) per datagram. */
const literal = (family: 4 | 6) => (address: string, _o: unknown, cb: (err: null, address: string, family: number) => void) =>
  cb(null, address, family);

/** Unpredictable 16-bit message IDs (Math.random's state can be read off its outputs), drawn in bulk. */
class RandomIds {
  private buf = Buffer.alloc(0);
  private at = 0;
  next(): number {
    if (this.at + 2 > this.buf.length) {
      this.buf = crypto.randomBytes(4096);
      this.at = 0;
    }
    const v = this.buf.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }
}

export class UdpRelay {
  /** In sending order, so in deadline order (one timeout for all): the sweep stops at the first live one. */
  private readonly pending = new Set<Pending>();
  private readonly upstreams = new Map<string, Upstream>();
  private readonly replies = new Map<string, { socket: dgram.Socket; used: number }>();
  private readonly ids = new RandomIds();
  private readonly reader = new MessageReader();
  /** Runs only while a query waits or an upstream socket is open: an idle agent's wake-ups cost its
   *  node's pods (docs/performance-history.md, issue 17). */
  private sweep?: NodeJS.Timeout;
  private readonly idleSweep: NodeJS.Timeout;

  constructor(
    private readonly d: UdpRelayDeps,
    private readonly timeoutMs: number,
    private readonly stats: DnsStats,
    /** Worker threads each bind reply sockets to the same server addresses (SO_REUSEPORT). */
    private readonly sharedReplyAddresses = false,
  ) {
    this.idleSweep = setInterval(() => this.closeIdleReplySockets(), 10_000);
    this.idleSweep.unref();
  }

  onDatagram(msg: Buffer, client: Peer): void {
    const server = this.d.originalDestination(client);
    if (!server || loopback(server.ip)) return; // not diverted by the datapath: a local process
    const query = this.reader.query(msg);
    this.stats.queries++;
    if (!query) {
      this.replyUdp(server, client, refusal(msg, RCODE.FORMERR));
      this.stats.errors++;
      return;
    }
    const decision = this.d.decide(client, server, 'udp', query);
    if (decision instanceof Promise) {
      // A worker thread asks the agent's thread about a sender, server and name it has not seen; when
      // that fails nothing is forwarded (the client gets SERVFAIL and asks again).
      decision.then(
        (v) => this.forward(msg, client, server, query, v),
        (err: unknown) => {
          this.d.log.warn({ err, name: query.name }, 'no verdict on a DNS query: SERVFAIL to the client');
          this.replyUdp(server, client, refusal(msg, RCODE.SERVFAIL));
          this.stats.errors++;
        },
      );
      return;
    }
    this.forward(msg, client, server, query, decision);
  }

  private forward(msg: Buffer, client: Peer, server: Peer, query: Query, decision: DnsDecision): void {
    if (!decision.allowed) {
      this.stats.refused++;
      this.replyUdp(server, client, refusal(msg, RCODE.REFUSED));
      this.d.record(dnsRecord('query', 'udp', client, server, query, decision, 'refused', 'denied'));
      return;
    }
    if (this.pending.size >= MAX_PENDING) {
      this.replyUdp(server, client, refusal(msg, RCODE.SERVFAIL));
      this.stats.errors++;
      return;
    }
    const up = this.upstreamTo(server);
    let id = this.ids.next();
    while (up.byId.has(id)) id = this.ids.next();
    const t0 = performance.now();
    const p: Pending = {
      client,
      server,
      up,
      id,
      clientId: query.id,
      query,
      raw: msg,
      decision,
      t0,
      deadline: t0 + this.timeoutMs,
    };
    this.pending.add(p);
    if (!this.sweep) {
      this.sweep = setInterval(() => this.expirePending(), SWEEP_MS);
      this.sweep.unref();
    }
    up.byId.set(id, p);
    this.stats.forwarded++;
    this.d.record(dnsRecord('query', 'udp', client, server, query, decision, 'forwarded'));
    msg.writeUInt16BE(id, 0); // msg is this datagram's own buffer: nothing else reads its ID
    if (up.connected) up.socket.send(msg);
    else up.queue.push(msg);
  }

  /** The upstream socket for the next query to `server`: the current one, or a fresh one (a fresh
   *  random source port) when it has served its queries or its time. */
  private upstreamTo(server: Peer): Upstream {
    const key = `${server.ip}|${server.port}`;
    const now = performance.now();
    let up = this.upstreams.get(key);
    if (up && (up.uses >= UPSTREAM_QUERIES || now - up.born > UPSTREAM_MS)) {
      this.retire(up);
      up = undefined;
    }
    if (!up) {
      const v6 = server.ip.includes(':');
      const socket = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4', lookup: literal(v6 ? 6 : 4) as never });
      const u: Upstream = { key, socket, byId: new Map(), uses: 0, born: now, connected: false, queue: [], retired: false };
      socket.on('message', (m, rinfo) => this.onUpstream(u, m, rinfo.address, rinfo.port));
      socket.on('error', (err) => {
        this.d.log.warn({ err, server }, 'DNS proxy upstream socket error');
        this.failUpstream(u);
      });
      // connect(): the kernel picks a random ephemeral port and delivers only the server's datagrams.
      socket.connect(server.port, server.ip, () => {
        u.connected = true;
        for (const m of u.queue) socket.send(m);
        u.queue = [];
      });
      this.upstreams.set(key, (up = u));
    }
    up.uses++;
    return up;
  }

  /** Takes no new queries; closed when its last one is done. */
  private retire(up: Upstream): void {
    up.retired = true;
    if (this.upstreams.get(up.key) === up) this.upstreams.delete(up.key);
    if (!up.byId.size) up.socket.close();
  }

  private failUpstream(up: Upstream): void {
    for (const p of [...up.byId.values()]) this.onTimeout(p, 'upstream error');
    if (!up.retired) this.retire(up);
  }

  private finish(p: Pending): boolean {
    if (!this.pending.delete(p)) return false;
    const up = p.up;
    up.byId.delete(p.id);
    if (up.retired && !up.byId.size) up.socket.close();
    return true;
  }

  private onUpstream(up: Upstream, msg: Buffer, fromIp: string, fromPort: number): void {
    const p = msg.length >= 12 ? up.byId.get(msg.readUInt16BE(0)) : undefined;
    if (!p || fromPort !== p.server.port || normalizeAddr(fromIp) !== normalizeAddr(p.server.ip)) {
      this.stats.ignored++;
      return;
    }
    const answer = this.reader.answer(msg);
    if (answer && !answersQuery(answer, p.query)) {
      this.stats.ignored++;
      return;
    } // not this question: wait for the real one
    if (!this.finish(p)) return;
    // Before learning: an answer cached in the datapath expires before the addresses it taught.
    const arrivedNs = this.d.cacheAnswer ? process.hrtime.bigint() : 0n;
    if (answer && p.decision.endpoint !== undefined && answer.ips.length) {
      const tAnswer = performance.now();
      const learning = this.d.learn(p.decision.endpoint, answer);
      if (!learning) {
        this.releaseUdp(p, msg, answer, arrivedNs, performance.now() - tAnswer);
        return;
      }
      learning.then(
        () => this.releaseUdp(p, msg, answer, arrivedNs, performance.now() - tAnswer),
        (err: unknown) => {
          // Not in the datapath: the client would be refused its first connection. It gets SERVFAIL
          // and asks again.
          this.d.log.warn({ err, name: p.query.name }, 'cannot enforce a DNS answer: SERVFAIL to the client');
          this.replyUdp(p.server, p.client, refusal(msg, RCODE.SERVFAIL));
          this.stats.errors++;
          this.d.record(
            dnsRecord('response', 'udp', p.client, p.server, p.query, p.decision, 'error', 'policy update failed', answer),
          );
        },
      );
      return;
    }
    this.releaseUdp(p, msg, answer, arrivedNs);
  }

  /** The server's bytes to the client, its ID restored (msg is this datagram's own buffer). */
  private releaseUdp(p: Pending, msg: Buffer, answer: Answer | undefined, arrivedNs: bigint, learnMs?: number): void {
    msg.writeUInt16BE(p.clientId, 0);
    this.replyUdp(p.server, p.client, msg);
    if (answer && !answer.rcode && this.d.cacheAnswer) this.d.cacheAnswer(p.client, p.server, p.decision, p.raw, msg, arrivedNs);
    const latencyNs = Math.round((performance.now() - p.t0) * 1e6);
    this.d.record(
      dnsRecord(
        'response',
        'udp',
        p.client,
        p.server,
        p.query,
        p.decision,
        'forwarded',
        undefined,
        answer,
        latencyNs,
        learnMs !== undefined ? Math.round(learnMs * 1e6) : undefined,
      ),
    );
  }

  /** All queries have the same timeout: the oldest pending ones are the first to expire. Upstream
   *  sockets past their time retire here too (not only when the next query comes): one to a server
   *  asked once is not kept open. */
  private expirePending(): void {
    const now = performance.now();
    for (const p of this.pending) {
      if (p.deadline > now) break;
      this.onTimeout(p);
    }
    for (const up of this.upstreams.values()) if (now - up.born > UPSTREAM_MS) this.retire(up);
    if (!this.pending.size && !this.upstreams.size) {
      clearInterval(this.sweep);
      this.sweep = undefined;
    }
  }

  private onTimeout(p: Pending, reason = 'upstream timeout'): void {
    if (!this.finish(p)) return;
    this.stats.errors++;
    this.replyUdp(p.server, p.client, failure(p.query, RCODE.SERVFAIL));
    this.d.record(dnsRecord('response', 'udp', p.client, p.server, p.query, p.decision, 'error', reason));
  }

  /** Sends to the client from the server's address and port, as if the server answered. */
  private replyUdp(server: Peer, client: Peer, msg: Buffer): void {
    const key = `${server.ip}|${server.port}`;
    let r = this.replies.get(key);
    if (!r) {
      let fd: number;
      try {
        fd = transparentUdpSocket(server.ip, server.port, { reusePort: this.sharedReplyAddresses });
      } catch (err) {
        this.d.log.warn({ err, server }, 'DNS proxy: cannot answer as the server');
        return;
      }
      const v6 = server.ip.includes(':');
      const socket = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4', lookup: literal(v6 ? 6 : 4) as never });
      socket.on('error', (err) => this.d.log.warn({ err }, 'DNS proxy reply socket error'));
      socket.on('message', () => undefined); // nothing is routed to it: it only sends
      try {
        socket.bind({ fd });
      } catch (err) {
        closeFd(fd);
        throw err;
      }
      this.replies.set(key, (r = { socket, used: Date.now() }));
    }
    r.used = Date.now();
    r.socket.send(msg, client.port, client.ip);
  }

  private closeIdleReplySockets(): void {
    const now = Date.now();
    for (const [k, r] of this.replies)
      if (now - r.used > REPLY_SOCKET_IDLE_MS) {
        r.socket.close();
        this.replies.delete(k);
      }
  }

  close(): void {
    clearInterval(this.sweep);
    clearInterval(this.idleSweep);
    for (const p of [...this.pending]) this.finish(p);
    for (const up of [...this.upstreams.values()]) this.retire(up);
    for (const r of this.replies.values()) r.socket.close();
    this.replies.clear();
  }
}
