// The L7 proxy in the agent: the worker manager (its port goes into the datapath's L7 entries), the
// routing that delivers diverted packets to it, and the policy snapshots it enforces. Records the
// workers send (one per request and per response) go to the flow observer; their counts (summed in
// the workers, proxy/request-counts.ts) to the metrics.
// Its dependencies are its parameters; the composition root (agent.ts) decides the order.
import path from 'node:path';
import type { Logger } from '../log.ts';
import type { AgentConfig } from './config.ts';
import type { Netlink } from '../netlink/index.ts';
import type { PolicyEngine } from '../policy/engine.ts';
import { ProxyManager, type WorkerCommand } from '../l7/manager.ts';
import { BatchIndex, decodeRecord } from '../l7/proxy/record-reader.ts';
import { BATCH_FORMAT_UNANSWERED } from '../l7/proxy/records.ts';
import { type CountsDelta, isCountsDelta } from '../l7/proxy/request-counts.ts';
import { l7Flow } from '../l7/flows.ts';
import { registerL7Metrics } from '../l7/metrics.ts';
import type { AgentFlows } from './flows.ts';
import { ensureTransparentSocketMark } from '../l7/routing.ts';
import { hasHttpEntries } from '../l7/proxy/snapshot.ts';
import type { Datapath } from '../bpf/datapath.ts';
import { VERSION } from '../version.ts';

export interface L7Deps {
  cfg: AgentConfig;
  log: Logger;
  host: Netlink;
  datapath: Datapath;
  ipv6: boolean;
}

/** How to start a worker: the bundle's membrane-proxy next to membrane-agent, or the source entry. */
export function proxyWorkerCommand(): WorkerCommand {
  const main = process.argv[1] ? path.resolve(process.argv[1]) : '';
  if (main.endsWith('.ts')) {
    const keep = process.execArgv.filter(
      (a, i, all) => a === '--import' || a === '--loader' || all[i - 1] === '--import' || all[i - 1] === '--loader',
    );
    return { execPath: process.execPath, args: [...keep, path.resolve(path.dirname(main), '../l7/proxy/worker-main.ts')] };
  }
  return { execPath: process.execPath, args: [path.join(path.dirname(main), 'membrane-proxy')] };
}

type EarlyMessage = { batch: Buffer } | { counts: CountsDelta } | { skipped: number };
/** Batches kept while the agent starts: a worker holds --flow-buffer flows (a few batches by default). */
const EARLY_MAX_BATCHES = 256;

export class AgentL7 {
  private engine?: PolicyEngine;
  private pending = false;
  private readonly listeners: ((batch: Buffer, index: BatchIndex) => void)[] = [];
  private readonly countListeners: ((delta: CountsDelta) => void)[] = [];
  /** Where flows the workers let go unsent are counted (the flow ring's seen). */
  private skipped?: (flows: number) => void;
  /** Until attachFlows: what the workers sent (the agent still starting), replayed then. */
  private early: EarlyMessage[] | undefined = [];
  private earlyBatches = 0;
  /** Reused for every batch: the listeners read it before the next one comes. */
  private readonly index = new BatchIndex();
  private badBatchLogged = false;
  private badCountsLogged = false;
  private lostRecords = 0;
  /** Whether the policy has L7 rules (the workers should run), as of the last snapshot handed over. */
  private needed = false;
  private socketMark = false;

  private constructor(
    readonly manager: ProxyManager,
    private readonly log: Logger,
  ) {}

  /** undefined when --l7-proxy off. */
  static async open(d: L7Deps): Promise<AgentL7 | undefined> {
    if (!d.cfg.l7Proxy) return undefined;
    const log = d.log.child({ component: 'l7' });
    // The routing rule, hairpin and socket lookup come with the first policy that needs the proxy
    // (l7/activation.ts, before its entries are written).
    let self: AgentL7 | undefined;
    const manager = await ProxyManager.open({
      stateDir: d.cfg.stateDir,
      workers: d.cfg.l7ProxyWorkers,
      maxConnsPerSource: d.cfg.l7ProxyMaxConnsPerSource,
      port: d.cfg.l7ProxyPort,
      listenersMap: path.join(d.datapath.pinDir, 'proxy_listeners'),
      version: VERSION,
      command: proxyWorkerCommand(),
      log,
      onRecords: (batch) => self!.onBatch(batch),
      onCounts: (delta) => self!.onCounts(delta),
      onSkipped: (flows) => self!.onSkipped(flows),
      // While nobody follows, each worker keeps as many flows as the ring holds and sends them twice a
      // second or when the ring is read (proxy/held-batches.ts).
      holdFlows: d.cfg.flowBufferSize,
    });
    self = new AgentL7(manager, log);
    log.info({ port: manager.port, workers: d.cfg.l7ProxyWorkers }, 'L7 proxy ready (workers start when a policy has L7 rules)');
    return self;
  }

