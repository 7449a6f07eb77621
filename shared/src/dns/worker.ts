// A DNS proxy worker thread (workers.ts starts them): its own UDP listeners on the proxy's port
// (SO_REUSEPORT: the kernel spreads the diverted datagrams over the workers by client address and
// port), its own upstream and reply sockets, and two caches that spare it the agent's thread:
//
// - verdicts, per sender, server, port and name, valid while the agent's maps generation (shared
//   memory the agent's thread updates) is the one they were given under; a miss asks the agent;
// - answers already in the datapath: per endpoint, names and addresses, until the time the agent's
//   thread said it keeps them at least (the answer's TTL or the minimum TTL). Such an answer goes to
//   the client at once and the agent is told afterwards (its entries are refreshed, as for an answer
//   that teaches nothing new in the agent's thread). Anything else waits for the agent: an answer is
//   released only once the agent says its addresses are in the datapath.
//
// Records (flows, metrics) go to the agent in batches. TCP stays in the agent's thread.
import dgram from 'node:dgram';
import { parentPort, workerData } from 'node:worker_threads';
import { SocketError, transparentUdpSocket } from '../l7/proxy/sockets.ts';
import type { Answer, Query } from './message.ts';
import { originalDestination } from './original-destination.ts';
import { RecordBatcher } from './record-batch.ts';
import { newStats, type DnsDecision, type DnsRecord, type Peer } from './types.ts';
import { UdpRelay } from './udp.ts';
import type { FromWorker, ToWorker, WorkerInit } from './workers.ts';

const FLUSH_MS = 20;
const FLUSH_RECORDS = 512;
/** Cache bounds: names are the clients' and servers' to choose. */
const MAX_VERDICTS = 10_000;
const MAX_KNOWN = 10_000;

interface Waiting<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

export class DnsWorker {
  private readonly verdicts = new Map<string, DnsDecision>();
  private verdictsGen = -1;
  private readonly asking = new Map<string, Promise<DnsDecision>>();
  /** endpoint|names|addresses -> until when (Date.now()) the agent keeps them in the datapath. */
  private readonly known = new Map<string, number>();
  private readonly waiting = new Map<number, Waiting<DnsDecision> | Waiting<number>>();
  private nextId = 1;
  private readonly records = new RecordBatcher();
  /** Answers released at once since the last flush, one per key: the agent refreshes their entries. */
  private refresh = new Map<string, [number, Answer]>();
  private flushTimer?: NodeJS.Timeout;
  private readonly listeners: dgram.Socket[] = [];
  private readonly stats = newStats();
  private readonly relay: UdpRelay;
  private readonly generation: Int32Array;

  constructor(
    private readonly init: WorkerInit,
    private readonly send: (m: FromWorker) => void,
  ) {
    this.generation = new Int32Array(init.generation);
    const log = {
      warn: (o: object, msg: string) => send({ t: 'log', msg, detail: describe(o) }),
    };
    this.relay = new UdpRelay(
      {
        decide: (src, dst, _proto, q) => this.decide(src, dst, q),
        learn: (endpoint, answer) => this.learn(endpoint, answer),
        record: (r) => this.record(r),
        originalDestination: (src) => originalDestination(init.mapFd, src),
        log,
      },
      init.timeoutMs,
      this.stats,
      true,
    );
  }

  async start(): Promise<void> {
    for (const ip of ['127.0.0.1', '::1']) {
      let fd: number;
      try {
        fd = transparentUdpSocket(ip, this.init.port, { reusePort: true });
      } catch (e) {
        if (ip === '::1' && e instanceof SocketError) continue;
        throw e;
      }
      const s = dgram.createSocket({ type: ip === '::1' ? 'udp6' : 'udp4', recvBufferSize: 4 << 20 });
      s.on('message', (msg, rinfo) => this.relay.onDatagram(msg, { ip: rinfo.address, port: rinfo.port }));
      s.on('error', (err) => this.send({ t: 'log', msg: 'DNS proxy worker socket error', detail: String(err) }));
      await new Promise<void>((resolve) => s.bind({ fd }, resolve));
      this.listeners.push(s);
    }
  }

