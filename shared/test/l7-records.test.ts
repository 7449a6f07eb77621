// The proxy workers' record batches: what the worker writes is what the agent reads, for both
// address families, any method, long paths (cut, never overflowing), many records and lost counts;
// a cut or foreign batch is refused instead of misread.
import t from 'tap';
import { BatchIndex, decodeRecord, readBatch } from '../src/l7/proxy/record-reader.ts';
import { metricEndpoint, RESPONSE_VIEW, RecordWriter, type RecordContext } from '../src/l7/proxy/records.ts';
import type { Exchange } from '../src/l7/http/exchange.ts';
import type { ConnectionPolicy, ProxyDecision } from '../src/l7/proxy/view.ts';

const policy = (src: string, dst: string): ConnectionPolicy => ({
  revision: 1,
  src: { ip: src, identity: 2 },
  dst: { ip: dst, identity: 70000, endpoint: 9 },
  dport: 80,
  sides: [],
});
const decision: ProxyDecision = {
  allowed: true,
  edits: [],
  mismatches: [],
  sides: [
    { direction: 'egress', endpoint: 4, allowed: true, ruleId: 0x20001, l7: true },
    {
      direction: 'ingress',
      endpoint: 9,
      allowed: true,
      ruleId: 0x10002,
      l7: true,
      http: {
        ruleId: 0x10002,
        path: 'spec.ingress[0].toPorts[0].rules.http[1]',
        http: { method: 'GET', headers: [], headerMatches: [] },
      },
    },
  ],
};
const exchange = (over: Partial<Exchange> = {}): Exchange => ({
  method: 'GET',
  path: '/a?b=1',
  host: 'svc',
  protocol: 'HTTP/1.1',
  verdict: { allowed: true, edits: [], info: decision },
  startMs: 0,
  status: 200,
  latencyNs: 1_500_000,
  ...over,
});

t.test('a response record, IPv4 and IPv6', async (t) => {
  for (const [src, dst] of [
    ['10.0.0.3', '10.0.0.2'],
    ['fd00::3', 'fd00:1::2'],
  ]) {
    const w = new RecordWriter();
    const ctx: RecordContext = { srcPort: 40000, dstPort: 80, policy: policy(src, dst) };
    w.add('response', exchange(), ctx, 1_700_000_000_123.25);
    const b = w.take(3)!;
    const { lost, offsets } = readBatch(b);
    t.equal(lost, 3);
    t.same(
      decodeRecord(b, offsets[0]),
      {
        kind: 'response',
        timeMs: 1_700_000_000_123.25,
        src: { ip: src, port: 40000, identity: 2 },
        dst: { ip: dst, port: 80, identity: 70000, endpoint: 9 },
        method: 'GET',
        path: '/a?b=1',
        host: 'svc',
        protocol: 'HTTP/1.1',
        status: 200,
        latencyNs: 1_500_000,
        verdict: 'forwarded',
        sides: [
          { direction: 'egress', endpoint: 4, allowed: true, ruleId: 0x20001 },
          {
            direction: 'ingress',
            endpoint: 9,
            allowed: true,
            ruleId: 0x10002,
            httpRule: 'spec.ingress[0].toPorts[0].rules.http[1]',
          },
        ],
      },
      `${src} -> ${dst}`,
    );
    t.equal(metricEndpoint(b, offsets[0]), 9, 'the latency metric goes to the ingress side');
  }
});

