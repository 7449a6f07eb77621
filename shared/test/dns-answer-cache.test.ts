// What the datapath's DNS answer cache may store (dns/answer-cache.ts): only a plain query and a
// NOERROR answer it can serve byte for byte, with the offsets of every TTL it must count down, and the
// map layouts of bpf/lib/dns_cache.h.
import t from 'tap';
import * as packet from 'dns-packet';
import { cacheableAnswer, encodeKey, encodeValue, KEY_SIZE, VALUE_SIZE } from '../src/dns/answer-cache.ts';

const q = (extra: Partial<packet.Packet> = {}) =>
  packet.encode({
    type: 'query',
    id: 7,
    flags: packet.RECURSION_DESIRED,
    questions: [{ type: 'A', name: 'api.test.internal' }],
    ...extra,
  });
const a = (extra: Partial<packet.Packet> = {}) =>
  packet.encode({
    type: 'response',
    id: 9,
    flags: packet.RECURSION_DESIRED | packet.RECURSION_AVAILABLE,
    questions: [{ type: 'A', name: 'API.test.internal' }],
    answers: [
      { type: 'CNAME', name: 'api.test.internal', ttl: 60, data: 'real.test.internal' },
      { type: 'A', name: 'real.test.internal', ttl: 30, data: '198.18.0.10' },
    ],
    ...extra,
  });

t.test('a plain query and its answer: the name as sent, every TTL offset, the smallest TTL', async (t) => {
  const query = q();
  const answer = a();
  const c = cacheableAnswer(query, answer);
  t.ok(c, 'cacheable');
  if (!c) return;
  t.same(c.rest, query.subarray(12), 'the bytes after the header as the client sent them');
  t.same(c.flags, query.subarray(2, 4), 'and its flags');
  t.same(c.ttls, [60, 30], 'both records');
  t.same(
    c.ttlOffsets.map((o) => answer.readUInt32BE(o)),
    [60, 30],
    'the offsets point at the TTL fields',
  );
  t.equal(c.minTtl, 30, 'the entry lives as long as the shortest record');
  const key = encodeKey(12, Buffer.from([198, 18, 0, 53]), 53, c);
  t.equal(key.length, KEY_SIZE);
  t.equal(key.readUInt32LE(0), 12, 'endpoint id');
  t.equal(key[5], query.length - 12, 'query length after the header');
  t.same(key.subarray(28, 28 + query.length - 12), query.subarray(12), 'the question as sent');
  t.equal(key.readUInt16BE(6), 53, 'server port in network order');
  const v = encodeValue(1_000_000_000n, 5, 1, answer, c);
  t.equal(v.length, VALUE_SIZE);
  t.equal(v.readBigUInt64LE(8), 31_000_000_000n, 'expires after the smallest TTL');
  t.equal(
    v.subarray(124 + 12, 124 + 12 + c.nameLen).toString('latin1'),
    query.subarray(12, 12 + c.nameLen).toString('latin1'),
    'the question as the client asked it',
  );
});

t.test("a query with EDNS: its OPT record is part of the key, the answer's OPT keeps its fields", async (t) => {
  const opt = [{ type: 'OPT', name: '.', udpPayloadSize: 1232 }] as never;
  const query = q({ additionals: opt });
  const answer = a({ additionals: opt });
  const c = cacheableAnswer(query, answer);
  t.ok(c, 'cacheable');
  t.same(c?.rest, query.subarray(12), 'question and OPT record');
  t.same(c?.ttls, [60, 30], 'the OPT record has no TTL to count down');
});

t.test('what the datapath could not answer exactly is not stored', async (t) => {
  const opt = [{ type: 'OPT', name: '.', udpPayloadSize: 1232 }] as never;
  const two = [
    { type: 'OPT', name: '.', udpPayloadSize: 1232 },
    { type: 'A', name: 'x.test', ttl: 1, data: '1.2.3.4' },
  ] as never;
  t.notOk(cacheableAnswer(q({ additionals: two }), a()), 'a query with more than an OPT record');
  t.notOk(
    cacheableAnswer(q({ answers: [{ type: 'A', name: 'x.test', ttl: 1, data: '1.2.3.4' }] }), a()),
    'a query with an answer',
  );
  t.notOk(
    cacheableAnswer(
      q({ additionals: opt }),
      a({ additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232, extendedRcode: 1 }] as never }),
    ),
    'an answer with an extended rcode',
  );
  t.notOk(cacheableAnswer(q(), a({ flags: packet.TRUNCATED_RESPONSE })), 'a truncated answer');
  t.notOk(cacheableAnswer(q(), a({ flags: 3 })), 'NXDOMAIN');
  t.notOk(cacheableAnswer(q(), a({ answers: [] })), 'no records');
  t.notOk(cacheableAnswer(q(), a().subarray(0, a().length - 1)), 'an answer cut short');
  t.notOk(cacheableAnswer(q(), Buffer.concat([a(), Buffer.from([0])])), 'trailing bytes');
  t.notOk(cacheableAnswer(q(), a({ questions: [{ type: 'A', name: 'other.test.internal' }] })), 'an answer to another question');
  t.notOk(cacheableAnswer(q(), a({ questions: [{ type: 'AAAA', name: 'api.test.internal' }] })), 'another type');
  t.notOk(cacheableAnswer(q(), a({ answers: [{ type: 'A', name: 'api.test.internal', ttl: 0, data: '198.18.0.10' }] })), 'TTL 0');
  t.notOk(cacheableAnswer(a(), a()), 'a response sent as a query');
  const long = q({ questions: [{ type: 'A', name: `${'x'.repeat(60)}.${'y'.repeat(60)}.test.internal` }] });
  t.notOk(cacheableAnswer(long, a()), 'a name over 128 bytes');
});
