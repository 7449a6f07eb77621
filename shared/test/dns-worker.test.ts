// A DNS proxy worker thread's caches (dns/worker.ts), driven without threads: a verdict comes from the
// agent's thread once per sender, server and name and is not used after the policy maps changed; an
// answer the worker has not seen in the datapath is released only after the agent says it is there
// (and not when the agent fails); one it has seen goes at once until the time the agent keeps it, and
// the agent is told afterwards (its entries refreshed).
import t from 'tap';
import type { Answer, Query } from '../src/dns/message.ts';
import { readBatch, RecordBatcher } from '../src/dns/record-batch.ts';
import { dnsRecord, type DnsDecision, type DnsRecord, type Peer } from '../src/dns/types.ts';
import { DnsWorker } from '../src/dns/worker.ts';
import type { FromWorker, ToWorker } from '../src/dns/workers.ts';

interface Internals {
  decide(src: Peer, dst: Peer, q: Query): DnsDecision | Promise<DnsDecision>;
  learn(endpoint: number, a: Answer): Promise<void> | undefined;
  flush(): void;
}

function setup() {
  const generation = new SharedArrayBuffer(4);
  const sent: FromWorker[] = [];
  const w = new DnsWorker({ dnsProxyWorker: true, port: 0, mapFd: -1, timeoutMs: 1000, generation }, (m) => sent.push(m));
  const gen = new Int32Array(generation);
  const asked = (t: FromWorker['t']) => sent.filter((m) => m.t === t) as (FromWorker & { id: number })[];
  const reply = (m: ToWorker) => w.onMessage(m);
  return { w, x: w as unknown as Internals, sent, gen, asked, reply };
}

const src = { ip: '10.200.0.5', port: 40000 };
const dst = { ip: '198.18.0.53', port: 53 };
const q = (name: string): Query => ({ id: 1, name, types: ['A'], rd: true });
const allow: DnsDecision = { allowed: true, endpoint: 7, identity: 100, peerIdentity: 200, ruleId: 3 };
const answer = (ips: string[], ttl = 30): Answer => ({
  rcode: 0,
  names: ['api.test.'],
  cnames: [],
  ips: ips.map((ip) => ({ ip, ttl })),
  qtypes: ['A'],
  rrtypes: ['A'],
  truncated: false,
});

t.test('verdicts: asked once, kept until the maps change', async (t) => {
  const { w, x, asked, reply, gen } = setup();
  t.teardown(() => w.close());
  const first = x.decide(src, dst, q('api.test.'));
  const second = x.decide(src, dst, q('api.test.'));
  t.ok(first instanceof Promise, 'a verdict not seen is asked for');
  t.equal(asked('decide').length, 1, 'queries for the same name while asking share one question');
  reply({ t: 'decided', id: asked('decide')[0].id, decision: allow });
  t.same(await first, allow);
  t.same(await second, allow);
  t.same(x.decide(src, dst, q('api.test.')), allow, 'then answered from the cache, no question');
  t.equal(asked('decide').length, 1);
  Atomics.store(gen, 0, 1); // the policy changed
  const after = x.decide(src, dst, q('api.test.'));
  t.ok(after instanceof Promise, 'after a policy change the cached verdict is not used');
  t.equal(asked('decide').length, 2);
  reply({ t: 'decided', id: asked('decide')[1].id, decision: { ...allow, allowed: false } });
  t.equal((await after).allowed, false, "the new policy's verdict");
});

t.test('a verdict given under an older policy is used once, not cached', async (t) => {
  const { w, x, asked, reply, gen } = setup();
  t.teardown(() => w.close());
  const p = x.decide(src, dst, q('late.test.'));
  Atomics.store(gen, 0, 5); // the policy changed while the agent was answering
  reply({ t: 'decided', id: asked('decide')[0].id, decision: allow });
  await p;
  t.ok(x.decide(src, dst, q('late.test.')) instanceof Promise, 'asked again');
});

t.test('answers: released after the agent has them in the datapath, at once while it keeps them', async (t) => {
  const { w, x, asked, reply, sent } = setup();
  t.teardown(() => w.close());
  let released = false;
  const learning = x.learn(7, answer(['198.18.0.10']));
  t.ok(learning, 'an answer not seen waits for the agent');
  void learning?.then(() => {
    released = true;
  });
  await new Promise((r) => setImmediate(r));
  t.notOk(released, 'not released before the agent answers');
  t.equal(asked('learn').length, 1);
  reply({ t: 'learned', id: asked('learn')[0].id, ok: true, knownUntil: Date.now() + 60_000 });
  await learning;
  t.ok(released);
  t.equal(x.learn(7, answer(['198.18.0.10'])), undefined, 'the same answer again: released at once');
  t.equal(asked('learn').length, 1, 'without asking');
  x.flush();
  const batch = sent.find((m) => m.t === 'batch' && m.refresh.length);
  t.same(
    batch && batch.t === 'batch' ? batch.refresh.map(([ep, a]) => [ep, a.ips[0].ip]) : [],
    [[7, '198.18.0.10']],
    'the agent is told afterwards',
  );
  const quiet = (p: Promise<void> | undefined) => p?.catch(() => undefined); // rejected by close()
  t.ok(quiet(x.learn(8, answer(['198.18.0.10']))), 'another endpoint: asked');
  t.ok(quiet(x.learn(7, answer(['198.18.0.11']))), 'another address: asked');
});

t.test('answers: past the time the agent keeps them, asked again; a failure is not released', async (t) => {
  const { w, x, asked, reply } = setup();
  t.teardown(() => w.close());
  const first = x.learn(7, answer(['198.18.0.20']));
  reply({ t: 'learned', id: asked('learn')[0].id, ok: true, knownUntil: Date.now() - 1 });
  await first;
  const again = x.learn(7, answer(['198.18.0.20']));
  t.ok(again, 'expired: asked again');
  reply({ t: 'learned', id: asked('learn')[1].id, ok: false, knownUntil: 0, err: 'map full' });
  await t.rejects(again as Promise<void>, /map full/, 'the agent could not write it: the relay answers SERVFAIL');
  t.ok(
    x.learn(7, answer(['198.18.0.20']))?.catch(() => undefined),
    'and it is not taken as known',
  );
});

t.test('records cross to the agent flat and come back the same', async (t) => {
  const decision = allow;
  const a = answer(['198.18.0.10']);
  // As MessageReader gives them: queries for the same bytes share their type list.
  const types = ['A'];
  const q = (name: string): Query => ({ id: 9, name, types, rd: true });
  const records: DnsRecord[] = [
    dnsRecord('query', 'udp', src, dst, q('api.test.'), decision, 'forwarded'),
    dnsRecord('response', 'udp', src, dst, q('api.test.'), decision, 'forwarded', undefined, a, 1500, 40),
    dnsRecord('query', 'udp', src, dst, q('evil.test.'), { ...decision, allowed: false }, 'refused', 'denied'),
    dnsRecord('response', 'udp', src, dst, q('api.test.'), decision, 'error', 'upstream timeout'),
  ];
  const b = new RecordBatcher();
  for (const r of records) b.add(r);
  t.equal(b.size, 4);
  const batch = structuredClone(b.take());
  t.equal(b.size, 0, 'the batcher starts again empty');
  t.equal(batch.shared.length, 4, 'shared objects once each: two verdicts, the answer, the type list');
  const back: DnsRecord[] = [];
  readBatch(batch, (r) => back.push(r));
  t.same(back, records);
});