t.test(
  "a response in its request record's batch answers that record in place, or is a short reply naming it when its verdict differs",
  async (t) => {
    const w = new RecordWriter();
    const ctx: RecordContext = { srcPort: 40000, dstPort: 80, policy: policy('fd00::3', 'fd00:1::2') };
    const x = exchange({ status: 0, latencyNs: 0 });
    w.add('request', x, ctx, 10);
    const other = exchange({ method: 'PROPFIND', path: '/other', status: 0, latencyNs: 0 });
    w.add('request', other, ctx, 11);
    Object.assign(x, { status: 503, latencyNs: 2_000_000, localReason: 'upstream-unreachable' });
    let bytesBefore = w.bytes;
    w.add('response', x, ctx, 12);
    t.equal(w.bytes - bytesBefore, 40, 'a reply is 40 bytes');
    bytesBefore = w.bytes;
    const countBefore = w.count;
    Object.assign(other, { status: 200, latencyNs: 3_000_000 });
    w.add('response', other, ctx, 14);
    t.equal(w.bytes - bytesBefore, 0, 'an answer in place adds no bytes');
    t.equal(w.count, countBefore, 'nor a record');
    const late = exchange();
    w.add('request', late, ctx, 14);
    const b = w.take(0)!;
    w.add('response', late, ctx, 15.5); // its request went out in the batch before: a full record
    const b2 = w.take(0)!;
    const offs = readBatch(b).offsets;
    t.equal(offs.length, 5, "two requests, the answered one's response, the reply, the late request");
    t.equal(offs[2], offs[1] | RESPONSE_VIEW, 'the answer is listed right after its request');
    const [req, otherReq, otherRes, res] = offs.map((o) => decodeRecord(b, o));
    const { kind: _k, timeMs: _t, status: _s, latencyNs: _l, verdict: _v, ...same } = req;
    t.same(
      res,
      {
        ...same,
        kind: 'response',
        timeMs: 12,
        status: 503,
        latencyNs: 2_000_000,
        verdict: 'error',
        reason: 'upstream-unreachable',
      },
      'the reply: its request record with the response fields',
    );
    t.match(
      otherReq,
      { kind: 'request', method: 'PROPFIND', timeMs: 11, status: 0, latencyNs: 0 },
      'the answered request reads as a request',
    );
    const { kind: _k2, timeMs: _t2, status: _s2, latencyNs: _l2, ...otherSame } = otherReq;
    t.same(
      otherRes,
      { ...otherSame, kind: 'response', timeMs: 14, status: 200, latencyNs: 3_000_000 },
      'its response: the request with the status, the latency and the time the head went out',
    );
    t.notOk('reason' in otherRes, 'no reason on a forwarded response');
    t.equal(metricEndpoint(b, offs[3]), 9, 'a reply carries the latency metric endpoint');
    t.match(decodeRecord(b2, readBatch(b2).offsets[0]), { kind: 'response', path: '/a?b=1', timeMs: 15.5, status: 200 });
    // A reply must name a request record of its batch: not itself, not a byte inside a record.
    const bad = Buffer.from(b);
    bad.writeUInt32LE(offs[0] + 1, offs[3] + 32);
    t.throws(() => readBatch(bad), /names no request record/);
    bad.writeUInt32LE(offs[3], offs[3] + 32);
    t.throws(() => readBatch(bad), /names no request record/);
    const odd = Buffer.from(b);
    odd[offs[1] + 30] = 2;
    t.throws(() => readBatch(odd), /answered is 2/, 'an answered mark is 0 or 1');
  },
);

t.test('a request like an earlier one of the batch but for ports and time is a short repeat naming it', async (t) => {
  const w = new RecordWriter();
  const p = policy('10.0.0.3', '10.0.0.2');
  const a = exchange({ status: 0, latencyNs: 0 });
  w.add('request', a, { srcPort: 40001, dstPort: 80, policy: p }, 1);
  let at = w.bytes;
  const b1 = exchange({ status: 0, latencyNs: 0 });
  w.add('request', b1, { srcPort: 40002, dstPort: 8080, policy: p }, 2);
  t.equal(w.bytes - at, 40, 'a repeat is 40 bytes');
  Object.assign(b1, { status: 204, latencyNs: 7_000 });
  w.add('response', b1, { srcPort: 40002, dstPort: 8080, policy: p }, 2.007);
  at = w.bytes;
  w.add('request', exchange({ path: '/other' }), { srcPort: 40003, dstPort: 80, policy: p }, 4);
  t.ok(w.bytes - at > 40, 'another path: a full record');
  at = w.bytes;
  const another = { ...decision };
  w.add('request', exchange({ verdict: { allowed: true, edits: [], info: another } }), { srcPort: 1, dstPort: 80, policy: p }, 5);
  t.ok(w.bytes - at > 40, 'another decision: a full record');
  at = w.bytes;
  w.add('request', exchange({ verdict: { allowed: true, edits: [], info: another } }), { srcPort: 2, dstPort: 80, policy: p }, 6);
  t.equal(w.bytes - at, 40, 'a repeat of that one');
  const b = w.take(0)!;
  const offs = readBatch(b).offsets;
  t.equal(offs.length, 6);
  const [full, repeat, reply] = offs.map((o) => decodeRecord(b, o));
  t.same(repeat, { ...full, timeMs: 2, src: { ...full.src, port: 40002 }, dst: { ...full.dst, port: 8080 } });
  t.match(reply, { kind: 'response', timeMs: 2.007, status: 204, latencyNs: 7_000, src: { port: 40002 }, dst: { port: 8080 } });
  t.equal(metricEndpoint(b, offs[1]), 9);
  const next = exchange();
  w.add('request', next, { srcPort: 9, dstPort: 80, policy: p }, 6);
  t.ok(w.bytes > 40 + 5, 'the next batch starts with a full record');
  // A repeat names a full request record, not another repeat.
  const bad = Buffer.from(b);
  bad.writeUInt32LE(offs[1], offs[5] + 32); // the last repeat, made a repeat of the first repeat
  t.throws(() => readBatch(bad), /names no request record/);
});

