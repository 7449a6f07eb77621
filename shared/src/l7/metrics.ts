// Prometheus metrics of the L7 proxy, from its request/response records: requests by method, status
// and verdict, and the request latency (request head to response head) per endpoint. Method names
// come from clients: anything but the standard ones counts as "other", so a client cannot make the
// agent grow a series per made-up method.
//
// A record costs a few additions: counts and buckets are kept in plain maps and arrays and handed to
// the registry when it is scraped. prom-client hashes the label set on every inc() and observe(),
// even on a child from labels(): that was a third of the agent's CPU per proxied request.
import { Counter, type Metric, type Registry } from 'prom-client';
import { At, isResponse, methodOfCode, metricEndpoint, REASON_CONN_LIMIT, refusedCount, verdictName } from './proxy/records.ts';

export const L7_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const MAX_ENDPOINT_SERIES = 10_000;

export interface L7Metrics {
  /** The record at batch[off] (records.ts); `endpointName` names the endpoint whose policy proxied
   *  the request (for the latency series). */
  observe(batch: Buffer, off: number, endpointName: (id: number) => string): void;
}

interface LatencySeries {
  endpoint: string;
  buckets: number[];
  sum: number;
  count: number;
}

/** A histogram by endpoint in the shape the registry reads from its metrics (name, help, type and
 *  the sample values, as prom-client's own Histogram hands them over). */
class LatencyHistogram {
  readonly name = 'membrane_l7_request_duration_seconds';
  readonly help = 'HTTP request to response (heads), per endpoint whose policy proxied it';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<number, LatencySeries>();

  observe(endpoint: number, endpointName: (id: number) => string, seconds: number): void {
    let s = this.series.get(endpoint);
    if (!s) {
      if (this.series.size >= MAX_ENDPOINT_SERIES) this.series.clear();
      this.series.set(
        endpoint,
        (s = { endpoint: endpointName(endpoint), buckets: new Array(L7_LATENCY_BUCKETS.length).fill(0), sum: 0, count: 0 }),
      );
    }
    let i = 0;
    while (i < L7_LATENCY_BUCKETS.length && seconds > L7_LATENCY_BUCKETS[i]) i++;
    if (i < L7_LATENCY_BUCKETS.length) s.buckets[i]++;
    s.sum += seconds;
    s.count++;
  }

  get(): {
    name: string;
    help: string;
    type: string;
    aggregator: string;
    values: { metricName: string; labels: Record<string, string | number>; value: number }[];
  } {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const s of this.series.values()) {
      let cumulative = 0;
      L7_LATENCY_BUCKETS.forEach((le, i) => {
        cumulative += s.buckets[i];
        values.push({ metricName: `${this.name}_bucket`, labels: { le, endpoint: s.endpoint }, value: cumulative });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { le: '+Inf', endpoint: s.endpoint }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: { endpoint: s.endpoint }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { endpoint: s.endpoint }, value: s.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.series.clear();
  }
}

export function registerL7Metrics(registry: Registry): L7Metrics {
  // Counts since the last scrape, by a number made of method code, status and verdict; the
  // counter's children are made once per series and incremented once per scrape.
  const pending = new Map<number, number>();
  const children = new Map<number, Counter.Internal>();
  new Counter({
    name: 'membrane_l7_requests_total',
    help: 'HTTP requests through the L7 proxy, by method, response status and verdict (forwarded, denied, error)',
    labelNames: ['method', 'status', 'verdict'] as const,
    registers: [registry],
    collect() {
      for (const [key, n] of pending) {
        let c = children.get(key);
        if (!c) {
          const mcode = Math.floor(key / 4000);
          const status = Math.floor(key / 4) % 1000;
          children.set(
            key,
            (c = this.labels({ method: methodOfCode(mcode) || 'other', status: String(status), verdict: verdictName(key % 4) })),
          );
        }
        c.inc(n);
      }
      pending.clear();
    },
  });
  // Unlabelled: the refusals' flows name each source; a label per source would let a flood of them
  // grow the registry.
  let refused = 0;
  new Counter({
    name: 'membrane_l7_connections_refused_total',
    help: 'Connections the L7 proxy refused at once because their source held as many open at the worker as one source may (--l7-proxy-max-conns-per-source)',
    registers: [registry],
    collect() {
      if (refused) this.inc(refused);
      refused = 0;
    },
  });
  const latency = new LatencyHistogram();
  // The registry reads any object of this shape (get, reset, name, help, type, aggregator).
  registry.registerMetric(latency as unknown as Metric);
  return {
    observe(b, off, endpointName) {
      // A refusal's record stands for each refusal of its source in up to a second (source-limit.ts).
      if (b[off + At.REASON] === REASON_CONN_LIMIT) refused += refusedCount(b, off);
      if (!isResponse(b, off)) return; // responses: they carry the status and the latency
      const key = (b[off + At.METHOD] * 1000 + b.readUInt16LE(off + At.STATUS)) * 4 + b[off + At.VERDICT];
      pending.set(key, (pending.get(key) ?? 0) + 1);
      const ep = metricEndpoint(b, off);
      if (ep) latency.observe(ep, endpointName, b.readDoubleLE(off + At.LATENCY) / 1e9);
    },
  };
}
