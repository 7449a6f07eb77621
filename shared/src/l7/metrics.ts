// Prometheus metrics of the L7 proxy: requests by method, status and verdict, and the request latency
// (request head to response head) per endpoint, as the workers count them (proxy/request-counts.ts:
// deltas beside their record batches, merge()); from the records themselves (observeBatch) only for
// a worker of the format before those counts (records.ts BATCH_FORMAT_UNANSWERED), adopted after an
// upgrade. Method names come from clients: anything but the standard ones counts as "other", so a
// client cannot make the agent grow a series per made-up method.
//
// A record costs a few additions: counts and buckets are kept in plain maps and arrays and handed to
// the registry when it is scraped. prom-client hashes the label set on every inc() and observe(),
// even on a child from labels(): that was a third of the agent's CPU per proxied request.
import { Counter, type Metric, type Registry } from 'prom-client';
import {
  At,
  isResponse,
  methodOfCode,
  metricEndpoint,
  REASON_CONN_LIMIT,
  RESPONSE_VIEW,
  refusedCount,
  verdictName,
} from './proxy/records.ts';
import {
  bucketOf,
  type CountsDelta,
  keyMethodCode,
  keyStatus,
  keyVerdict,
  L7_LATENCY_BUCKETS,
  type LatencyCounts,
  requestKey,
} from './proxy/request-counts.ts';

export { L7_LATENCY_BUCKETS };
const MAX_ENDPOINT_SERIES = 10_000;

export interface L7Metrics {
  /** The record at batch[off] (records.ts; with RESPONSE_VIEW: an answered request's response); `endpointName` names the endpoint whose policy proxied
   *  the request (for the latency series). */
  observe(batch: Buffer, off: number, endpointName: (id: number) => string): void;
  /** The records at offsets[0..count) of batch (record-reader.ts BatchIndex), as observe() each. */
  observeBatch(batch: Buffer, offsets: Int32Array, count: number, endpointName: (id: number) => string): void;
  /** A worker's counts since its last (request-counts.ts). */
  merge(delta: CountsDelta, endpointName: (id: number) => string): void;
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
  /** The last endpoint's series: a batch's responses are mostly one endpoint's. */
  private lastEndpoint = 0;
  private last: LatencySeries | undefined;

  observe(endpoint: number, endpointName: (id: number) => string, seconds: number): void {
    const s = this.seriesOf(endpoint, endpointName);
    const i = bucketOf(seconds);
    if (i < L7_LATENCY_BUCKETS.length) s.buckets[i]++;
    s.sum += seconds;
    s.count++;
  }

  /** Counts of a worker's (its last bucket: over the largest bound, counted in +Inf only). */
  add(endpoint: number, endpointName: (id: number) => string, c: LatencyCounts): void {
    const s = this.seriesOf(endpoint, endpointName);
    for (let i = 0; i < L7_LATENCY_BUCKETS.length; i++) s.buckets[i] += c.buckets[i] ?? 0;
    s.sum += c.sum;
    s.count += c.count;
  }

  private seriesOf(endpoint: number, endpointName: (id: number) => string): LatencySeries {
    let s = endpoint === this.lastEndpoint ? this.last : this.series.get(endpoint);
    if (!s) {
      if (this.series.size >= MAX_ENDPOINT_SERIES) this.series.clear();
      this.series.set(
        endpoint,
        (s = { endpoint: endpointName(endpoint), buckets: new Array(L7_LATENCY_BUCKETS.length).fill(0), sum: 0, count: 0 }),
      );
    }
    this.lastEndpoint = endpoint;
    this.last = s;
    return s;
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
    this.lastEndpoint = 0;
    this.last = undefined;
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
          children.set(
            key,
            (c = this.labels({
              method: methodOfCode(keyMethodCode(key)) || 'other',
              status: String(keyStatus(key)),
              verdict: verdictName(keyVerdict(key)),
            })),
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
  const count = (key: number, n: number) => pending.set(key, (pending.get(key) ?? 0) + n);
  const one = new Int32Array(1);
  const observeBatch = (b: Buffer, offsets: Int32Array, n: number, endpointName: (id: number) => string) => {
    // Numbers through a DataView and byte operations (inlined), not Buffer's read*() (a call each, and
    // a boxed number for each double); the counts by a run of equal keys, not a map update each.
    const dv = new DataView(b.buffer, b.byteOffset, b.length);
    let runKey = -1;
    let run = 0;
    for (let k = 0; k < n; k++) {
      const entry = offsets[k];
      const off = entry & ~RESPONSE_VIEW;
      // An answered request's response (RESPONSE_VIEW) is read from its request's record, which holds
      // the same fields at the same places.
      if (entry === off) {
        // A refusal's record stands for each refusal of its source in up to a second (source-limit.ts).
        if (b[off + At.REASON] === REASON_CONN_LIMIT) refused += refusedCount(b, off);
        if (!isResponse(b, off)) continue; // responses: they carry the status and the latency
      }
      const key = requestKey(b[off + At.METHOD], dv.getUint16(off + At.STATUS, true), b[off + At.VERDICT]);
      if (key !== runKey) {
        if (run) count(runKey, run);
        runKey = key;
        run = 0;
      }
      run++;
      const ep = metricEndpoint(b, off);
      if (ep) latency.observe(ep, endpointName, dv.getFloat64(off + At.LATENCY, true) / 1e9);
    }
    if (run) count(runKey, run);
  };
  return {
    observe(b, off, endpointName) {
      one[0] = off;
      observeBatch(b, one, 1, endpointName);
    },
    observeBatch,
    merge(delta, endpointName) {
      for (const [key, n] of delta.requests) count(key, n);
      for (const [endpoint, c] of delta.latency) latency.add(endpoint, endpointName, c);
      refused += delta.refused;
    },
  };
}
