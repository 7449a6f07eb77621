// The bound on connections one source holds open at a proxy worker (l7/proxy/source-limit.ts): the
// counting per source, the default from the worker's fd limit, the rate-limited log, the refusals'
// records (one per source a second, each with its count), the refused connections' record as the
// operator sees it (an L7 flow DROPPED saying how many, the refusal counter), and the agent option
// that sets it. With real traffic: integration/l7-conn-cap.test.ts.
import t from 'tap';
import { Registry } from 'prom-client';
import { resolveConfig } from '../src/agent/config.ts';
import { l7Flow } from '../src/l7/flows.ts';
import { registerL7Metrics } from '../src/l7/metrics.ts';
import { decodeRecord, readBatch } from '../src/l7/proxy/record-reader.ts';
import { type RecordContext, RecordWriter } from '../src/l7/proxy/records.ts';
import {
  defaultMaxConnsPerSource,
  MAX_REFUSING_SOURCES,
  nofileOf,
  RefusalLog,
  RefusalRecords,
  refusedExchange,
  SourceLimit,
} from '../src/l7/proxy/source-limit.ts';
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

/** RefusalRecords writing into `out` ([what, count] per record). */
const recorder = (windowMs = 1000, maxSources = MAX_REFUSING_SOURCES) => {
  const out: [string, number][] = [];
  const r = new RefusalRecords<string>((what, n) => out.push([what, n]), windowMs, maxSources);
  const total = () => out.reduce((a, [, n]) => a + n, 0);
  return { r, out, total };
};

t.test('refusal records: a burst of 1,000 in one second is one record at once and one with the 999', async (t) => {
  const { r, out, total } = recorder();
  for (let i = 0; i < 1000; i++) r.refused(7, `port ${i}`, 5000 + i * 0.9);
  t.same(out, [['port 0', 1]], 'the first at once, the other 999 held');
  r.sweep(5999);
  t.same(out.length, 1, 'nothing before the window is over');
  r.sweep(6000);
  t.same(
    out,
    [
      ['port 0', 1],
      ['port 999', 999],
    ],
    'the 999 in one record once it is, naming the last',
  );
  t.equal(total(), 1000, 'each refusal counted once');
  r.sweep(6500);
  r.refused(7, 'late', 6600);
  t.equal(out.length, 2, 'a refusal within the window the sweep opened is held: still one record a second');
  r.sweep(7000);
  t.same(out.at(-1), ['late', 1]);
  r.sweep(8000);
  t.equal(r.sources, 0, 'a source with nothing to write for a window is forgotten');
  r.refused(7, 'again', 8001);
  t.same(out.at(-1), ['again', 1], 'and its next refusal is written at once again');
});

t.test('refusal records: the first refusal after the window writes the window with itself', async (t) => {
  const { r, out, total } = recorder();
  r.refused('198.18.0.9', 'a', 0);
  r.refused('198.18.0.9', 'b', 10);
  r.refused('198.18.0.9', 'c', 20);
  r.refused('198.18.0.9', 'd', 1000);
  t.same(
    out,
    [
      ['a', 1],
      ['d', 3],
    ],
    'two held plus this one, at the window end',
  );
  r.refused('198.18.0.9', 'e', 1500);
  r.sweep(1999);
  t.equal(out.length, 2, 'the record opened a new window');
  r.sweep(2000);
  t.same(out.at(-1), ['e', 1]);
  t.equal(total(), 5);
});

t.test('refusal records: two sources are independent', async (t) => {
  const { r, out, total } = recorder();
  for (let i = 0; i < 300; i++) {
    r.refused(7, 'seven', i);
    if (i % 3 === 0) r.refused('198.18.0.9', 'nine', i);
  }
  t.same(
    out,
    [
      ['seven', 1],
      ['nine', 1],
    ],
    "each source's first at once",
  );
  r.sweep(1000);
  t.same(
    out.slice(2).sort(),
    [
      ['nine', 99],
      ['seven', 299],
    ],
    'each its own count',
  );
  t.equal(total(), 400);
});

t.test('refusal records: no count is lost, whatever the clock and however many sources', async (t) => {
  const { r, total } = recorder(1000, 4);
  let refused = 0;
  let now = 0;
  let most = 0;
  // Deterministic pseudo-random sources (12, over the bound of 4) and gaps (0 to 1.5 s).
  let seed = 1;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < 20_000; i++) {
    now += rand() < 0.01 ? rand() * 1500 : rand();
    r.refused(Math.floor(rand() * 12), 'x', now);
    refused++;
    if (rand() < 0.001) r.sweep(now);
    most = Math.max(most, r.sources);
  }
  t.equal(most, 4, 'never more sources tracked than the bound (4 of 12)');
  r.flush();
  t.equal(total(), refused, `all ${refused} refusals in the records' counts`);
  t.equal(r.sources, 0, 'flush() forgets every source');
});

t.test('refusal records: past the bound the oldest source is written and forgotten', async (t) => {
  const { r, out, total } = recorder(1000, 2);
  r.refused(1, 'one', 0);
  r.refused(1, 'one', 1);
  r.refused(2, 'two', 2);
  t.same(
    [r.sources, out],
    [
      2,
      [
        ['one', 1],
        ['two', 1],
      ],
    ],
  );
  r.refused(3, 'three', 3);
  t.same(
    out,
    [
      ['one', 1],
      ['two', 1],
      ['one', 1],
      ['three', 1],
    ],
    "source 1's held count written as it is dropped",
  );
  t.equal(r.sources, 2, 'still two');
  r.refused(2, 'two', 4);
  r.sweep(1002);
  t.same(out.at(-1), ['two', 1], "source 2 is still tracked: its held refusal waits for the window's end");
  t.equal(total(), 5);
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
  w.add('request', refusedExchange(), ctx, 1_700_000_000_000); // no count: one (a record of before the count)
  w.add('request', refusedExchange(), { ...ctx, srcPort: 40002, refused: 12 }, 1_700_000_000_001); // a short repeat record
  w.add('request', refusedExchange(), { ...ctx, srcPort: 40003, refused: 1 }, 1_700_000_000_002);
  const batch = w.take(0)!;
  const { offsets } = readBatch(batch);
  const records = offsets.map((off) => decodeRecord(batch, off));
  t.match(records, [
    { kind: 'request', verdict: 'denied', reason: 'conn-limit', method: '', path: '', src: { ip: '10.0.0.5', port: 40001 } },
    { kind: 'request', verdict: 'denied', reason: 'conn-limit', src: { ip: '10.0.0.5', port: 40002, endpoint: 5 } },
    { kind: 'request', reason: 'conn-limit', src: { port: 40003 } },
  ]);
  t.same(
    records.map((r) => [r.refused, r.latencyNs]),
    [
      [1, 0],
      [12, 0],
      [1, 0],
    ],
    'each with its count, none as a latency',
  );
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
    Summary: /^12 connections refused: its source 10\.0\.0\.5 holds the most .*\(--l7-proxy-max-conns-per-source\)$/,
  });
  t.match(l7Flow(records[0], flowCtx).Summary, /^connection refused: its source 10\.0\.0\.5 holds the most/, 'one: no count');
  const registry = new Registry();
  const metrics = registerL7Metrics(registry);
  t.match(await registry.metrics(), /^membrane_l7_connections_refused_total 0$/m, 'shown before any refusal');
  for (const off of offsets) metrics.observe(batch, off, String);
  const text = await registry.metrics();
  t.match(text, /^membrane_l7_connections_refused_total 14$/m, "each refusal counted, a record's count added");
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