t.test('requests carry no status or latency; other methods, HTTP/1.0 and reasons survive', async (t) => {
  const w = new RecordWriter();
  const ctx: RecordContext = { srcPort: 1, dstPort: 8080, policy: policy('10.0.0.3', '10.0.0.2') };
  w.add(
    'request',
    exchange({ method: 'PROPFIND', protocol: 'HTTP/1.0', verdict: { allowed: false, edits: [] }, localReason: 'denied' }),
    ctx,
    5,
  );
  w.add(
    'response',
    exchange({ method: '', path: '', host: '', verdict: { allowed: false, edits: [] }, localReason: 'bad-request', status: 400 }),
    ctx,
    6,
  );
  const b = w.take(0)!;
  const [a, c] = readBatch(b).offsets.map((o) => decodeRecord(b, o));
  t.match(a, {
    kind: 'request',
    method: 'PROPFIND',
    protocol: 'HTTP/1.0',
    status: 0,
    latencyNs: 0,
    verdict: 'denied',
    reason: 'denied',
    sides: [],
  });
  t.match(c, { kind: 'response', method: '', path: '', status: 400, verdict: 'error', reason: 'bad-request' });
});

t.test('long paths are cut; batches grow past their buffer; take() starts over', async (t) => {
  const w = new RecordWriter(1024);
  const ctx: RecordContext = { srcPort: 1, dstPort: 80, policy: policy('10.0.0.3', '10.0.0.2') };
  const long = `/${'x'.repeat(20_000)}`;
  for (let i = 0; i < 50; i++) w.add('request', exchange({ path: i === 7 ? long : `/r${i}` }), ctx, i);
  t.equal(w.count, 50);
  const b = w.take(0)!;
  const recs = readBatch(b).offsets.map((o) => decodeRecord(b, o));
  t.equal(recs.length, 50);
  t.equal(recs[7].path, long.slice(0, 8192), 'cut at 8 KiB');
  t.same(
    recs.filter((_, i) => i !== 7).map((r) => r.path),
    Array.from({ length: 50 }, (_, i) => `/r${i}`).filter((_, i) => i !== 7),
  );
  t.equal(w.take(0), undefined, 'nothing left');
  t.equal(w.count, 0);
});

t.test('the record follows a policy change of its connection', async (t) => {
  const w = new RecordWriter();
  const ctx: RecordContext = { srcPort: 1, dstPort: 80, policy: policy('10.0.0.3', '10.0.0.2') };
  w.add('request', exchange(), ctx, 1);
  ctx.policy = { ...policy('10.0.0.3', '10.0.0.2'), revision: 2, src: { ip: '10.0.0.3', identity: 4242, endpoint: 4 } };
  w.add('request', exchange(), ctx, 2);
  const b = w.take(0)!;
  const [a, c] = readBatch(b).offsets.map((o) => decodeRecord(b, o));
  t.equal(a.src.identity, 2);
  t.match(c.src, { identity: 4242, endpoint: 4 });
});

