// The agent's side of the L7 proxy: its port, its worker processes, and the control socket through
// which workers get the policy and send their request/response records.
//
// Why separate processes, not the agent's own event loop: a proxy under load would stall the API
// and the flow reader (and they it); a crash in request handling must not take the agent down; the
// node has more than one CPU and one Node event loop uses one; and a worker that outlives the agent
// keeps every established L7 connection through an agent restart or upgrade. Workers are started
// when the policy first has L7 rules, restarted when they die, adopted by a restarted agent (they
// reconnect to the same control socket), and stopped when no L7 rule is left.
//
// Layout under <stateDir>/l7: port (the proxy port, kept across restarts so the datapath's entries
// stay valid), control.sock, worker-N.pid, worker-N.log.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from '../log.ts';
import { listenUnix } from '../io/unix-socket.ts';
import { encodeFrame, FrameReader, type AgentMessage, type WorkerMessage } from './proxy/frames.ts';
import type { CountsDelta } from './proxy/request-counts.ts';
import { hasHttpEntries, type ProxySnapshot } from './proxy/snapshot.ts';
import { workerNodeFlags } from './worker-flags.ts';
import { alive, isWorker, pidFromFile } from './worker-process.ts';
import { pickProxyPort, portFree } from './proxy/sockets.ts';

export interface WorkerCommand {
  execPath: string;
  args: string[];
}

export interface ProxyManagerOptions {
  stateDir: string;
  workers: number;
  /** Connections one source may hold open at a worker (--l7-proxy-max-conns-per-source; 0: the
   *  worker's default, proxy/source-limit.ts). Sent on every hello: an adopted worker takes it too. */
  maxConnsPerSource?: number;
  /** The datapath's pinned proxy_listeners map, where workers register their listeners. */
  listenersMap?: string;
  /** Fixed port (--l7-proxy-port); 0 = pick one and keep it. */
  port: number;
  version: string;
  command: WorkerCommand;
  log: Logger;
  /** Record batches as the workers send them (records.ts readBatch, decodeRecord). */
  onRecords: (batch: Buffer) => void;
  /** The workers' counts for the metrics (proxy/request-counts.ts), each before the batch it goes with. */
  onCounts?: (delta: CountsDelta) => void;
  /** Flows a worker let go unsent (proxy/held-batches.ts). */
  onSkipped?: (flows: number) => void;
  /** While nobody follows flows the workers hold up to this many (the flow ring's size) and send them
   *  twice a second or when collect() asks; 0 or none: every batch at once. */
  holdFlows?: number;
}

interface WorkerState {
  index: number;
  pid?: number;
  conn?: net.Socket;
  version?: string;
  spawnedAt?: number;
  restarts: number;
  stats?: Extract<WorkerMessage, { t: 'stats' }>;
}

const ADOPT_GRACE_MS = 1500;
const COLLECT_TIMEOUT_MS = 1000;
/** Workers outlive the last L7 rule by this much: a policy replaced by delete + import keeps them. */
const IDLE_STOP_MS = 60_000;
const STOP_DRAIN_MS = 10_000;
/** A worker that has not connected by then is hung: replaced. (Starting takes well under a second
 *  from the bundle; from source, under load, several.) */
const CONNECT_DEADLINE_MS = 30_000;

export class ProxyManager {
  private readonly dir: string;
  private readonly workers: WorkerState[];
  private server?: net.Server;
  private snapshot?: ProxySnapshot;
  private wanted = false;
  private closed = false;
  private readonly startedAt = Date.now();
  private timer?: NodeJS.Timeout;
  private idleSince?: number;
  /** Someone follows flows: the workers send each batch at once. */
  private following = false;
  private collectId = 0;
  /** collect() calls waiting for their workers' answers. */
  private readonly collecting = new Map<number, { waiting: Set<net.Socket>; done: () => void }>();

  private constructor(
    private readonly o: ProxyManagerOptions,
    readonly port: number,
  ) {
    this.dir = path.join(o.stateDir, 'l7');
    this.workers = Array.from({ length: o.workers }, (_, index) => ({ index, restarts: 0 }));
    // Workers of an earlier agent still running are ours before they reconnect: reconcile() waits
    // for them (CONNECT_DEADLINE_MS) instead of starting a second worker for their index once
    // ADOPT_GRACE_MS is over, which a loaded node (a slow agent start, a worker not scheduled in time)
    // easily outlasts. Two workers for one index then took the index's connection from each other in
    // turn, and the one the agent did not name lived on unsupervised.
    for (const w of this.workers) {
      const pid = pidFromFile(this.pidFile(w.index));
      if (pid && isWorker(pid, path.join(this.dir, `worker-${w.index}.log`))) {
        w.pid = pid;
        w.spawnedAt = Date.now(); // adopted: its age counts from now
      }
    }
  }

