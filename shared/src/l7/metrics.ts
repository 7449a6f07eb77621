// Prometheus metrics of the L7 proxy, from its request/response records: requests by method, status
// and verdict, and the request latency (request head to response head) per endpoint. Method names
// come from clients: anything but the standard ones counts as "other", so a client cannot make the
// agent grow a series per made-up method.
import { Counter, Histogram, type Registry } from 'prom-client';
import type { L7Record } from './proxy/records.ts';

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);
export const L7_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface L7Metrics {
  /** `endpointName` names the endpoint whose policy proxied the request (for the latency series). */
  observe(r: L7Record, endpointName: (id: number) => string): void;
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
  return {
    observe(r, endpointName) {
      if (r.kind !== 'response') return;
      requests.inc({ method: METHODS.has(r.method) ? r.method : 'other', status: String(r.status || 0), verdict: r.verdict });
      const side = r.sides.find((s) => s.direction === 'ingress') ?? r.sides[0];
      if (side) latency.observe({ endpoint: endpointName(side.endpoint) }, r.latencyNs / 1e9);
    },
  };
}
