// The L7 metrics as Prometheus scrapes them: requests by method, status and verdict (made-up methods
// as "other"), and the latency histogram per endpoint (cumulative buckets, sum, count), counted from
// response records only.
import t from 'tap';
import { Registry } from 'prom-client';
import { registerL7Metrics } from '../src/l7/metrics.ts';
import { readBatch } from '../src/l7/proxy/record-reader.ts';
import { RecordWriter, type RecordContext } from '../src/l7/proxy/records.ts';
import type { Exchange } from '../src/l7/http/exchange.ts';
import type { ProxyDecision } from '../src/l7/proxy/view.ts';

const decision: ProxyDecision = {
  allowed: true,
  edits: [],
  mismatches: [],
  sides: [{ direction: 'ingress', endpoint: 9, allowed: true, ruleId: 1, l7: true }],
};
const ctx: RecordContext = {
  srcPort: 40000,
  dstPort: 80,
  policy: {
    revision: 1,
    src: { ip: '10.0.0.3', identity: 2 },
    dst: { ip: '10.0.0.2', identity: 3, endpoint: 9 },
    dport: 80,
    sides: [],
  },
};
const exchange = (method: string, status: number, latencyNs: number, denied = false): Exchange => ({
  method,
  path: '/',
  host: 'svc',
  protocol: 'HTTP/1.1',
  verdict: { allowed: !denied, edits: [], info: decision },
  startMs: 0,
  status,
  latencyNs,
  ...(denied ? { localReason: 'denied' as const } : {}),
});

t.test('requests by method, status and verdict; latency per endpoint', async (t) => {
  const registry = new Registry();
  const metrics = registerL7Metrics(registry);
  const w = new RecordWriter();
  const add = (x: Exchange) => {
    w.add('request', x, ctx, 0);
    w.add('response', x, ctx, 0);
  };
  add(exchange('GET', 200, 2_000_000));
  add(exchange('GET', 200, 300_000));
  add(exchange('BREW', 403, 7_000_000_000, true));
  const feed = () => {
    const b = w.take(0)!;
    for (const off of readBatch(b).offsets) metrics.observe(b, off, (id) => `pod-${id}`);
  };
  feed();
  let text = await registry.metrics();
  t.match(text, /membrane_l7_requests_total\{method="GET",status="200",verdict="forwarded"\} 2\n/);
  t.match(text, /membrane_l7_requests_total\{method="other",status="403",verdict="denied"\} 1\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="0.0005",endpoint="pod-9"\} 1\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="0.0025",endpoint="pod-9"\} 2\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="5",endpoint="pod-9"\} 2\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="10",endpoint="pod-9"\} 3\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="\+Inf",endpoint="pod-9"\} 3\n/);
  t.match(text, /membrane_l7_request_duration_seconds_sum\{endpoint="pod-9"\} 7.0023\n/);
  t.match(text, /membrane_l7_request_duration_seconds_count\{endpoint="pod-9"\} 3/);
  // Counts accumulate across scrapes. The batch path (the agent's) counts the same: answered request
  // records (a response in place), a reply record (a forwarded request whose upstream failed).
  add(exchange('GET', 200, 1_000_000));
  const failed = exchange('GET', 0, 0);
  w.add('request', failed, ctx, 0);
  Object.assign(failed, { status: 503, latencyNs: 4_000_000, localReason: 'upstream-unreachable' });
  w.add('response', failed, ctx, 4);
  const b = w.take(0)!;
  const offsets = Int32Array.from(readBatch(b).offsets);
  t.equal(offsets.length, 4, 'the answered request twice, the failed one and its reply');
  metrics.observeBatch(b, offsets, offsets.length, (id) => `pod-${id}`);
  text = await registry.metrics();
  t.match(text, /membrane_l7_requests_total\{method="GET",status="200",verdict="forwarded"\} 3\n/);
  t.match(text, /membrane_l7_requests_total\{method="GET",status="503",verdict="error"\} 1\n/);
  t.match(text, /membrane_l7_request_duration_seconds_count\{endpoint="pod-9"\} 5/);
  t.match(text, /membrane_l7_request_duration_seconds_sum\{endpoint="pod-9"\} 7.0073\n/);
});