  onMessage(m: ToWorker): void {
    const w = this.waiting.get(m.id);
    if (!w) return;
    this.waiting.delete(m.id);
    if (m.t === 'decided') (w as Waiting<DnsDecision>).resolve(m.decision);
    else if (m.ok) (w as Waiting<number>).resolve(m.knownUntil);
    else w.reject(new Error(m.err ?? 'the agent could not enforce the answer'));
  }

  private decide(src: Peer, dst: Peer, q: Query): DnsDecision | Promise<DnsDecision> {
    const gen = Atomics.load(this.generation, 0);
    if (gen !== this.verdictsGen || this.verdicts.size >= MAX_VERDICTS) {
      this.verdicts.clear();
      this.verdictsGen = gen;
    }
    const key = `${src.ip}|${dst.ip}|${dst.port}|udp|${q.name}`;
    const hit = this.verdicts.get(key);
    if (hit) return hit;
    let p = this.asking.get(key);
    if (!p) {
      p = this.ask<DnsDecision>((id) => ({ t: 'decide', id, src, dst, query: q })).then((v) => {
        // Kept only if no policy change came meanwhile (else the next query asks again).
        if (this.asking.get(key) === p) this.asking.delete(key);
        if (Atomics.load(this.generation, 0) === gen && this.verdictsGen === gen) this.verdicts.set(key, v);
        return v;
      });
      p.catch(() => this.asking.delete(key));
      this.asking.set(key, p);
    }
    return p;
  }

  private learn(endpoint: number, answer: Answer): Promise<void> | undefined {
    const key = `${endpoint}|${answer.names.join(' ')}|${answer.ips.map((x) => x.ip).join(' ')}`;
    const until = this.known.get(key);
    if (until !== undefined && Date.now() < until) {
      this.refresh.set(key, [endpoint, answer]);
      this.flushSoon();
      return undefined;
    }
    return this.ask<number>((id) => ({ t: 'learn', id, endpoint, answer })).then((knownUntil) => {
      if (this.known.size >= MAX_KNOWN) this.known.clear();
      this.known.set(key, knownUntil);
    });
  }

  private ask<T>(message: (id: number) => FromWorker): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject } as Waiting<DnsDecision>);
      this.send(message(id));
    });
  }

  private record(r: DnsRecord): void {
    this.records.add(r);
    if (this.records.size >= FLUSH_RECORDS) this.flush();
    else this.flushSoon();
  }

  private flushSoon(): void {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  private flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    this.send({ t: 'batch', records: this.records.take(), refresh: [...this.refresh.values()], stats: { ...this.stats } });
    this.refresh.clear();
  }

  close(): void {
    for (const s of this.listeners) s.close();
    this.listeners.length = 0;
    this.relay.close();
    this.flush();
    for (const w of this.waiting.values()) w.reject(new Error('DNS proxy worker closing'));
    this.waiting.clear();
  }
}

const describe = (o: object): string => {
  const err = (o as { err?: unknown }).err;
  return err instanceof Error ? err.message : JSON.stringify(o, (_k, v) => (v instanceof Error ? v.message : v));
};

if (parentPort && (workerData as WorkerInit | undefined)?.dnsProxyWorker) {
  const port = parentPort;
  const w = new DnsWorker(workerData as WorkerInit, (m) => port.postMessage(m));
  port.on('message', (m: ToWorker | { t: 'close' }) => {
    if (m.t === 'close') {
      w.close();
      port.close();
      return;
    }
    w.onMessage(m);
  });
  w.start().then(
    () => port.postMessage({ t: 'ready' } satisfies FromWorker),
    (err: unknown) => port.postMessage({ t: 'failed', err: String(err) } satisfies FromWorker),
  );
}
