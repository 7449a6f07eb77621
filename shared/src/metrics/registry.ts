// The agent's Prometheus metrics (prom-client, a registry of our own so nothing global leaks in).
// Hot-path counts arrive through FlowStats; everything else is read when Prometheus scrapes.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { FlowStats } from './flow-stats.ts';

export interface MetricsSources {
  stats: FlowStats;
  endpoints(): number;
  /** Endpoints removed because their netns was gone (the runtime never sent DEL). */
  endpointsGone?(): number;
  /** entries / max per BPF map (cached by the caller: walking conntrack is not free). */
  mapPressure(): Record<string, { entries: number; max: number }>;
  /** Datapath drop counters by reason name (drop_counters map), when readable. */
  drops(): { reason: string; packets: number; bytes: number }[];
  lost(): { datapath: number; agent: number };
  flowRing(): { held: number; capacity: number; seen: number; followers: number };
  /** Our tcx hooks where another tool's program runs ahead of ours (bpf/tcx.ts tcxHooksBehind). */
  tcxHooksBehind?(): number;
  /** Cluster mode: the store's reachability and the other nodes' endpoints known here. */
  cluster?(): ClusterMetricsView;
}

export interface ClusterMetricsView {
  connected: boolean;
  lastContactMs?: number;
  remoteEndpoints: number;
  ipcacheLive: boolean;
}

export const ENDPOINT_CREATE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface AgentMetrics {
  registry: Registry;
  observeEndpointCreate(ms: number): void;
}

/** Counters whose totals live elsewhere: reset and re-add on every scrape so they equal the source. */
function setTotals<T extends string>(c: Counter<T>, totals: [Record<T, string>, number][]): void {
  c.reset();
  for (const [labels, v] of totals) if (v > 0) c.inc(labels, v);
}

/** The event-loop delay histogram's sampling period, ms (below). */
export const EVENT_LOOP_SAMPLE_MS = 1000;

export function createAgentMetrics(src: MetricsSources, opts: { defaultMetrics?: boolean } = {}): AgentMetrics {
  const registry = new Registry();
  const registers = [registry];
  // The event-loop delay histogram samples on a libuv timer of this period (prom-client's default
  // is 10 ms: 100 wake-ups a second, most of an idle agent's, on CPUs its node's pods are using;
  // docs/performance-history.md, issue 17). Sampled once a second it still records any stall of over a second; the
  // nodejs_eventloop_lag_seconds gauge is measured at each scrape either way.
  if (opts.defaultMetrics !== false)
    collectDefaultMetrics({ register: registry, prefix: 'membrane_agent_', eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });

  new Counter({
    name: 'membrane_flows_processed_total',
    help: 'Flow events turned into flow records, by verdict and event type',
    labelNames: ['verdict', 'type'] as const,
    registers,
    collect() {
      setTotals(
        this,
        src.stats.flowTotals().map(([verdict, type, v]) => [{ verdict, type }, v]),
      );
    },
  });
  new Counter({
    name: 'membrane_policy_verdict_total',
    help: 'Policy decisions reported by the datapath (new connections and policy drops)',
    labelNames: ['direction', 'action', 'match'] as const,
    registers,
    collect() {
      setTotals(
        this,
        src.stats.policyTotals().map(([direction, action, match, v]) => [{ direction, action, match }, v]),
      );
    },
  });
  new Counter({
    name: 'membrane_drop_count_total',
    help: 'Packets dropped by the datapath, by reason (drop_counters map)',
    labelNames: ['reason'] as const,
    registers,
    collect() {
      setTotals(
        this,
        src.drops().map((d) => [{ reason: d.reason }, d.packets]),
      );
    },
  });
  new Counter({
    name: 'membrane_drop_bytes_total',
    help: 'Bytes dropped by the datapath, by reason (drop_counters map)',
    labelNames: ['reason'] as const,
    registers,
    collect() {
      setTotals(
        this,
        src.drops().map((d) => [{ reason: d.reason }, d.bytes]),
      );
    },
  });
  new Counter({
    name: 'membrane_flow_events_lost_total',
    help: 'Flow events lost: source="datapath" ring buffer full or rate limited, source="agent" reader backlog or slow observers',
    labelNames: ['source'] as const,
    registers,
    collect() {
      const l = src.lost();
      this.reset();
      // Always present (also at 0): an alert on a missing series would never fire.
      this.inc({ source: 'datapath' }, l.datapath);
      this.inc({ source: 'agent' }, l.agent);
    },
  });
  new Gauge({
    name: 'membrane_endpoints',
    help: 'Endpoints managed by this agent',
    registers,
    collect() {
      this.set(src.endpoints());
    },
  });
  new Counter({
    name: 'membrane_endpoints_gone_total',
    help: 'Endpoints removed because their network namespace was gone (the runtime never sent DEL)',
    registers,
    collect() {
      this.reset();
      this.inc(src.endpointsGone?.() ?? 0);
    },
  });
  new Gauge({
    name: 'membrane_tcx_hooks_behind_foreign',
    help: "Our tcx hooks (endpoint, tunnel, underlay devices) where another tool's program runs ahead of ours and could pass packets past our enforcement",
    registers,
    collect() {
      this.set(src.tcxHooksBehind?.() ?? 0);
    },
  });
  const create = new Histogram({
    name: 'membrane_endpoint_create_duration_seconds',
    help: 'Time to create an endpoint (veth, addresses, routes, BPF attach, state)',
    buckets: ENDPOINT_CREATE_BUCKETS,
    registers,
  });
  const mapGauge = (name: string, help: string, pick: (p: { entries: number; max: number }) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['map'] as const,
      registers,
      collect() {
        this.reset();
        for (const [map, p] of Object.entries(src.mapPressure())) this.set({ map }, pick(p));
      },
    });
  mapGauge('membrane_bpf_map_entries', 'Entries in a BPF map', (p) => p.entries);
  mapGauge('membrane_bpf_map_capacity', 'Maximum entries of a BPF map', (p) => p.max);
  mapGauge('membrane_bpf_map_pressure', 'Fill ratio of a BPF map (entries / capacity)', (p) => (p.max ? p.entries / p.max : 0));
  const ring = (name: string, help: string, pick: (r: ReturnType<MetricsSources['flowRing']>) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(pick(src.flowRing()));
      },
    });
  ring('membrane_flow_buffer_flows', 'Flows held in the in-memory flow buffer', (r) => r.held);
  ring('membrane_flow_buffer_capacity', 'Capacity of the in-memory flow buffer', (r) => r.capacity);
  ring('membrane_observer_followers', 'Observer clients following flows', (r) => r.followers);

  const cluster = src.cluster;
  if (cluster) {
    const gauge = (name: string, help: string, pick: (c: ClusterMetricsView) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(pick(cluster()));
        },
      });
    gauge('membrane_kvstore_connected', 'Whether the cluster store answers (1) or not (0)', (c) => (c.connected ? 1 : 0));
    gauge('membrane_kvstore_last_contact_seconds', 'Seconds since the cluster store last answered (-1: never)', (c) =>
      c.lastContactMs === undefined ? -1 : c.lastContactMs / 1000,
    );
    gauge(
      'membrane_cluster_remote_endpoints',
      "Other nodes' endpoint addresses in this node's ipcache",
      (c) => c.remoteEndpoints,
    );
    gauge(
      'membrane_cluster_ipcache_stale',
      "1 while the other nodes' endpoints are last known ones (the store's ipcache watch is down: changes are not seen)",
      (c) => (c.ipcacheLive ? 0 : 1),
    );
  }

  return { registry, observeEndpointCreate: (ms) => create.observe(ms / 1000) };
}
