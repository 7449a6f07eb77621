// Flow visibility in the agent: reads the datapath's flow events, keeps the last --flow-buffer flows,
// serves them over the gRPC observer API (unix socket, optional TCP) and exposes Prometheus metrics.
// Wiring only; the logic lives in shared/src/flows and shared/src/metrics. Its dependencies are its
// parameters (the policy and identity lookups it names rules and peers with included).
import fs from 'node:fs';
import { possibleCpus } from '../bpf/datapath.ts';
import { tcxHooksBehind } from '../bpf/tcx.ts';
import { AgentEventLog, policyChanges, type PolicySnapshot } from '../flows/agent-events.ts';
import { dropReasonName } from '../flows/codes.ts';
import { FlowCollector } from '../flows/collector.ts';
import { labelList } from '../flows/enrich.ts';
import { EndpointTable, podOf } from '../flows/endpoints.ts';
import type { FlowContext } from '../flows/flow.ts';
import type { Registry } from 'prom-client';
import { monotonicToWallOffsetNs } from '../flows/ringbuf.ts';
import { FlowRing, type LazyBuild } from '../flows/ring.ts';
import { ObserverServer } from '../flows/server.ts';
import { KernelEventSource } from '../flows/source.ts';
import { createAgentMetrics, type AgentMetrics, type MetricsSources } from '../metrics/registry.ts';
import { serveMetrics, type MetricsServer } from '../metrics/server.ts';
import { VERSION } from '../version.ts';
import type { Datapath } from '../bpf/datapath.ts';
import type { IdentityLookup, PolicyLookup } from '../core.ts';
import type { EndpointManager } from '../endpoint/manager.ts';
import type { Logger } from '../log.ts';
import type { Endpoint } from '../types.ts';
import type { AgentConfig } from './config.ts';

/** Walking conntrack costs ~0.5 µs per entry: at most once per this period, whatever the scrape rate. */
const MAP_PRESSURE_TTL_MS = 10_000;
/** How often policy changes are looked for (they become POLICY_UPDATED/DELETED agent events). */
const POLICY_POLL_MS = 1000;

function endpointEvent(type: 'ENDPOINT_CREATED' | 'ENDPOINT_DELETED', ep: Endpoint) {
  return { type, endpointUpdate: { id: ep.id, labels: labelList(ep.labels), ...podOf(ep) } } as const;
}

export interface FlowsDeps {
  cfg: Pick<
    AgentConfig,
    'nodeName' | 'observerSocket' | 'observerAddress' | 'observerTls' | 'metricsAddress' | 'flowBufferSize' | 'flowEvents'
  >;
  log: Logger;
  datapath: Pick<Datapath, 'pinDir' | 'mapPressure' | 'dropCounters' | 'globalConfig'>;
  endpoints: Pick<EndpointManager, 'list' | 'addHooks' | 'goneRemoved'>;
  /** Names the policy rule behind a verdict. */
  rules: PolicyLookup;
  /** Labels behind a peer's numeric identity. */
  identities: IdentityLookup;
  /** Cluster mode's store reachability for the metrics page. */
  cluster?: MetricsSources['cluster'];
  /** When the agent started (the AGENT_STARTED event); default: now. */
  startedAt?: number;
}

export interface AgentFlows {
  /** Where the observer and the metrics serve (for /v1/status). */
  status(): { observer: { socket: string; address?: string; flowBufferSize: number }; metrics: { address: string | null } };
  /** For flows built elsewhere (the L7 proxy's): the lookups that name endpoints, identities, rules. */
  readonly context: FlowContext;
  /** A record of another source (the DNS proxy's), built into a flow by `build(source, 0)` when read. */
  pushLazy(source: unknown, timeMs: number, build: LazyBuild): void;
  /** Records of another source (the L7 proxy's batches): offsets[k] in `source` with times[k] (ms),
   *  k < count, each built into a flow by `build` when read. */
  pushLazyMany(source: unknown, offsets: Int32Array, times: Float64Array, count: number, build: LazyBuild): void;
  /** Who reports the datapath's DNS_CACHED events (the DNS proxy's part). */
  onDnsCached(fn: (data: Buffer, offset: number) => void): void;
  /** Flows of another source never stored (held-batches.ts): counted as seen. */
  countSkipped(n: number): void;
  /** What brings in the flows and counts another source holds until asked (the L7 workers'), run
   *  before a flow query, a server status and a metrics scrape. */
  setRefresh(fn: () => Promise<void>): void;
  /** Told the number of followers whenever it changes. */
  onFollowers(fn: (n: number) => void): void;
  /** The metrics registry (undefined with --metrics-address off). */
  readonly registry?: Registry;
  close(): Promise<void>;
}

