// The DNS proxy's UDP relay on worker threads (--dns-proxy-workers N): one relay on the agent's thread
// is Node's floor for a relay (two datagrams in and two out per query, Node's callback machinery), so
// N threads (worker.ts) each listen on the proxy's port with SO_REUSEPORT and relay on their own. The
// agent's thread keeps what must be in one place: the policy's verdicts (asked once per sender, server
// and name, then cached in the worker until the maps change), learning an answer into the ipcache
// before its release (asked for every answer a worker has not seen in the datapath yet), flows and
// metrics (records in batches), and TCP.
//
// Fail closed: until every worker listens, start() has not resolved; a worker that dies takes its
// listeners with it (the kernel sends their share to the others; with none left the datapath finds no
// socket and drops DNS) and is started again. A policy change reaches the workers' verdict caches
// through a generation number in shared memory, written by the agent's thread when the maps change
// (publishGeneration) and every GENERATION_POLL_MS besides.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Answer, Query } from './message.ts';
import { readBatch, type RecordBatch } from './record-batch.ts';
import { newStats, type DnsDecision, type DnsProxyDeps, type DnsStats, type DnsWorkersOptions, type Peer } from './types.ts';

export interface WorkerInit {
  dnsProxyWorker: true;
  port: number;
  /** The proxy_udp_dst map's fd (fds belong to the process: valid in every thread). */
  mapFd: number;
  timeoutMs: number;
  /** Int32[0]: the generation of the policy maps. */
  generation: SharedArrayBuffer;
}

export type FromWorker =
  | { t: 'ready' }
  | { t: 'failed'; err: string }
  | { t: 'log'; msg: string; detail: string }
  | { t: 'decide'; id: number; src: Peer; dst: Peer; query: Query }
  | { t: 'learn'; id: number; endpoint: number; answer: Answer }
  | { t: 'batch'; records: RecordBatch; refresh: [number, Answer][]; stats: DnsStats };

export type ToWorker =
  | { t: 'decided'; id: number; decision: DnsDecision }
  | { t: 'learned'; id: number; ok: boolean; knownUntil: number; err?: string };

const GENERATION_POLL_MS = 10;
const RESTART_MS = 1000;

/** How to start a worker: the bundle next to the running one, or (from source under tsx) the source
 *  file through tsx's loader (a worker does not inherit the main thread's hooks). */
