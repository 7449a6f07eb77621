// DNS messages as the proxy reads and makes them (dns/message.ts), and DNS records as Hubble flows
// (dns/flows.ts): the query's name and types, refusals that echo the question and keep the ID, what
// an answer teaches through a CNAME chain (the smallest TTL along it), and the flow fields.
import t from 'tap';
import * as packet from 'dns-packet';
import { answersQuery, failure, MessageReader, RCODE, readAnswer, readQuery, refusal } from '../src/dns/message.ts';
import { dnsFlow, dnsSummary } from '../src/dns/flows.ts';
import type { DnsRecord } from '../src/dns/types.ts';
import type { FlowContext } from '../src/flows/enrich.ts';

const query = packet.encode({
  type: 'query',
  id: 4242,
  flags: packet.RECURSION_DESIRED,
  questions: [{ type: 'A', name: 'Alias.Test.Internal' }],
});

/** A query for the wire labels given (not a dotted name: a label may hold a dot). */
function rawQuery(labels: (string | Buffer)[], extra: Buffer = Buffer.alloc(0), qdcount = 1): Buffer {
  const name = Buffer.concat([
    ...labels.map((l) => Buffer.concat([Buffer.from([Buffer.from(l).length]), Buffer.from(l)])),
    Buffer.from([0]),
  ]);
  const header = Buffer.from([0x12, 0x34, 1, 0, 0, qdcount, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([header, name, Buffer.from([0, 1, 0, 1]), extra]);
}

t.test('only one question, of plain labels, is read: anything else is FORMERR', async (t) => {
  t.match(readQuery(rawQuery(['api', 'allowed', 'example'])), { name: 'api.allowed.example.' }, 'three labels');
  t.match(readQuery(rawQuery(['_http', '_tcp', 'svc-1', 'example'])), { name: '_http._tcp.svc-1.example.' });
  t.equal(readQuery(rawQuery(['api.allowed', 'example'])), undefined, 'a dot inside a label: not api.allowed.example');
  t.equal(readQuery(rawQuery(['api', 'allowed', 'example '])), undefined, 'a space (names are trimmed as text)');
  t.equal(readQuery(rawQuery(['api\u0000x', 'example'])), undefined, 'a control byte');
  const pointer = Buffer.from([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1]);
  t.equal(readQuery(pointer), undefined, 'a compression pointer as the name (to the header)');
  const second = Buffer.concat([
    Buffer.from([6]),
    Buffer.from('denied'),
    Buffer.from([4]),
    Buffer.from('test'),
    Buffer.from([0, 0, 1, 0, 1]),
  ]);
  t.equal(readQuery(rawQuery(['api', 'test'], second, 2)), undefined, 'two questions: the second would go unjudged');
  t.equal(readQuery(rawQuery(['api', 'test'], Buffer.alloc(0), 0)), undefined, 'no question');
});

t.test('queries and refusals', async (t) => {
  t.same(readQuery(query), { id: 4242, name: 'alias.test.internal.', types: ['A'], rd: true });
  t.equal(readQuery(Buffer.from('garbage')), undefined, 'too short');
  const resp = packet.encode({ type: 'response', id: 1, questions: [{ type: 'A', name: 'x' }] });
  t.equal(readQuery(resp), undefined, 'a response sent as a query is no query');
  const r = packet.decode(refusal(query, RCODE.REFUSED));
  t.equal(r.id, 4242);
  t.equal(r.type, 'response');
  t.equal((r.flags ?? 0) & 0xf, RCODE.REFUSED);
  t.same(r.questions, [{ name: 'Alias.Test.Internal', type: 'A', class: 'IN' }], 'the question is echoed');
  t.ok(r.flag_rd && r.flag_ra);
  t.equal(
    (packet.decode(refusal(Buffer.from([1, 2, 3]), RCODE.FORMERR)).flags ?? 0) & 0xf,
    RCODE.FORMERR,
    'even for bytes it cannot read',
  );
  // A SERVFAIL for a query whose bytes are gone (timeout, upstream error) still carries its question:
  // resolvers reject an answer without it (c-ares: EBADRESP) instead of taking the rcode.
  const f = packet.decode(failure({ id: 77, name: 'api.test.', types: ['A', 'AAAA'], rd: true }, RCODE.SERVFAIL));
  t.equal(f.id, 77);
  t.equal((f.flags ?? 0) & 0xf, RCODE.SERVFAIL);
  t.same(
    f.questions?.map((q) => [q.name, q.type]),
    [
      ['api.test', 'A'],
      ['api.test', 'AAAA'],
    ],
    'SERVFAIL with the question asked',
  );
});

t.test('answers: the CNAME chain, addresses and TTLs', async (t) => {
  const buf = packet.encode({
    type: 'response',
    id: 9,
    questions: [{ type: 'A', name: 'alias.test.internal' }],
    answers: [
      { type: 'CNAME', name: 'alias.test.internal', ttl: 20, data: 'api.test.internal' },
      { type: 'A', name: 'api.test.internal', ttl: 60, data: '198.18.0.10' },
      { type: 'A', name: 'api.test.internal', ttl: 5, data: '198.18.0.11' },
      { type: 'A', name: 'unrelated.example', ttl: 60, data: '198.18.0.99' },
    ],
  });
  const a = readAnswer(buf)!;
  t.same(a.names, ['alias.test.internal.', 'api.test.internal.']);
  t.same(a.cnames, ['api.test.internal.']);
  t.same(
    a.ips,
    [
      { ip: '198.18.0.10', ttl: 20 },
      { ip: '198.18.0.11', ttl: 5 },
    ],
    'only addresses of the chain; the smallest TTL along it',
  );
  t.equal(a.rcode, 0);
  t.same(a.rrtypes, ['CNAME', 'A']);
  t.equal(readAnswer(Buffer.from('x')), undefined);
  const q = readQuery(query)!;
  const to = (name: string, type: 'A' | 'AAAA' = 'A') =>
    readAnswer(packet.encode({ type: 'response', id: 4242, questions: [{ type, name }] }))!;
  t.ok(answersQuery(to('ALIAS.test.internal.'), q), 'the same question (case and the final dot aside)');
  t.notOk(answersQuery(to('www.pattern.test'), q), 'another name: not an answer to this query');
  t.notOk(answersQuery(to('alias.test.internal', 'AAAA'), q), 'another type: neither');
  const nx = readAnswer(
    packet.encode({ type: 'response', id: 1, flags: RCODE.NXDOMAIN, questions: [{ type: 'A', name: 'no.where' }] }),
  )!;
  t.equal(nx.rcode, RCODE.NXDOMAIN);
});

t.test('records as Hubble L7 DNS flows', async (t) => {
  const ctx = {
    nodeName: 'n1',
    wallOffset: { seconds: 0, nanos: 0 },
    endpointById: (id: number) =>
      id === 7
        ? { id: 7, identity: 300, labels: { app: 'client' }, containerId: 'c7', podName: 'client', namespace: 'default' }
        : undefined,
    endpointByAddress: () => undefined,
    labelsOfIdentity: () => ({ 'reserved:world': '' }),
    describeRule: () => ({ policy: 'client-fqdn', index: 0, direction: 'egress', action: 'allow', path: 'spec.egress[0]' }),
  } as unknown as FlowContext;
  const base = {
    timeMs: 1_700_000_000_123,
    proto: 'udp',
    src: { ip: '10.0.0.7', port: 40000 },
    dst: { ip: '198.18.0.53', port: 53 },
    query: readQuery(query)!,
  } as const;
  const refused: DnsRecord = {
    ...base,
    kind: 'query',
    decision: { allowed: false, endpoint: 7, identity: 300, peerIdentity: 2, ruleId: 123 },
    verdict: 'refused',
    reason: 'denied',
  };
  const f = dnsFlow(refused, ctx);
  t.equal(f.verdict, 'DROPPED');
  t.equal(f.Type, 'L7');
  t.match(f.l7, { type: 'REQUEST', dns: { query: 'alias.test.internal.', qtypes: ['A'], observationSource: 'proxy' } });
  t.match(f.egressDeniedBy, [{ name: 'client-fqdn' }]);
  t.same(f.destinationNames, ['alias.test.internal']);
  t.match(f.Summary, /^DNS Query alias\.test\.internal\. A \(refused\); refused by the DNS rules of client-fqdn$/);
  const answer: DnsRecord = {
    ...base,
    kind: 'response',
    decision: {
      allowed: true,
      endpoint: 7,
      identity: 300,
      peerIdentity: 2,
      ruleId: 123,
      rulePath: 'spec.egress[0].toPorts[0].rules.dns[0]',
    },
    verdict: 'forwarded',
    answer: readAnswer(
      packet.encode({
        type: 'response',
        id: 9,
        questions: [{ type: 'A', name: 'alias.test.internal' }],
        answers: [
          { type: 'CNAME', name: 'alias.test.internal', ttl: 20, data: 'api.test.internal' },
          { type: 'A', name: 'api.test.internal', ttl: 60, data: '198.18.0.10' },
        ],
      }),
    )!,
    latencyNs: 1_500_000,
  };
  const g = dnsFlow(answer, ctx);
  t.match(g, {
    verdict: 'FORWARDED',
    isReply: { value: true },
    IP: { source: '198.18.0.53', destination: '10.0.0.7' },
    l4: { UDP: { sourcePort: 53, destinationPort: 40000 } },
  });
  t.match(g.l7, {
    type: 'RESPONSE',
    latencyNs: 1_500_000,
    dns: { ips: ['198.18.0.10'], ttl: 20, cnames: ['api.test.internal.'], rcode: 0 },
  });
  t.match(g.egressAllowedBy, [{ name: 'client-fqdn', membraneRulePath: 'spec.egress[0].toPorts[0].rules.dns[0]' }]);
  t.equal(dnsSummary(answer), 'DNS Answer "198.18.0.10" TTL: 20 (Proxy alias.test.internal. A)');
});

t.test('MessageReader: decoded once per content, every query keeps its own ID', async (t) => {
  const reader = new MessageReader(2);
  const ask = (id: number, name: string) =>
    packet.encode({ type: 'query', id, flags: packet.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
  t.same(reader.query(ask(1, 'Api.Test')), { id: 1, name: 'api.test.', types: ['A'], rd: true });
  t.same(
    reader.query(ask(2, 'api.test')),
    { id: 2, name: 'api.test.', types: ['A'], rd: true },
    'the same question under another ID',
  );
  t.same(reader.query(ask(3, 'other.test')), readQuery(ask(3, 'other.test')), 'another question');
  t.equal(reader.query(Buffer.concat([Buffer.from([0, 9]), Buffer.from('not a query at all')])), undefined, 'unreadable');
  const ans = (id: number, ip: string) =>
    packet.encode({
      type: 'response',
      id,
      questions: [{ type: 'A', name: 'api.test' }],
      answers: [{ type: 'A', name: 'api.test', ttl: 30, data: ip }],
    });
  t.same(reader.answer(ans(7, '198.18.0.1')), readAnswer(ans(7, '198.18.0.1')));
  t.same(reader.answer(ans(8, '198.18.0.1'))?.ips, [{ ip: '198.18.0.1', ttl: 30 }]);
  t.same(reader.answer(ans(9, '198.18.0.2'))?.ips, [{ ip: '198.18.0.2', ttl: 30 }], 'another address: read anew');
});
