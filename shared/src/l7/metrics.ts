// Prometheus metrics of the L7 proxy, from its request/response records: requests by method, status
// and verdict, and the request latency (request head to response head) per endpoint. Method names
// come from clients: anything but the standard ones counts as "other", so a client cannot make the
// agent grow a series per made-up method.
import { Counter, Histogram, type Registry } from 'prom-client';
import { At, methodOfCode, verdictName } from './proxy/records.ts';

export const L7_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface L7Metrics {
  /** The record at batch[off] (records.ts); `endpointName` names the endpoint whose policy proxied
   *  the request (for the latency series). */
  observe(batch: Buffer, off: number, endpointName: (id: number) => string): void;
}

export function registerL7Metrics(registry: Registry): L7Metrics {
  const registers = [registry];
  const requests = new Counter({
    name: 'membrane_l7_requests_total', help: 'HTTP requests through the L7 proxy, by method, response status and verdict (forwarded, denied, error)',
    labelNames: ['method', 'status', 'verdict'] as const, registers,
  });
  const latency = new Histogram({
    name: 'membrane_l7_request_duration_seconds', help: 'HTTP request to response (heads), per endpoint whose policy proxied it',
    labelNames: ['endpoint'] as const, buckets: L7_LATENCY_BUCKETS, registers,
  });
  // Label children cached (counters keyed by a number made of method code, status and verdict): a
  // request costs two increments, no label hashing.
  const counters = new Map<number, Counter.Internal>();
  const latencies = new Map<number, Histogram.Internal<'endpoint'>>();
  return {
    observe(b, off, endpointName) {
      if (b[off + At.KIND] !== 1) return; // responses: they carry the status and the latency
      const mcode = b[off + At.METHOD];
      const status = b.readUInt16LE(off + At.STATUS);
      const verdict = b[off + At.VERDICT];
      const key = (mcode * 1000 + status) * 4 + verdict;
      let c = counters.get(key);
      if (!c) counters.set(key, (c = requests.labels({ method: methodOfCode(mcode) || 'other', status: String(status), verdict: verdictName(verdict) })));
      c.inc();
      const ep = b.readUInt32LE(off + At.METRIC_ENDPOINT);
      if (!ep) return;
      let h = latencies.get(ep);
      if (!h) {
        if (latencies.size > 10_000) latencies.clear();
        latencies.set(ep, (h = latency.labels({ endpoint: endpointName(ep) })));
      }
      h.observe(b.readDoubleLE(off + At.LATENCY) / 1e9);
    },
  };
}