function workerEntry(): { file: string; eval: boolean } | undefined {
  const main = process.argv[1] ? path.resolve(process.argv[1]) : '';
  const bundled = path.join(path.dirname(main), 'membrane-dns-worker');
  if (main && !main.endsWith('.ts') && fs.existsSync(bundled)) return { file: bundled, eval: false };
  const url = import.meta.url;
  if (!url?.startsWith('file:') || !url.endsWith('.ts')) return undefined;
  const source = new URL('./worker.ts', url);
  if (!fs.existsSync(fileURLToPath(source))) return undefined;
  const tsx = import.meta.resolve('tsx/esm/api');
  const code = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(source.href)}); })`;
  return { file: code, eval: true };
}

export class DnsWorkers {
  private readonly workers: (Worker | undefined)[];
  private readonly stats: DnsStats[];
  private readonly generation = new Int32Array(new SharedArrayBuffer(4));
  private poll?: NodeJS.Timeout;
  private closing = false;
  private readonly ready = new Set<Worker>();

  constructor(
    private readonly d: DnsProxyDeps,
    private readonly o: DnsWorkersOptions,
  ) {
    const count = o.count;
    this.workers = new Array(count).fill(undefined);
    this.stats = Array.from({ length: count }, newStats);
  }

  /** Resolves once every worker listens. */
  async start(): Promise<void> {
    if (!workerEntry()) throw new Error('DNS proxy workers: no worker entry (membrane-dns-worker next to the agent)');
    Atomics.store(this.generation, 0, this.o.generation());
    this.poll = setInterval(() => Atomics.store(this.generation, 0, this.o.generation()), GENERATION_POLL_MS);
    this.poll.unref();
    await Promise.all(this.workers.map((_w, i) => this.spawn(i)));
  }

  /** The policy maps just changed: the workers see the new generation now, not at the next poll (a
   *  query sent right after a policy import returned must meet the new verdicts). */
  publishGeneration(): void {
    Atomics.store(this.generation, 0, this.o.generation());
  }

  private spawn(i: number): Promise<void> {
    const entry = workerEntry();
    if (!entry) return Promise.reject(new Error('DNS proxy workers: no worker entry'));
    const init: WorkerInit = {
      dnsProxyWorker: true,
      port: this.d.port,
      mapFd: this.o.mapFd,
      timeoutMs: this.d.upstreamTimeoutMs ?? 5000,
      generation: this.generation.buffer as SharedArrayBuffer,
    };
    const w = new Worker(entry.file, { eval: entry.eval, workerData: init, env: process.env });
    this.workers[i] = w;
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      w.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          ready = true;
          this.ready.add(w);
          resolve();
        } else if (m.t === 'failed') reject(new Error(`DNS proxy worker ${i}: ${m.err}`));
        else this.onMessage(w, i, m);
      });
      w.on('error', (err) => {
        this.d.log.warn({ err, worker: i }, 'DNS proxy worker failed');
        if (!ready) reject(err);
      });
      w.on('exit', (code) => {
        this.ready.delete(w);
        if (this.workers[i] === w) this.workers[i] = undefined;
        if (this.closing || !ready) return;
        this.d.log.warn({ worker: i, code }, 'DNS proxy worker exited; starting it again');
        setTimeout(() => {
          if (!this.closing) this.spawn(i).catch((err) => this.d.log.warn({ err, worker: i }, 'DNS proxy worker restart failed'));
        }, RESTART_MS).unref();
      });
    });
  }

  private onMessage(w: Worker, i: number, m: FromWorker): void {
    switch (m.t) {
      case 'decide': {
        let reply: ToWorker;
        try {
          reply = { t: 'decided', id: m.id, decision: this.d.decide(m.src, m.dst, 'udp', m.query) };
        } catch (err) {
          this.d.log.warn({ err }, 'DNS proxy: no verdict for a worker');
          reply = { t: 'decided', id: m.id, decision: { allowed: false, identity: 0, peerIdentity: 0, ruleId: 0 } };
        }
        w.postMessage(reply);
        return;
      }
      case 'learn': {
        // Kept from when it was learned (the agent's grace after expiry covers the refresh's way back).
        const learnedAt = Date.now();
        const done = (ok: boolean, err?: unknown) => {
          const reply: ToWorker = { t: 'learned', id: m.id, ok, knownUntil: ok ? this.o.keptUntil(m.answer, learnedAt) : 0 };
          if (err) reply.err = String(err);
          w.postMessage(reply);
        };
        let learning: Promise<void> | undefined;
        try {
          learning = this.d.learn(m.endpoint, m.answer);
        } catch (err) {
          done(false, err);
          return;
        }
        if (!learning) done(true);
        else
          learning.then(
            () => done(true),
            (err: unknown) => done(false, err),
          );
        return;
      }
      case 'batch':
        readBatch(m.records, (r) => this.d.record(r));
        for (const [endpoint, answer] of m.refresh) {
          // Released already (its addresses were in the datapath): only the entries' lifetime moves.
          this.d
            .learn(endpoint, answer)
            ?.catch((err: unknown) => this.d.log.warn({ err }, 'DNS proxy: refreshing a learned answer failed'));
        }
        this.stats[i] = m.stats;
        return;
      case 'log':
        this.d.log.warn({ worker: i, detail: m.detail }, m.msg);
        return;
    }
  }

  /** The workers' counters, summed (each sends its own with every batch). */
  addStats(into: DnsStats): DnsStats {
    for (const s of this.stats) for (const k of Object.keys(into) as (keyof DnsStats)[]) into[k] += s[k];
    return into;
  }

  get running(): boolean {
    return this.workers.some((w) => w);
  }

  /** Workers started and listening. */
  get listening(): number {
    return this.ready.size;
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.poll) clearInterval(this.poll);
    await Promise.all(
      this.workers.map(
        (w) =>
          w &&
          new Promise<void>((resolve) => {
            const t = setTimeout(() => void w.terminate().then(() => resolve()), 2000);
            w.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
            w.postMessage({ t: 'close' });
          }),
      ),
    );
  }
}
