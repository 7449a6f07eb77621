// The DNS proxy: the datapath diverts DNS from endpoints whose egress entry carries the DNS proxy's
// port (toPorts[].rules.dns) to its sockets on 127.0.0.1/::1, UDP and TCP (bpf/lib/proxy.h). For each
// query it asks the policy (decide), answers REFUSED itself when the name is not allowed, else sends
// the client's bytes (with a fresh message ID) to the server the client asked. The server's answer is
// read, its names and addresses handed to `learn`, which resolves once they are in the datapath, and
// only then passed to the client unchanged (its ID restored), from the server's address (a transparent
// socket bound to it): the first connection to an answered address is never dropped.
//
// What may teach the agent an address: only a response from the very server and port asked, on the
// socket of that one query (a fresh source port per query, RFC 5452: an off-path forger must guess
// port and ID, and a server that saw one of our queries learns nothing about the next), with the
// query's ID and question. Anything else is ignored (UDP) or answered SERVFAIL (TCP).
//
// Runs in the agent, not in the HTTP proxy's worker processes: every answer needs the agent's ipcache
// write before it may be released, a DNS exchange lasts milliseconds (an agent restart cuts nothing a
// client does not retry), and with the agent down the datapath finds no socket and drops DNS from the
// selected endpoints (fail closed).
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { closeFd, SocketError, transparentListener, transparentUdpSocket } from '../l7/proxy/sockets.ts';
import { answersQuery, RCODE, readAnswer, readQuery, refusal, type Answer, type Query } from './message.ts';

export interface Peer { ip: string; port: number }

export interface DnsDecision {
  allowed: boolean;
  /** The sending endpoint (undefined: not an endpoint of this node). */
  endpoint?: number;
  identity: number;
  peerIdentity: number;
  /** The policy rule behind the verdict (0: none, e.g. default deny). */
  ruleId: number;
  /** The DNS rule that allowed the name ("spec.egress[0].toPorts[0].rules.dns[1]"). */
  rulePath?: string;
}

/** One query or response as flows and metrics see it. */
export interface DnsRecord {
  kind: 'query' | 'response';
  timeMs: number;
  proto: 'udp' | 'tcp';
  src: Peer;
  dst: Peer;
  query: Query;
  decision: DnsDecision;
  verdict: 'forwarded' | 'refused' | 'error';
  /** Why the proxy answered itself: refused by policy, upstream timeout, malformed. */
  reason?: string;
  answer?: Answer;
  latencyNs?: number;
  /** Time from the answer's arrival to the datapath holding its addresses. */
  learnNs?: number;
}

export interface DnsProxyDeps {
  port: number;
  decide(src: Peer, dst: Peer, proto: 'udp' | 'tcp', query: Query): DnsDecision;
  learn(endpoint: number, answer: Answer): Promise<void>;
  record(r: DnsRecord): void;
  /** Where a diverted datagram from `src` was going (the datapath's proxy_udp_dst). */
  originalDestination(src: Peer): Peer | undefined;
  log: { warn(o: object, msg: string): void; debug?(o: object, msg: string): void };
  upstreamTimeoutMs?: number;
}

interface Pending {
  client: Peer;
  server: Peer;
  /** This query's own upstream socket (its own source port). */
  socket: dgram.Socket;
  id: number;
  clientId: number;
  query: Query;
  decision: DnsDecision;
  t0: bigint;
  timer: NodeJS.Timeout;
}

/** Queries waiting for their server; each holds a socket (a file descriptor) until answered or timed out. */
const MAX_PENDING = 4096;
const REPLY_SOCKET_IDLE_MS = 60_000;
const loopback = (ip: string) => ip === '127.0.0.1' || ip === '::1' || ip.startsWith('127.');
const normalizeAddr = (ip: string) => ip.replace(/^::ffff:/, '').toLowerCase();

export class DnsProxy {
  private readonly listeners: dgram.Socket[] = [];
  private readonly tcpServers: net.Server[] = [];
  private readonly pending = new Set<Pending>();
  private readonly replies = new Map<string, { socket: dgram.Socket; used: number }>();
  private readonly tcpClients = new Set<net.Socket>();
  private sweep?: NodeJS.Timeout;
  private readonly timeoutMs: number;
  stats = { queries: 0, refused: 0, forwarded: 0, errors: 0, ignored: 0 };

