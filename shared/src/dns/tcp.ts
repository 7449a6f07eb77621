// The DNS proxy's TCP relay: one connection from a client, its length-framed queries checked like UDP
// ones (refused ones answered here, pipelined behind allowed ones), the allowed ones sent over one
// connection to the server the client asked, and each answer passed back only once its addresses are
// in the datapath. An answer to another question than the one in flight under its ID becomes SERVFAIL.
import net from 'node:net';
import { answersQuery, failure, type MessageReader, RCODE, refusal, type Query } from './message.ts';
import type { TcpClients } from './tcp-clients.ts';
import { dnsRecord, loopback, type DnsDecision, type DnsProxyDeps, type DnsStats, type Peer } from './types.ts';

export interface TcpRelayContext {
  d: Pick<DnsProxyDeps, 'decide' | 'learn' | 'record' | 'log'>;
  reader: MessageReader;
  stats: DnsStats;
  timeoutMs: number;
  /** Open client connections, bounded (tcp-clients.ts: idle timeout, per-client and total limits). */
  clients: TcpClients;
}

/** DNS over TCP: each message behind its length, two bytes big-endian (RFC 1035 4.2.2). */
export const frame = (m: Buffer): Buffer => {
  const b = Buffer.allocUnsafe(2 + m.length);
  b.writeUInt16BE(m.length, 0);
  m.copy(b, 2);
  return b;
};

/** Hands each whole message in `pending` + `chunk` to `each` (a copy: the chunk's memory is not kept
 *  alive by a message held in flight) and returns the bytes of the message not yet whole. */
export function unframe(pending: Buffer, chunk: Buffer, each: (m: Buffer) => void): Buffer {
  let buf = pending.length ? Buffer.concat([pending, chunk]) : chunk;
  while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
    const m = Buffer.from(buf.subarray(2, 2 + buf.readUInt16BE(0)));
    buf = buf.subarray(2 + m.length);
    each(m);
  }
  return buf;
}

export function relayTcp(c: net.Socket, x: TcpRelayContext): void {
  const server: Peer = { ip: c.localAddress ?? '', port: c.localPort ?? 0 };
  const client: Peer = { ip: c.remoteAddress ?? '', port: c.remotePort ?? 0 };
  if (!server.ip || loopback(server.ip)) {
    c.destroy();
    return;
  }
  x.clients.admit(c, client.ip);
  let buf: Buffer = Buffer.alloc(0);
  let up: net.Socket | undefined;
  let upBuf: Buffer = Buffer.alloc(0);
  const inflight = new Map<number, { query: Query; decision: DnsDecision; t0: bigint }>();
  // A client may send its queries and then close its side (a half-close): its answers still go back
  // (the listener allows half-open connections), and ours closes once none is pending.
  let clientDone = false;
  let answering = 0;
  const endIfDone = () => {
    if (clientDone && !inflight.size && !answering) c.end();
  };
  const relayAnswer = async (msg: Buffer) => {
    if (msg.length < 12) return;
    const p = inflight.get(msg.readUInt16BE(0));
    if (!p) return;
    inflight.delete(msg.readUInt16BE(0));
    const answer = x.reader.answer(msg);
    if (answer && !answersQuery(answer, p.query)) {
      c.write(frame(refusal(msg, RCODE.SERVFAIL)));
      x.stats.errors++;
      x.d.record(dnsRecord('response', 'tcp', client, server, p.query, p.decision, 'error', 'answer to another question'));
      return;
    }
    const tAnswer = process.hrtime.bigint();
    let learnNs: number | undefined;
    if (answer && p.decision.endpoint !== undefined && answer.ips.length) {
      try {
        await x.d.learn(p.decision.endpoint, answer);
        learnNs = Number(process.hrtime.bigint() - tAnswer);
      } catch (err) {
        x.d.log.warn({ err, name: p.query.name }, 'cannot enforce a DNS answer: SERVFAIL to the client');
        c.write(frame(refusal(msg, RCODE.SERVFAIL)));
        return;
      }
    }
    c.write(frame(msg));
    x.d.record(
      dnsRecord(
        'response',
        'tcp',
        client,
        server,
        p.query,
        p.decision,
        'forwarded',
        undefined,
        answer,
        Number(process.hrtime.bigint() - p.t0),
        learnNs,
      ),
    );
  };
  const onAnswer = async (msg: Buffer) => {
    answering++;
    try {
      await relayAnswer(msg);
    } finally {
      answering--;
      endIfDone();
    }
  };
  // Why the queries in flight get no answer when the upstream connection closes: the client side
  // closed first (the proxy's limits or idle timeout, tcp-clients.ts, else the client), the upstream
  // sent nothing for timeoutMs, or the upstream closed.
  let why: string | undefined;
  const upstream = () => {
    if (up) return up;
    up = net.connect({ host: server.ip, port: server.port });
    up.setTimeout(x.timeoutMs, () => {
      why ??= 'upstream timeout';
      up?.destroy();
    });
    up.on('data', (d: Buffer) => {
      upBuf = unframe(upBuf, d, (m) => void onAnswer(m));
    });
    up.on('error', () => undefined);
    up.on('close', () => {
      up = undefined;
      const reason = why ?? 'upstream closed';
      why = undefined;
      for (const p of inflight.values()) {
        c.write(frame(failure(p.query, RCODE.SERVFAIL)));
        x.d.record(dnsRecord('response', 'tcp', client, server, p.query, p.decision, 'error', reason));
      }
      inflight.clear();
      endIfDone();
    });
    return up;
  };
  const onQuery = (msg: Buffer) => {
    x.stats.queries++;
    const query = x.reader.query(msg);
    if (!query) {
      c.write(frame(refusal(msg, RCODE.FORMERR)));
      return;
    }
    const decision = x.d.decide(client, server, 'tcp', query);
    if (!decision.allowed) {
      x.stats.refused++;
      c.write(frame(refusal(msg, RCODE.REFUSED)));
      x.d.record(dnsRecord('query', 'tcp', client, server, query, decision, 'refused', 'denied'));
      return;
    }
    x.stats.forwarded++;
    inflight.set(query.id, { query, decision, t0: process.hrtime.bigint() });
    x.d.record(dnsRecord('query', 'tcp', client, server, query, decision, 'forwarded'));
    upstream().write(frame(msg));
  };
  c.on('data', (d: Buffer) => {
    x.clients.touch(c);
    buf = unframe(buf, d, onQuery);
    if (buf.length > 70_000) c.destroy();
  });
  c.on('end', () => {
    clientDone = true;
    endIfDone();
  });
  c.on('error', () => undefined);
  // x.clients forgets the connection on its own 'close'.
  c.on('close', () => {
    if (!up) return;
    why ??= x.clients.closedBy(c) ?? 'client closed';
    up.destroy();
  });
}