  proxyPorts = (): { http: number } => ({ http: this.manager.port });

  /** The policy engine whose snapshots the workers enforce. */
  bind(engine: PolicyEngine): void {
    this.engine = engine;
    this.policyChanged();
  }

  /** After every change of the maps: one snapshot per turn of the event loop, whatever the burst. */
  policyChanged = (): void => {
    if (this.pending || !this.engine) return;
    this.pending = true;
    setImmediate(() => {
      this.pending = false;
      try {
        const e = this.engine!;
        // Without HTTP rules in the applied policy no endpoint has a proxied table: an empty snapshot
        // says the same (workers not wanted) without walking every endpoint and the ipcache on each
        // ADD. Workers still running (stopping once idle) get the full one: their open connections'
        // flows keep naming endpoints and identities.
        const snapshot =
          e.hasHttpRules() || this.manager.status().running
            ? e.proxySnapshot()
            : { revision: e.revision, endpoints: [], policies: [], l7Sets: [], ipcache: [] };
        if (hasHttpEntries(snapshot) && !this.socketMark) {
          ensureTransparentSocketMark();
          this.socketMark = true;
        }
        this.manager.update(snapshot);
        this.needed = hasHttpEntries(snapshot);
      } catch (err) {
        this.log.error({ err }, 'cannot hand the policy to the L7 proxy');
      }
    });
  };

  private onBatch(batch: Buffer): void {
    if (this.early) {
      this.keepEarly({ batch });
      return;
    }
    try {
      this.index.read(batch);
      this.lostRecords += this.index.lost;
    } catch (err) {
      if (!this.badBatchLogged)
        this.log.warn({ err }, 'unreadable record batch from an L7 proxy worker (of another version?): its records are lost');
      this.badBatchLogged = true;
      this.lostRecords++;
      return;
    }
    for (const l of this.listeners) l(batch, this.index);
  }

  private onCounts(delta: CountsDelta): void {
    if (this.early) {
      this.keepEarly({ counts: delta });
      return;
    }
    if (!isCountsDelta(delta)) {
      if (!this.badCountsLogged)
        this.log.warn('unreadable counts from an L7 proxy worker (of another version?): not in the metrics');
      this.badCountsLogged = true;
      return;
    }
    for (const l of this.countListeners) l(delta);
  }

  private onSkipped(flows: number): void {
    if (this.early) this.keepEarly({ skipped: flows });
    else this.skipped?.(flows);
  }

  /** Up to EARLY_MAX messages; a batch past them is lost (counted), counts and skips are kept. */
  private keepEarly(m: EarlyMessage): void {
    if ('batch' in m && ++this.earlyBatches > EARLY_MAX_BATCHES) this.lostRecords++;
    else this.early!.push(m);
  }

  /** Record batches from the workers, indexed (records.ts decodeRecord reads a record at an offset);
   *  the index is reused for the next batch. */
  onRecords(fn: (batch: Buffer, index: BatchIndex) => void): void {
    this.listeners.push(fn);
  }

  /** Records become L7 flows in the observer and count in the L7 metrics. */
  attachFlows(flows: AgentFlows): void {
    const metrics = flows.registry ? registerL7Metrics(flows.registry) : undefined;
    const name = (id: number) => {
      const v = flows.context.endpointById(id);
      return v?.podName ? `${v.namespace ? `${v.namespace}/` : ''}${v.podName}` : v ? v.containerId.slice(0, 12) : String(id);
    };
    const build = (b: unknown, off: number) => l7Flow(decodeRecord(b as Buffer, off), flows.context);
    this.onRecords((batch, ix) => {
      flows.pushLazyMany(batch, ix.offsets, ix.times, ix.count, build);
      // A worker of the format before its counts (adopted after an upgrade) sends none: its records count.
      if (batch[0] === BATCH_FORMAT_UNANSWERED) metrics?.observeBatch(batch, ix.offsets, ix.count, name);
    });
    if (metrics) this.countListeners.push((delta) => metrics.merge(delta, name));
    this.skipped = (n) => flows.countSkipped(n);
    flows.setRefresh(() => this.manager.collect());
    flows.onFollowers((n) => this.manager.setFollowing(n > 0));
    // What the workers sent while the agent was starting (adopted workers send what they held while
    // no agent ran as they connect), in the order it came.
    const early = this.early ?? [];
    this.early = undefined;
    for (const m of early)
      if ('batch' in m) this.onBatch(m.batch);
      else if ('counts' in m) this.onCounts(m.counts);
      else this.onSkipped(m.skipped);
  }

  status(): Record<string, unknown> {
    return { ...this.manager.status(), needed: this.needed, lostRecords: this.lostRecords };
  }

  close(): Promise<void> {
    return this.manager.close();
  }
}
