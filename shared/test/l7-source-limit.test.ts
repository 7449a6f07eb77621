// The bound on connections one source holds open at a proxy worker (l7/proxy/source-limit.ts): the
// counting per source, the default from the worker's fd limit, the rate-limited log, the refused
// connection's record as the operator sees it (an L7 flow DROPPED, the refusal counter), and the agent
// option that sets it. With real traffic: integration/l7-conn-cap.test.ts.
import t from 'tap';
import { Registry } from 'prom-client';
import { resolveConfig } from '../src/agent/config.ts';
import { l7Flow } from '../src/l7/flows.ts';
import { registerL7Metrics } from '../src/l7/metrics.ts';
import { decodeRecord, readBatch } from '../src/l7/proxy/record-reader.ts';
import { type RecordContext, RecordWriter } from '../src/l7/proxy/records.ts';
import { defaultMaxConnsPerSource, nofileOf, RefusalLog, refusedExchange, SourceLimit } from '../src/l7/proxy/source-limit.ts';
import type { FlowContext } from '../src/flows/flow.ts';

t.test('each source up to the bound; past it refused and counted; a closed connection frees a place', async (t) => {
  const l = new SourceLimit(3);
  t.same([l.admit(7), l.admit(7), l.admit(7)], [true, true, true], 'endpoint 7: three');
  t.equal(l.admit(7), false, 'the fourth is refused');
  t.equal(l.count(7), 3, 'a refusal counts nothing');
  t.equal(l.admit('198.18.0.9'), true, 'another source is unaffected');
  t.equal(l.refused, 1);
  l.release(7);
  t.equal(l.admit(7), true, 'one closed: one more');
  t.equal(l.admit(7), false, 'and no more than that');
  for (let i = 0; i < 3; i++) l.release(7);
  l.release('198.18.0.9');
  t.equal(l.sources, 0, 'a source whose connections all closed is forgotten (nothing kept per source)');
  l.release(7);
  t.equal(l.count(7), 0, 'a release without a connection changes nothing');
  t.same([l.admit(7), l.admit(7), l.admit(7), l.admit(7)], [true, true, true, false], 'the full bound again, not more');
  t.equal(l.refused, 3);
  t.throws(() => new SourceLimit(0), /whole number >= 1, not 0/);
});

t.test('the default: a sixteenth of the fd limit, 16 to 1,024', async (t) => {
  t.equal(defaultMaxConnsPerSource(20_000), 1024, 'this machine: 20,000 fds');
  t.equal(defaultMaxConnsPerSource(524_288), 1024, "systemd's hard limit");
  t.equal(defaultMaxConnsPerSource(4096), 256);
  t.equal(defaultMaxConnsPerSource(1024), 64);
  t.equal(defaultMaxConnsPerSource(100), 16);
  t.equal(defaultMaxConnsPerSource(Number.POSITIVE_INFINITY), 1024, 'unlimited');
  t.equal(defaultMaxConnsPerSource(Number.NaN), 1024, 'unknown');
  const limits = `Limit                     Soft Limit           Hard Limit           Units
Max processes             63443                63443                processes
Max open files            20000                40000                files
`;
  t.equal(nofileOf(limits), 20_000, 'the soft limit of /proc/<pid>/limits');
  t.equal(nofileOf(limits.replace('20000 ', 'unlimited ')), Number.POSITIVE_INFINITY);
  t.ok(Number.isNaN(nofileOf('')), 'none');
});

t.test('the log: the first refusal at once, then at most a line per interval with the count', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const log = new RefusalLog((_msg, extra) => lines.push(extra), 10_000);
  log.refused('10.0.0.5', 20, 1000);
  for (let i = 0; i < 500; i++) log.refused('10.0.0.5', 20, 1000 + i);
  t.equal(lines.length, 1, '501 refusals within 10 s: one line');
  log.refused('10.0.0.6', 20, 11_000);
  t.same(lines, [
    { refused: 1, lastSource: '10.0.0.5', maxConnsPerSource: 20 },
    { refused: 501, lastSource: '10.0.0.6', maxConnsPerSource: 20 },
  ]);
});

t.test("a refused connection's record: an L7 flow DROPPED from its source, counted in the metrics", async (t) => {
  const ctx: RecordContext = {
    srcPort: 40001,
    dstPort: 80,
    policy: {
      revision: 1,
      src: { ip: '10.0.0.5', identity: 300, endpoint: 5 },
      dst: { ip: '10.0.0.2', identity: 301, endpoint: 2 },
      dport: 80,
      sides: [],
    },
  };
  const w = new RecordWriter();
  w.add('request', refusedExchange(), ctx, 1_700_000_000_000);
  w.add('request', refusedExchange(), { ...ctx, srcPort: 40002 }, 1_700_000_000_001); // a short repeat record
  const batch = w.take(0)!;
  const { offsets } = readBatch(batch);
  const records = offsets.map((off) => decodeRecord(batch, off));
  t.match(records, [
    { kind: 'request', verdict: 'denied', reason: 'conn-limit', method: '', path: '', src: { ip: '10.0.0.5', port: 40001 } },
    { kind: 'request', verdict: 'denied', reason: 'conn-limit', src: { ip: '10.0.0.5', port: 40002, endpoint: 5 } },
  ]);
  const flowCtx: FlowContext = {
    nodeName: 'node-1',
    wallOffset: { seconds: 0, nanos: 0 },
    endpointById: () => undefined,
    endpointByAddress: () => undefined,
    labelsOfIdentity: () => undefined,
    describeRule: () => undefined,
  };
  t.match(l7Flow(records[1], flowCtx), {
    Type: 'L7',
    verdict: 'DROPPED',
    IP: { source: '10.0.0.5', destination: '10.0.0.2' },
    l4: { TCP: { sourcePort: 40002, destinationPort: 80 } },
    l7: { type: 'REQUEST' },
    Summary: /^connection refused: its source 10\.0\.0\.5 .*\(--l7-proxy-max-conns-per-source\)$/,
  });
  const registry = new Registry();
  const metrics = registerL7Metrics(registry);
  t.match(await registry.metrics(), /^membrane_l7_connections_refused_total 0$/m, 'shown before any refusal');
  for (const off of offsets) metrics.observe(batch, off, String);
  const text = await registry.metrics();
  t.match(text, /^membrane_l7_connections_refused_total 2$/m, 'each refusal counted');
  t.notMatch(text, /membrane_l7_requests_total\{/, 'and not as a request');
});

t.test('--l7-proxy-max-conns-per-source, its environment variable and config key', async (t) => {
  const noFile = () => {
    throw new Error('no file');
  };
  t.equal(resolveConfig([], {}, noFile).l7ProxyMaxConnsPerSource, 0, "default: 0 (the worker's own default)");
  t.equal(resolveConfig(['--l7-proxy-max-conns-per-source', '20'], {}, noFile).l7ProxyMaxConnsPerSource, 20);
  t.equal(resolveConfig([], { MEMBRANE_L7_PROXY_MAX_CONNS_PER_SOURCE: '30' }, noFile).l7ProxyMaxConnsPerSource, 30);
  t.equal(resolveConfig(['--config', '/c.yaml'], {}, () => 'l7ProxyMaxConnsPerSource: 40\n').l7ProxyMaxConnsPerSource, 40);
  t.throws(() => resolveConfig(['--l7-proxy-max-conns-per-source', '-1'], {}, noFile), /--l7-proxy-max-conns-per-source/);
});
