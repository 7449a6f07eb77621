import t from 'tap';
import http from 'node:http';
import { FlowStats, policyAction } from '../src/metrics/flow-stats.ts';
import { parsePrometheusText, PromParseError, sampleValue } from '../src/metrics/parse.ts';
import { createAgentMetrics } from '../src/metrics/registry.ts';
import { parseListenAddress, serveMetrics } from '../src/metrics/server.ts';
import type { Flow } from '../src/flows/types.ts';

const flow = (over: Partial<Flow>): Flow => ({
  time: { seconds: 1, nanos: 0 },
  verdict: 'FORWARDED',
  IP: { source: 'a', destination: 'b', ipVersion: 'IPv4' },
  l4: {},
  source: {},
  destination: {},
  nodeName: 'n',
  membrane: { event: 'FLOW_NEW' },
  trafficDirection: 'INGRESS',
  ...over,
});

function setup() {
  const stats = new FlowStats();
  let lost = { datapath: 0, agent: 0 };
  const m = createAgentMetrics({
    stats,
    endpoints: () => 3,
    mapPressure: () => ({
      conntrack: { entries: 100, max: 65536 },
      policy: { entries: 10, max: 16384 },
      ipcache: { entries: 4, max: 65536 },
    }),
    drops: () => [{ reason: 'POLICY_DENIED', packets: 12, bytes: 720 }],
    lost: () => lost,
    flowRing: () => ({ held: 5, capacity: 4096, seen: 9, followers: 1 }),
  });
  return {
    stats,
    m,
    setLost: (l: typeof lost) => {
      lost = l;
    },
  };
}

t.test('the page parses as Prometheus text and carries every metric the issue lists', async (t) => {
  const { stats, m, setLost } = setup();
  stats.record(flow({}));
  stats.record(flow({ ingressAllowedBy: [{ name: 'p' }] }));
  stats.record(
    flow({
      verdict: 'DROPPED',
      membrane: { event: 'FLOW_DROP' },
      dropReason: 133,
      dropReasonDesc: 'POLICY_DENIED',
      trafficDirection: 'EGRESS',
      egressDeniedBy: [{ name: 'd' }],
    }),
  );
  stats.record(flow({ verdict: 'AUDIT', membrane: { event: 'FLOW_DROP' }, dropReason: 133, dropReasonDesc: 'POLICY_DENIED' }));
  stats.record(flow({ membrane: { event: 'FLOW_END' } }));
  m.observeEndpointCreate(42);
  m.observeEndpointCreate(1500);
  setLost({ datapath: 17, agent: 2 });
  const page = parsePrometheusText(await m.registry.metrics());
  const v = (name: string, labels: Record<string, string> = {}) => sampleValue(page, name, labels);
  t.equal(v('membrane_flows_processed_total', { verdict: 'FORWARDED', type: 'FLOW_NEW' }), 2);
  t.equal(v('membrane_flows_processed_total', { verdict: 'DROPPED', type: 'DROP' }), 1);
  t.equal(v('membrane_flows_processed_total', { verdict: 'FORWARDED', type: 'FLOW_END' }), 1);
  t.equal(v('membrane_policy_verdict_total', { direction: 'ingress', action: 'allowed', match: 'none' }), 1);
  t.equal(v('membrane_policy_verdict_total', { direction: 'ingress', action: 'allowed', match: 'rule' }), 1);
  t.equal(v('membrane_policy_verdict_total', { direction: 'egress', action: 'denied', match: 'rule' }), 1);
  t.equal(v('membrane_policy_verdict_total', { direction: 'ingress', action: 'audit', match: 'none' }), 1);
  t.equal(v('membrane_drop_count_total', { reason: 'POLICY_DENIED' }), 12);
  t.equal(v('membrane_drop_bytes_total', { reason: 'POLICY_DENIED' }), 720);
  t.equal(v('membrane_endpoints'), 3);
  t.equal(v('membrane_endpoint_create_duration_seconds_count'), 2);
  t.equal(v('membrane_endpoint_create_duration_seconds_bucket', { le: '0.05' }), 1);
  t.equal(v('membrane_endpoint_create_duration_seconds_bucket', { le: '+Inf' }), 2);
  t.equal(v('membrane_bpf_map_entries', { map: 'conntrack' }), 100);
  t.equal(v('membrane_bpf_map_capacity', { map: 'policy' }), 16384);
  t.equal(v('membrane_bpf_map_pressure', { map: 'ipcache' }), 4 / 65536);
  t.equal(v('membrane_flow_events_lost_total', { source: 'datapath' }), 17);
  t.equal(v('membrane_flow_events_lost_total', { source: 'agent' }), 2);
  t.equal(v('membrane_flow_buffer_flows'), 5);
  t.equal(v('membrane_observer_followers'), 1);
  t.equal(page.get('membrane_flows_processed_total')?.type, 'counter');
  t.equal(page.get('membrane_endpoint_create_duration_seconds')?.type, 'histogram');
  t.ok(v('membrane_agent_process_cpu_user_seconds_total') !== undefined, 'process metrics too');
  // Counters equal their sources on every scrape (no double counting across scrapes).
  stats.record(flow({}));
  const again = parsePrometheusText(await m.registry.metrics());
  t.equal(sampleValue(again, 'membrane_flows_processed_total', { verdict: 'FORWARDED', type: 'FLOW_NEW' }), 3);
});

