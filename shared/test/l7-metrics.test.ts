// The L7 metrics as Prometheus scrapes them: requests by method, status and verdict (made-up methods
// as "other"), and the latency histogram per endpoint (cumulative buckets, sum, count), as the workers
// count them (request-counts.ts, merged by the agent); from the response records only for a worker of
// the format before those counts.
import t from 'tap';
import { Registry } from 'prom-client';
import { registerL7Metrics } from '../src/l7/metrics.ts';
import { readBatch } from '../src/l7/proxy/record-reader.ts';
import { methodCode, RecordWriter, type RecordContext } from '../src/l7/proxy/records.ts';
import { isCountsDelta, RequestCounts } from '../src/l7/proxy/request-counts.ts';
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

/** The scrape after GET 200 in 2 ms and in 0.3 ms and a made-up method denied 403 in 7 s, all for
 *  endpoint 9: the same whichever way they were counted (the workers' counts, or the records). */
function matchFirstThree(tt: Pick<typeof t, 'match'>, text: string): void {
  tt.match(text, /membrane_l7_requests_total\{method="GET",status="200",verdict="forwarded"\} 2\n/);
  tt.match(text, /membrane_l7_requests_total\{method="other",status="403",verdict="denied"\} 1\n/);
  tt.match(text, /membrane_l7_request_duration_seconds_bucket\{le="0.0005",endpoint="pod-9"\} 1\n/);
  tt.match(text, /membrane_l7_request_duration_seconds_bucket\{le="0.0025",endpoint="pod-9"\} 2\n/);
  tt.match(text, /membrane_l7_request_duration_seconds_bucket\{le="5",endpoint="pod-9"\} 2\n/);
  tt.match(text, /membrane_l7_request_duration_seconds_bucket\{le="10",endpoint="pod-9"\} 3\n/);
  tt.match(text, /membrane_l7_request_duration_seconds_bucket\{le="\+Inf",endpoint="pod-9"\} 3\n/);
  tt.match(text, /membrane_l7_request_duration_seconds_sum\{endpoint="pod-9"\} 7.0023\n/);
}

t.test("the workers' counts, merged: requests by method, status and verdict; latency per endpoint; refusals", async (t) => {
  const registry = new Registry();
  const metrics = registerL7Metrics(registry);
  const c = new RequestCounts();
  const name = (id: number) => `pod-${id}`;
  c.response(methodCode('GET'), 200, 0, 9, 2_000_000);
  c.response(methodCode('GET'), 200, 0, 9, 300_000);
  c.response(methodCode('BREW'), 403, 1, 9, 7_000_000_000);
  metrics.merge(c.take()!, name);
  let text = await registry.metrics();
  matchFirstThree(t, text);
  t.equal(c.take(), undefined, 'nothing new: nothing to send');
  c.response(methodCode('GET'), 200, 0, 9, 1_000_000);
  c.response(methodCode('GET'), 503, 2, 9, 4_000_000);
  c.response(methodCode('GET'), 200, 0, 0, 5); // no endpoint's policy proxied it: counted, no latency
  c.response(methodCode('GET'), 200, 0, 9, 11_000_000_000); // over the largest bound: +Inf only
  c.refusals(3);
  c.refusals(1);
  metrics.merge(c.take()!, name);
  text = await registry.metrics();
  t.match(text, /membrane_l7_requests_total\{method="GET",status="200",verdict="forwarded"\} 5\n/);
  t.match(text, /membrane_l7_requests_total\{method="GET",status="503",verdict="error"\} 1\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="10",endpoint="pod-9"\} 5\n/);
  t.match(text, /membrane_l7_request_duration_seconds_bucket\{le="\+Inf",endpoint="pod-9"\} 6\n/);
  t.match(text, /membrane_l7_request_duration_seconds_count\{endpoint="pod-9"\} 6/);
  t.match(text, /membrane_l7_connections_refused_total 4\n/);
});

t.test("a worker's counts are checked before they are merged", async (t) => {
  const c = new RequestCounts();
  c.response(1, 200, 0, 9, 1000);
  c.refusals(2);
  const good = JSON.parse(JSON.stringify(c.take()));
  t.ok(isCountsDelta(good), 'as sent, through JSON');
  for (const bad of [
    null,
    {},
    { ...good, requests: [[1]] },
    { ...good, requests: [[1, -1]] },
    { ...good, latency: [[9, { buckets: ['x'], sum: 0, count: 0 }]] },
    { ...good, refused: 'many' },
  ])
    t.notOk(isCountsDelta(bad), JSON.stringify(bad));
});

t.test(
  'a worker of the format before its counts: requests by method, status and verdict; latency per endpoint, from its records',
  async (t) => {
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
    matchFirstThree(t, text);
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
  },
);