/** Starts reading flow events and serving them; registers the endpoint hooks it needs. */
export async function startFlows(d: FlowsDeps): Promise<AgentFlows> {
  const log = d.log.child({ component: 'flows' });
  const cfg = d.cfg;
  const table = new EndpointTable();
  let metrics: AgentMetrics | undefined;
  let refreshedAt = 0;
  const agentEvents = new AgentEventLog();
  const refresh = () => {
    bump();
    table.replace(d.endpoints.list());
    refreshedAt = performance.now();
  };
  // An event can beat the afterCreate hook of a brand-new endpoint: look again, at most every 200 ms
  // (unknown ids must not turn every event into a table rebuild).
  const byId = (id: number) => {
    const hit = table.byEndpointId(id);
    if (hit || performance.now() - refreshedAt < 200) return hit;
    refresh();
    return table.byEndpointId(id);
  };
  // version: see bump().
  const context: FlowContext = {
    version: 0,
    nodeName: cfg.nodeName,
    wallOffset: { seconds: 0, nanos: 0 },
    peerCache: new Map(),
    ruleCache: new Map(),
    endpointById: byId,
    endpointByAddress: (buf, off, family) => table.byRaw(buf, off, family),
    labelsOfIdentity: (id) => d.identities.labelsOf(id),
    describeRule: (id) => d.rules.describeRule(id),
  };
  /** The table changes: events after this must be looked up afresh (FlowContext.version). */
  const bump = () => {
    context.version = (context.version ?? 0) + 1;
  };
  d.endpoints.addHooks({
    // One endpoint at a time: a full rebuild on every ADD grew with the node.
    afterCreate: (ep, ms) => {
      metrics?.observeEndpointCreate(ms);
      bump();
      table.put(ep);
      agentEvents.record(endpointEvent('ENDPOINT_CREATED', ep));
    },
    afterDelete: (ep) => {
      bump();
      table.remove(ep);
      agentEvents.record(endpointEvent('ENDPOINT_DELETED', ep));
    },
    afterLabelsChanged: (ep) => {
      bump();
      table.put(ep);
    },
  });
  refresh();

  const ring = new FlowRing(cfg.flowBufferSize, cfg.nodeName);
  let refreshOthers: (() => Promise<void>) | undefined;
  const refreshNow = () => (refreshOthers ? refreshOthers() : Promise.resolve());
  const source = new KernelEventSource({
    pinDir: d.datapath.pinDir,
    cpus: possibleCpus(),
    onError: (err) => log.warn({ err }, 'flow event reader'),
  });
  let onDnsCached: ((data: Buffer, offset: number) => void) | undefined;
  const collector = new FlowCollector({
    ring,
    source,
    context,
    onDnsCached: (data, offset) => onDnsCached?.(data, offset),
    wallOffset: monotonicToWallOffsetNs,
    onError: (err) => log.warn({ err }, 'could not turn a flow event into a flow (logged once)'),
  });
  const closers: (() => Promise<void> | void)[] = [];
  const closeAll = async () => {
    for (const c of closers.splice(0).reverse()) {
      // idempotent: a second close finds nothing
      try {
        await c();
      } catch (err) {
        log.warn({ err }, 'flows: close');
      }
    }
  };
  const startedAt = d.startedAt ?? Date.now();
  agentEvents.record({
    type: 'AGENT_STARTED',
    agentStart: { time: { seconds: Math.floor(startedAt / 1000), nanos: (startedAt % 1000) * 1e6 } },
  });
  closers.push(watchPolicies(d.rules, agentEvents));
  let observerStatus: ReturnType<AgentFlows['status']>['observer'];
  let metricsAddress: string | null = null;
  try {
    try {
      collector.start();
      closers.push(() => collector.close());
    } catch (err) {
      // The agent still serves (an empty observer) rather than refusing to run over visibility.
      log.error({ err, pinDir: d.datapath.pinDir }, 'cannot read flow events from the datapath');
    }

    const observer = await ObserverServer.start(
      {
        ring,
        nodeName: cfg.nodeName,
        version: VERSION,
        startedAtNs: process.hrtime.bigint(),
        // Report what the datapath really does (datapath_config), not what was asked for.
        flowEventsEnabled: () => {
          try {
            return d.datapath.globalConfig().events;
          } catch {
            return cfg.flowEvents;
          }
        },
        lostEvents: () => collector.datapathLost(),
        lostEventsAgent: () => collector.agentLost,
        onLost: (fn) => collector.onLost(fn),
        countAgentLost: (n) => collector.countAgentLost(n),
        refresh: refreshNow,
        agentEvents,
      },
      {
        socket: cfg.observerSocket,
        address: cfg.observerAddress,
        ...(cfg.observerTls ? { tls: readObserverTls(cfg.observerTls) } : {}),
      },
    );
    closers.push(() => observer.close());
    observerStatus = {
      socket: observer.socket,
      ...(observer.address ? { address: observer.address } : {}),
      flowBufferSize: ring.capacity,
    };

    if (cfg.metricsAddress !== 'off') {
      metrics = createAgentMetrics({
        stats: collector.stats,
        endpoints: () => d.endpoints.list().length,
        endpointsGone: () => d.endpoints.goneRemoved,
        tcxHooksBehind: () => tcxHooksBehind(d.datapath.pinDir).length,
        mapPressure: cachedMapPressure(d.datapath),
        drops: () => {
          try {
            return Object.entries(d.datapath.dropCounters()).map(([reason, c]) => ({
              reason: dropReasonName(Number(reason)),
              packets: Number(c.packets),
              bytes: Number(c.bytes),
            }));
          } catch {
            return [];
          } // a scrape must not fail over one unreadable map
        },
        lost: () => ({ datapath: collector.datapathLost(), agent: collector.agentLost }),
        flowRing: () => ({ held: ring.size, capacity: ring.capacity, seen: ring.seen, followers: ring.followers }),
        ...(d.cluster ? { cluster: d.cluster } : {}),
      });
      const server: MetricsServer = await serveMetrics(metrics.registry, cfg.metricsAddress, refreshNow);
      closers.push(() => server.close());
      metricsAddress = server.address;
      log.info({ metrics: server.address }, 'metrics serving');
    }
    log.info(
      { observer: observer.socket, address: observer.address, flowBuffer: ring.capacity, flowEvents: cfg.flowEvents },
      'flow observer serving',
    );
  } catch (err) {
    await closeAll();
    throw err;
  }
  return {
    status: () => ({ observer: observerStatus, metrics: { address: metricsAddress } }),
    context,
    onDnsCached: (fn) => {
      onDnsCached = fn;
    },
    pushLazy: (source, timeMs, build) => {
      ring.tick();
      ring.pushLazy(source, 0, timeMs, build);
    },
    countSkipped: (n) => ring.countSkipped(n),
    setRefresh: (fn) => {
      refreshOthers = fn;
    },
    onFollowers: (fn) => {
      ring.onFollowers = fn;
    },
    pushLazyMany: (source, offsets, times, count, build) => {
      ring.tick();
      ring.pushLazyMany(source, offsets, times, count, build);
    },
    registry: metrics?.registry,
    close: async () => {
      await closeAll();
      metrics = undefined;
    },
  };
}