  constructor(private readonly d: DnsProxyDeps) {
    this.timeoutMs = d.upstreamTimeoutMs ?? 5000;
  }

  /** Listens on both loopback addresses (IPv6 when the node has it), UDP and TCP. */
  async start(): Promise<void> {
    for (const ip of ['127.0.0.1', '::1']) {
      let fd: number;
      try { fd = transparentUdpSocket(ip, this.d.port, { reusePort: true }); } catch (e) {
        if (ip === '::1' && e instanceof SocketError) continue;
        throw e;
      }
      const s = dgram.createSocket({ type: ip === '::1' ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
      s.on('message', (msg, rinfo) => this.onDatagram(msg, { ip: rinfo.address, port: rinfo.port }));
      s.on('error', (err) => this.d.log.warn({ err }, 'DNS proxy socket error'));
      await new Promise<void>((resolve) => s.bind({ fd }, resolve));
      this.listeners.push(s);
      const tfd = transparentListener(ip === '::1' ? 6 : 4, this.d.port);
      const server = net.createServer((c) => this.onTcp(c));
      server.on('error', (err) => this.d.log.warn({ err }, 'DNS proxy listener error'));
      server.listen({ fd: tfd });
      this.tcpServers.push(server);
    }
    this.sweep = setInterval(() => this.closeIdleReplySockets(), 10_000);
    this.sweep.unref();
  }

  // ---- UDP -----------------------------------------------------------------------------------------

  private onDatagram(msg: Buffer, client: Peer): void {
    const server = this.d.originalDestination(client);
    if (!server || loopback(server.ip)) return; // not diverted by the datapath: a local process
    const query = readQuery(msg);
    this.stats.queries++;
    if (!query) { this.replyUdp(server, client, refusal(msg, RCODE.FORMERR)); this.stats.errors++; return; }
    const decision = this.d.decide(client, server, 'udp', query);
    if (!decision.allowed) {
      this.stats.refused++;
      this.replyUdp(server, client, refusal(msg, RCODE.REFUSED));
      this.d.record({ kind: 'query', timeMs: Date.now(), proto: 'udp', src: client, dst: server, query, decision, verdict: 'refused', reason: 'denied' });
      return;
    }
    if (this.pending.size >= MAX_PENDING) { this.replyUdp(server, client, refusal(msg, RCODE.SERVFAIL)); this.stats.errors++; return; }
    const socket = dgram.createSocket(server.ip.includes(':') ? 'udp6' : 'udp4');
    const out = Buffer.from(msg);
    const id = crypto.randomInt(0x10000); // unpredictable: Math.random's state can be read off its outputs
    out.writeUInt16BE(id, 0);
    const p: Pending = {
      client, server, socket, id, clientId: query.id, query, decision, t0: process.hrtime.bigint(),
      timer: setTimeout(() => this.onTimeout(p), this.timeoutMs),
    };
    this.pending.add(p);
    socket.on('message', (m, rinfo) => { void this.onUpstream(p, m, { ip: rinfo.address, port: rinfo.port }); });
    socket.on('error', (err) => { this.d.log.warn({ err, server }, 'DNS proxy upstream socket error'); this.onTimeout(p); });
    this.stats.forwarded++;
    this.d.record({ kind: 'query', timeMs: Date.now(), proto: 'udp', src: client, dst: server, query, decision, verdict: 'forwarded' });
    // connect(): the kernel picks a random ephemeral port and delivers only the server's datagrams.
    socket.connect(server.port, server.ip, () => socket.send(out));
  }

  private finish(p: Pending): boolean {
    if (!this.pending.delete(p)) return false;
    clearTimeout(p.timer);
    p.socket.close();
    return true;
  }

  private async onUpstream(p: Pending, msg: Buffer, from: Peer): Promise<void> {
    if (msg.length < 12 || msg.readUInt16BE(0) !== p.id || from.port !== p.server.port || normalizeAddr(from.ip) !== normalizeAddr(p.server.ip)) { this.stats.ignored++; return; }
    const answer = readAnswer(msg);
    if (answer && !answersQuery(answer, p.query)) { this.stats.ignored++; return; } // not this question: wait for the real one
    if (!this.finish(p)) return;
    const tAnswer = process.hrtime.bigint();
    let learnNs: bigint | undefined;
    if (answer && p.decision.endpoint !== undefined && answer.ips.length) {
      try {
        await this.d.learn(p.decision.endpoint, answer);
        learnNs = process.hrtime.bigint() - tAnswer;
      } catch (err) {
        // Not in the datapath: the client would be refused its first connection. It gets SERVFAIL
        // and asks again.
        this.d.log.warn({ err, name: p.query.name }, 'cannot enforce a DNS answer: SERVFAIL to the client');
        this.replyUdp(p.server, p.client, refusal(msg, RCODE.SERVFAIL));
        this.stats.errors++;
        this.d.record({ kind: 'response', timeMs: Date.now(), proto: 'udp', src: p.client, dst: p.server, query: p.query, decision: p.decision, verdict: 'error', reason: 'policy update failed', ...(answer ? { answer } : {}) });
        return;
      }
    }
    const out = Buffer.from(msg);
    out.writeUInt16BE(p.clientId, 0);
    this.replyUdp(p.server, p.client, out);
    this.d.record({
      kind: 'response', timeMs: Date.now(), proto: 'udp', src: p.client, dst: p.server, query: p.query, decision: p.decision, verdict: 'forwarded',
      ...(answer ? { answer } : {}), latencyNs: Number(process.hrtime.bigint() - p.t0), ...(learnNs !== undefined ? { learnNs: Number(learnNs) } : {}),
    });
  }

  private onTimeout(p: Pending): void {
    if (!this.finish(p)) return;
    this.stats.errors++;
    const q = Buffer.alloc(12);
    q.writeUInt16BE(p.clientId, 0);
    this.replyUdp(p.server, p.client, refusal(q, RCODE.SERVFAIL));
    this.d.record({ kind: 'response', timeMs: Date.now(), proto: 'udp', src: p.client, dst: p.server, query: p.query, decision: p.decision, verdict: 'error', reason: 'upstream timeout' });
  }

  /** Sends to the client from the server's address and port, as if the server answered. */
  private replyUdp(server: Peer, client: Peer, msg: Buffer): void {
    const key = `${server.ip}|${server.port}`;
    let r = this.replies.get(key);
    if (!r) {
      let fd: number;
      try { fd = transparentUdpSocket(server.ip, server.port); } catch (err) {
        this.d.log.warn({ err, server }, 'DNS proxy: cannot answer as the server');
        return;
      }
      const socket = dgram.createSocket(server.ip.includes(':') ? 'udp6' : 'udp4');
      socket.on('error', (err) => this.d.log.warn({ err }, 'DNS proxy reply socket error'));
      socket.on('message', () => undefined); // nothing is routed to it: it only sends
      try { socket.bind({ fd }); } catch (err) { closeFd(fd); throw err; }
      this.replies.set(key, (r = { socket, used: Date.now() }));
    }
    r.used = Date.now();
    r.socket.send(msg, client.port, client.ip);
  }

  private closeIdleReplySockets(): void {
    const now = Date.now();
    for (const [k, r] of this.replies) if (now - r.used > REPLY_SOCKET_IDLE_MS) { r.socket.close(); this.replies.delete(k); }
  }

  // ---- TCP -----------------------------------------------------------------------------------------

  private onTcp(c: net.Socket): void {
    const server: Peer = { ip: c.localAddress ?? '', port: c.localPort ?? 0 };
    const client: Peer = { ip: c.remoteAddress ?? '', port: c.remotePort ?? 0 };
    if (!server.ip || loopback(server.ip)) { c.destroy(); return; }
    this.tcpClients.add(c);
    c.setTimeout(30_000, () => c.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let up: net.Socket | undefined;
    let upBuf: Buffer = Buffer.alloc(0);
    const inflight = new Map<number, { query: Query; decision: DnsDecision; t0: bigint }>();
    const frame = (m: Buffer) => { const b = Buffer.allocUnsafe(2 + m.length); b.writeUInt16BE(m.length, 0); m.copy(b, 2); return b; };
    const onAnswer = async (msg: Buffer) => {
      if (msg.length < 12) return;
      const p = inflight.get(msg.readUInt16BE(0));
      if (!p) return;
      inflight.delete(msg.readUInt16BE(0));
      const answer = readAnswer(msg);
      if (answer && !answersQuery(answer, p.query)) {
        c.write(frame(refusal(msg, RCODE.SERVFAIL)));
        this.stats.errors++;
        this.d.record({ kind: 'response', timeMs: Date.now(), proto: 'tcp', src: client, dst: server, query: p.query, decision: p.decision, verdict: 'error', reason: 'answer to another question' });
        return;
      }
      const tAnswer = process.hrtime.bigint();
      let learnNs: number | undefined;
      if (answer && p.decision.endpoint !== undefined && answer.ips.length) {
        try { await this.d.learn(p.decision.endpoint, answer); learnNs = Number(process.hrtime.bigint() - tAnswer); } catch (err) {
          this.d.log.warn({ err, name: p.query.name }, 'cannot enforce a DNS answer: SERVFAIL to the client');
          c.write(frame(refusal(msg, RCODE.SERVFAIL)));
          return;
        }
      }
      c.write(frame(msg));
      this.d.record({ kind: 'response', timeMs: Date.now(), proto: 'tcp', src: client, dst: server, query: p.query, decision: p.decision, verdict: 'forwarded', ...(answer ? { answer } : {}), latencyNs: Number(process.hrtime.bigint() - p.t0), ...(learnNs !== undefined ? { learnNs } : {}) });
    };
    const upstream = () => {
      if (up) return up;
      up = net.connect({ host: server.ip, port: server.port });
      up.setTimeout(this.timeoutMs, () => up?.destroy());
      up.on('data', (d: Buffer) => {
        upBuf = upBuf.length ? Buffer.concat([upBuf, d]) : d;
        while (upBuf.length >= 2 && upBuf.length >= 2 + upBuf.readUInt16BE(0)) {
          const m = upBuf.subarray(2, 2 + upBuf.readUInt16BE(0));
          upBuf = upBuf.subarray(2 + m.length);
          void onAnswer(Buffer.from(m));
        }
      });
      up.on('error', () => undefined);
      up.on('close', () => { up = undefined; for (const [id, p] of inflight) { const q = Buffer.alloc(12); q.writeUInt16BE(id, 0); c.write(frame(refusal(q, RCODE.SERVFAIL))); this.d.record({ kind: 'response', timeMs: Date.now(), proto: 'tcp', src: client, dst: server, query: p.query, decision: p.decision, verdict: 'error', reason: 'upstream closed' }); } inflight.clear(); });
      return up;
    };
    c.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = Buffer.from(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + msg.length);
        this.stats.queries++;
        const query = readQuery(msg);
        if (!query) { c.write(frame(refusal(msg, RCODE.FORMERR))); continue; }
        const decision = this.d.decide(client, server, 'tcp', query);
        if (!decision.allowed) {
          this.stats.refused++;
          c.write(frame(refusal(msg, RCODE.REFUSED)));
          this.d.record({ kind: 'query', timeMs: Date.now(), proto: 'tcp', src: client, dst: server, query, decision, verdict: 'refused', reason: 'denied' });
          continue;
        }
        this.stats.forwarded++;
        inflight.set(query.id, { query, decision, t0: process.hrtime.bigint() });
        this.d.record({ kind: 'query', timeMs: Date.now(), proto: 'tcp', src: client, dst: server, query, decision, verdict: 'forwarded' });
        upstream().write(frame(msg));
      }
      if (buf.length > 70_000) c.destroy();
    });
    c.on('error', () => undefined);
    c.on('close', () => { this.tcpClients.delete(c); up?.destroy(); });
  }

  get running(): boolean {
    return this.listeners.length > 0;
  }

  async close(): Promise<void> {
    if (this.sweep) clearInterval(this.sweep);
    for (const p of [...this.pending]) this.finish(p);
    for (const s of this.listeners) s.close();
    this.listeners.length = 0;
    for (const r of this.replies.values()) r.socket.close();
    this.replies.clear();
    for (const c of this.tcpClients) c.destroy();
    await Promise.all(this.tcpServers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.tcpServers.length = 0;
  }
}