t.test('lost counters are there at zero', async (t) => {
  const { m } = setup();
  const page = parsePrometheusText(await m.registry.metrics());
  t.equal(sampleValue(page, 'membrane_flow_events_lost_total', { source: 'datapath' }), 0);
});

t.test("the agent's raw-bytes path counts exactly like the flow path", async (t) => {
  const { encodeTraceEvent, decodeTraceEvent } = await import('../src/flows/event.ts');
  const { buildFlow } = await import('../src/flows/flow.ts');
  const ctx = {
    nodeName: 'n',
    wallOffset: { seconds: 0, nanos: 0 },
    endpointById: () => undefined,
    endpointByAddress: () => undefined,
    labelsOfIdentity: () => undefined,
    describeRule: () => undefined,
  };
  const raw = new FlowStats(),
    viaFlow = new FlowStats();
  for (const type of [1, 2, 3, 9])
    for (const verdict of [0, 1, 2, 3, 7])
      for (const flags of [0, 1])
        for (const reason of [0, 1, 2])
          for (const direction of [0, 1])
            for (const ruleId of [0, 0x1401]) {
              const buf = encodeTraceEvent({
                type,
                verdict,
                flags,
                reason,
                direction,
                ruleId,
                saddr: '10.0.0.1',
                daddr: '10.0.0.2',
              });
              raw.recordRaw(buf, 0);
              viaFlow.record(buildFlow(decodeTraceEvent(buf), ctx));
            }
  t.same(raw.flowTotals(), viaFlow.flowTotals());
  t.same(raw.policyTotals(), viaFlow.policyTotals());
});

t.test('policy verdicts come from connection starts and policy drops only', async (t) => {
  t.equal(policyAction(flow({})), 'allowed');
  t.equal(policyAction(flow({ membrane: { event: 'FLOW_END' } })), undefined);
  t.equal(
    policyAction(
      flow({ verdict: 'DROPPED', membrane: { event: 'FLOW_DROP' }, dropReason: 134, dropReasonDesc: 'INVALID_PACKET_DROPPED' }),
    ),
    undefined,
  );
});

t.test('the parser rejects what Prometheus would', async (t) => {
  const bad = [
    'no_newline 1',
    '9bad 1\n',
    'x{a=1} 1\n',
    'x{a="1",a="2"} 1\n',
    'x 1\n# TYPE x counter\n',
    'x one\n',
    '# TYPE h histogram\nh_bucket{le="1"} 5\nh_bucket{le="+Inf"} 3\nh_count 3\n',
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 3\nh_count 4\n',
  ];
  for (const text of bad) t.throws(() => parsePrometheusText(text), PromParseError, JSON.stringify(text));
  const ok = parsePrometheusText('# HELP x a "help"\n# TYPE x gauge\nx{l="a\\"b\\\\c\\n"} -1.5e3 1700000000\ny +Inf\nz NaN\n');
  t.equal(sampleValue(ok, 'x', { l: 'a"b\\c\n' }), -1500);
  t.equal(sampleValue(ok, 'y'), Infinity);
});

t.test('served over HTTP on an ephemeral port', async (t) => {
  const { m } = setup();
  const srv = await serveMetrics(m.registry, '127.0.0.1:0');
  t.teardown(() => srv.close());
  t.match(srv.address, /^127\.0\.0\.1:\d+$/);
  t.not(srv.address, '127.0.0.1:0');
  const get = (p: string, method = 'GET') =>
    new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
      const [host, port] = [srv.address.split(':')[0], Number(srv.address.split(':')[1])];
      http
        .request({ host, port, path: p, method }, (res) => {
          let body = '';
          res.on('data', (d) => {
            body += d;
          });
          res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
        })
        .on('error', reject)
        .end();
    });
  const page = await get('/metrics');
  t.equal(page.status, 200);
  t.match(page.type, /^text\/plain; version=0\.0\.4/);
  t.ok(parsePrometheusText(page.body).has('membrane_endpoints'));
  t.equal((await get('/nope')).status, 404);
  t.equal((await get('/metrics', 'POST')).status, 405);
});

t.test('listen addresses', async (t) => {
  t.same(parseListenAddress('127.0.0.1:9962'), { host: '127.0.0.1', port: 9962 });
  t.same(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
  t.same(parseListenAddress(':9962'), { host: '0.0.0.0', port: 9962 });
  t.throws(() => parseListenAddress('localhost'), /not host:port/);
  t.throws(() => parseListenAddress('a:70000'), /not host:port/);
});
