// Prometheus metrics of the L7 proxy, from its request/response records: requests by method, status
// and verdict, and the request latency (request head to response head) per endpoint. Method names
// come from clients: anything but the standard ones counts as "other", so a client cannot make the
// agent grow a series per made-up method.
import { Counter, Histogram, type Registry } from 'prom-client';
import { R, verdictName, type RecordTuple } from './proxy/records.ts';

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);
export const L7_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface L7Metrics {
  /** `endpointName` names the endpoint whose policy proxied the request (for the latency series). */
  observe(r: RecordTuple, endpointName: (id: number) => string): void;
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
  // Label children cached by their values: a request costs two increments, no label hashing.
  const counters = new Map<string, Counter.Internal>();
  const latencies = new Map<number, Histogram.Internal<'endpoint'>>();
  return {
    observe(r, endpointName) {
      if (r[R.KIND] !== 1) return; // responses: they carry the status and the latency
      const method = METHODS.has(r[R.METHOD]) ? r[R.METHOD] : 'other';
      const key = `${method}|${r[R.STATUS]}|${r[R.VERDICT]}`;
      let c = counters.get(key);
      if (!c) counters.set(key, (c = requests.labels({ method, status: String(r[R.STATUS] || 0), verdict: verdictName(r[R.VERDICT]) })));
      c.inc();
      const sides = r[R.SIDES];
      let side = sides[0];
      for (const s of sides) if (s[0] === 0) { side = s; break; } // the ingress side first
      if (!side) return;
      let h = latencies.get(side[1]);
      if (!h) {
        if (latencies.size > 10_000) latencies.clear();
        latencies.set(side[1], (h = latency.labels({ endpoint: endpointName(side[1]) })));
      }
      h.observe(r[R.LATENCY] / 1e9);
    },
  };
}