  static async open(o: ProxyManagerOptions): Promise<ProxyManager> {
    const dir = path.join(o.stateDir, 'l7');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const m = new ProxyManager(o, ProxyManager.choosePort(o, dir));
    m.server = await listenUnix(
      net.createServer((s) => m.onWorker(s)),
      path.join(dir, 'control.sock'),
      { mode: 0o600, who: 'another agent' },
    );
    // Supervision: spawn what is missing (after giving running workers a moment to reconnect).
    m.timer = setInterval(() => m.reconcile(), 500);
    m.timer.unref();
    return m;
  }

  /** The kept port, unless another process holds it while none of our workers runs. */
  private static choosePort(o: ProxyManagerOptions, dir: string): number {
    const file = path.join(dir, 'port');
    if (o.port) {
      fs.writeFileSync(file, `${o.port}\n`);
      return o.port;
    }
    const kept = Number(fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : 0);
    const ours = Array.from({ length: o.workers }, (_, i) => pidFromFile(path.join(dir, `worker-${i}.pid`))).some(
      (pid) => pid && alive(pid),
    );
    if (kept && (ours || portFree(kept))) return kept;
    const port = pickProxyPort(portFree);
    fs.writeFileSync(file, `${port}\n`);
    return port;
  }

  /** The policy the workers enforce; workers run while it has L7 entries. */
  update(snapshot: ProxySnapshot): void {
    this.snapshot = snapshot;
    const wanted = hasHttpEntries(snapshot);
    if (wanted !== this.wanted)
      this.o.log.info(
        { port: this.port, workers: this.o.workers },
        wanted ? 'L7 proxy needed: starting workers' : 'no L7 rules left: stopping the L7 proxy workers',
      );
    this.wanted = wanted;
    this.idleSince = wanted ? undefined : (this.idleSince ?? Date.now());
    // Encoded only for connected workers (one that connects later is sent the snapshot then): with
    // no L7 rules every endpoint change would encode the whole node for nobody.
    if (this.workers.some((w) => w.conn)) {
      const frame = encodeFrame({ t: 'policy', snapshot });
      for (const w of this.workers) w.conn?.write(frame);
    }
    this.reconcile();
  }