t.test('cut or foreign batches are refused', async (t) => {
  const w = new RecordWriter();
  w.add('request', exchange(), { srcPort: 1, dstPort: 80, policy: policy('10.0.0.3', '10.0.0.2') }, 1);
  const b = w.take(0)!;
  t.throws(() => readBatch(b.subarray(0, b.length - 1)), /cut at byte 5/);
  t.throws(() => readBatch(Buffer.from('{"t":"x"}')), /not an L7 record batch/);
  const older = Buffer.from(b);
  older[0] = 1; // an older worker's batch (no answered records): read as ever
  t.match(decodeRecord(older, readBatch(older).offsets[0]), { kind: 'request', path: '/a?b=1' });
  older[0] = 3;
  t.throws(() => readBatch(older), /not an L7 record batch \(format 3\)/);
});

t.test('connections between the same two addresses share the policy, each record keeps its own ports', async (t) => {
  const w = new RecordWriter();
  const shared = policy('10.0.0.3', '10.0.0.2');
  w.add('request', exchange(), { srcPort: 40001, dstPort: 80, policy: shared }, 1);
  w.add('request', exchange(), { srcPort: 40002, dstPort: 8080, policy: shared }, 2);
  const b = w.take(0)!;
  const [first, second] = readBatch(b).offsets.map((off) => decodeRecord(b, off));
  t.same([first.src.port, first.dst.port, second.src.port, second.dst.port], [40001, 80, 40002, 8080]);
  t.same([first.src.ip, second.dst.ip], ['10.0.0.3', '10.0.0.2']);
});

t.test("the agent's index, kept from batch to batch: grows past its first size, then reads a small batch as it is", async (t) => {
  const ix = new BatchIndex();
  const w = new RecordWriter(1 << 20);
  const ctx: RecordContext = { srcPort: 40000, dstPort: 80, policy: policy('10.0.0.3', '10.0.0.2') };
  // 3,000 exchanges on one connection: a full request record, then repeats and replies (6,000 records).
  for (let k = 0; k < 3000; k++) {
    const x = exchange({ startMs: k });
    w.add('request', x, ctx, 1000 + k);
    w.add('response', x, ctx, 1001.5 + k); // 1.5 ms later (latencyNs)
  }
  const big = w.take(7)!;
  t.ok(big.length < 300 + 2999 * 40, 'a request record each, answered in place: 40 bytes an exchange');
  ix.read(big);
  t.equal(ix.count, 6000, 'two flows a record');
  t.equal(ix.lost, 7);
  t.same(Array.from(ix.offsets.subarray(0, ix.count)), readBatch(big).offsets, 'the same offsets as readBatch');
  t.same([ix.times[0], ix.times[1], ix.times[5998], ix.times[5999]], [1000, 1001.5, 3999, 4000.5]);
  t.match(decodeRecord(big, ix.offsets[5999]), { kind: 'response', timeMs: 4000.5, status: 200 });
  w.add('response', exchange(), ctx, 42);
  const small = w.take(0)!;
  ix.read(small);
  t.equal(ix.count, 1);
  t.equal(ix.times[0], 42);
  t.equal(ix.lost, 0);
  t.throws(() => ix.read(small.subarray(0, small.length - 1)), /cut at byte 5/);
  t.equal(ix.count, 0, 'a refused batch leaves no records to read');
});

t.test('take(lost, reuse): the next batch is written into the same buffer (the caller copied the first)', async (t) => {
  const w = new RecordWriter();
  const ctx: RecordContext = { srcPort: 1, dstPort: 80, policy: policy('10.0.0.3', '10.0.0.2') };
  w.add('request', exchange({ path: '/first' }), ctx, 1);
  const first = w.take(0, true)!;
  const copy = Buffer.from(first);
  w.add('request', exchange({ path: '/second' }), ctx, 2);
  const second = w.take(0)!;
  t.equal(second.buffer, first.buffer, 'one buffer');
  t.match(decodeRecord(copy, readBatch(copy).offsets[0]), { path: '/first' }, 'the copy is the first batch');
  t.match(decodeRecord(second, readBatch(second).offsets[0]), { path: '/second', timeMs: 2 }, 'a full record: a new batch');
  w.add('request', exchange({ path: '/third' }), ctx, 3);
  t.not(w.take(0)!.buffer, second.buffer, 'without reuse the batch keeps its buffer');
});