/** Policy imports and deletions become agent events: compared once a second by revision. */
function watchPolicies(rules: PolicyLookup, log: AgentEventLog): () => void {
  let revision = -1;
  let before: PolicySnapshot[] = [];
  const poll = () => {
    if (!rules.policies || !rules.revision) return;
    const now = rules.revision();
    if (now === revision) return;
    const after = rules.policies();
    // The first look only learns what is there: those policies were not changed by anyone now.
    if (revision >= 0) for (const e of policyChanges(before, after, now)) log.record(e);
    revision = now;
    before = after;
  };
  poll();
  const timer = setInterval(poll, POLICY_POLL_MS);
  timer.unref();
  return () => clearInterval(timer);
}

function cachedMapPressure(datapath: Pick<Datapath, 'mapPressure'>): () => Record<string, { entries: number; max: number }> {
  let at = -Infinity;
  let value: Record<string, { entries: number; max: number }> = {};
  return () => {
    if (performance.now() - at > MAP_PRESSURE_TTL_MS) {
      try {
        value = datapath.mapPressure();
      } catch {
        /* keep the last reading */
      }
      at = performance.now();
    }
    return value;
  };
}

/** The observer's TLS files, read once at start (a missing file stops the agent with its name). */
function readObserverTls(t: NonNullable<AgentConfig['observerTls']>): { cert: Buffer; key: Buffer; clientCa?: Buffer } {
  const read = (flag: string, file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (e) {
      throw new Error(`${flag} ${file}: ${(e as Error).message}`);
    }
  };
  return {
    cert: read('--observer-tls-cert-file', t.certFile),
    key: read('--observer-tls-key-file', t.keyFile),
    ...(t.clientCaFile ? { clientCa: read('--observer-tls-client-ca-files', t.clientCaFile) } : {}),
  };
}