  private onWorker(s: net.Socket): void {
    let w: WorkerState | undefined;
    const reader = new FrameReader<WorkerMessage>(
      (m) => {
        if (m.t === 'hello') {
          w = this.workers[m.index];
          if (!w || m.port !== this.port) {
            this.send(s, { t: 'stop', drainMs: STOP_DRAIN_MS });
            s.end();
            return;
          }
          if (w.conn && w.conn !== s) {
            w.conn.destroy();
          }
          w.conn = s;
          w.pid = m.pid;
          w.spawnedAt ??= Date.now(); // adopted: its age counts from now
          w.version = m.version;
          fs.writeFileSync(this.pidFile(w.index), `${m.pid}\n`);
          this.o.log.info({ worker: m.index, pid: m.pid, version: m.version }, 'L7 proxy worker connected');
          // Before any policy: the worker has listened since its first one, and an adopted worker's
          // earlier agent may have had another limit. (A worker older than this message ignores it.)
          this.send(s, this.config());
          if (this.snapshot) this.send(s, { t: 'policy', snapshot: this.snapshot });
          if (m.version !== this.o.version)
            this.o.log.warn(
              { worker: m.index, version: m.version },
              'L7 proxy worker of another version adopted; it is replaced when it restarts',
            );
        } else if (m.t === 'stats' && w) {
          w.stats = m;
        } else if (m.t === 'counts' && w) {
          this.o.onCounts?.(m);
        } else if (m.t === 'skipped' && w) {
          this.o.onSkipped?.(m.flows);
        } else if (m.t === 'collected') {
          this.collected(m.id, s);
        }
      },
      (batch) => {
        if (w) this.o.onRecords(batch);
      },
    );
    s.on('data', (d: Buffer) => {
      try {
        reader.push(d);
      } catch (err) {
        this.o.log.warn({ err }, 'bad frame from an L7 proxy worker');
        s.destroy();
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      for (const id of [...this.collecting.keys()]) this.collected(id, s);
      if (w?.conn === s) {
        w.conn = undefined;
        w.stats = undefined;
      }
    });
  }

  private config(): AgentMessage {
    return {
      t: 'config',
      maxConnsPerSource: this.o.maxConnsPerSource ?? 0,
      holdFlows: this.o.holdFlows ?? 0,
      follow: this.following,
    };
  }

  /** Whether someone follows flows (the workers then send each batch at once). */
  setFollowing(on: boolean): void {
    if (on === this.following) return;
    this.following = on;
    const frame = encodeFrame(this.config());
    for (const w of this.workers) w.conn?.write(frame);
  }

  /** Resolves once every connected worker of this version sent what it holds (or after
   *  COLLECT_TIMEOUT_MS: a worker that does not answer holds up no flow query). */
  collect(): Promise<void> {
    const conns = this.workers.filter((w) => w.conn && w.version === this.o.version).map((w) => w.conn!);
    if (!conns.length || !this.o.holdFlows) return Promise.resolve();
    const id = ++this.collectId;
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(), COLLECT_TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        this.collecting.delete(id);
        resolve();
      };
      this.collecting.set(id, { waiting: new Set(conns), done });
      for (const c of conns) this.send(c, { t: 'collect', id });
    });
  }

  private collected(id: number, s: net.Socket): void {
    const c = this.collecting.get(id);
    if (c?.waiting.delete(s) && !c.waiting.size) c.done();
  }

  private send(s: net.Socket, m: AgentMessage): void {
    s.write(encodeFrame(m));
  }

  /** Spawns the workers that should run and do not (a worker that died, or one that never connected). */
  private reconcile(): void {
    if (this.closed) return;
    if (!this.wanted) {
      if (this.idleSince !== undefined && Date.now() - this.idleSince > IDLE_STOP_MS) {
        for (const w of this.workers) this.stopWorker(w);
        this.idleSince = undefined;
      }
      return;
    }
    if (Date.now() - this.startedAt < ADOPT_GRACE_MS) return; // running workers reconnect first
    for (const w of this.workers) {
      if (w.conn) continue;
      const age = w.spawnedAt === undefined ? Infinity : Date.now() - w.spawnedAt;
      if (w.pid && alive(w.pid) && age < CONNECT_DEADLINE_MS) continue; // starting, or reconnecting after an agent restart
      if (age < Math.min(10_000, 250 * 2 ** Math.min(w.restarts, 6))) continue; // crash loop backoff
      this.spawnWorker(w);
    }
  }

  private spawnWorker(w: WorkerState): void {
    if (w.pid && alive(w.pid)) {
      try {
        process.kill(w.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    } // hung: never connected
    const log = fs.openSync(path.join(this.dir, `worker-${w.index}.log`), 'a');
    const env = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const child = spawn(
      this.o.command.execPath,
      [
        '--enable-experimental-regexp-engine-on-excessive-backtracks',
        ...workerNodeFlags(),
        ...this.o.command.args,
        '--control',
        path.join(this.dir, 'control.sock'),
        '--port',
        String(this.port),
        '--index',
        String(w.index),
        '--watch',
        this.dir,
        ...(this.o.listenersMap ? ['--listeners', this.o.listenersMap] : []),
        ...(this.o.maxConnsPerSource ? ['--max-conns-per-source', String(this.o.maxConnsPerSource)] : []),
      ],
      { detached: true, stdio: ['ignore', log, log], env },
    );
    fs.closeSync(log);
    child.unref();
    if (w.spawnedAt) w.restarts++;
    w.spawnedAt = Date.now();
    w.pid = child.pid;
    if (child.pid) fs.writeFileSync(this.pidFile(w.index), `${child.pid}\n`);
    this.o.log.info({ worker: w.index, pid: child.pid, port: this.port, restarts: w.restarts }, 'L7 proxy worker started');
    child.once('exit', (code, signal) => {
      if (w.pid === child.pid) this.o.log.warn({ worker: w.index, pid: child.pid, code, signal }, 'L7 proxy worker exited');
    });
  }

  private stopWorker(w: WorkerState): void {
    if (w.conn) this.send(w.conn, { t: 'stop', drainMs: STOP_DRAIN_MS });
    w.spawnedAt = undefined;
    w.restarts = 0;
  }

  private pidFile(index: number): string {
    return path.join(this.dir, `worker-${index}.pid`);
  }

  status(): {
    port: number;
    running: boolean;
    workers: {
      index: number;
      pid?: number;
      connected: boolean;
      restarts: number;
      connections?: number;
      requests?: number;
      rssBytes?: number;
    }[];
  } {
    return {
      port: this.port,
      running: this.workers.some((w) => w.conn),
      workers: this.workers.map((w) => ({
        index: w.index,
        ...(w.pid ? { pid: w.pid } : {}),
        connected: !!w.conn,
        restarts: w.restarts,
        ...(w.stats ? { connections: w.stats.connections, requests: w.stats.requests, rssBytes: w.stats.rssBytes } : {}),
      })),
    };
  }

  /** The agent stops: workers keep running with the policy they have (like the datapath) and
   *  reconnect to the next agent. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    for (const w of this.workers) w.conn?.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
