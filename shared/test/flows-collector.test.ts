// The collector's record framing: the datapath writes both observation points of a pod-to-pod packet
// as one ring record of two trace_events (bpf/lib/events.h emit_event_pair); each must become its own
// flow, exactly as two one-event records would.
import t from 'tap';
import { FlowCollector } from '../src/flows/collector.ts';
import { Direction, encodeTraceEvent, EventType } from '../src/flows/event.ts';
import type { FlowContext } from '../src/flows/flow.ts';
import { EnrichMemo, emptyRefs, enrichRaw } from '../src/flows/enrich.ts';
import { FlowRing } from '../src/flows/ring.ts';
import { InjectedEventSource } from '../src/flows/source.ts';

const views = {
  3: { id: 3, identity: 1001, labels: { app: 'client' }, containerId: 'c3', hostIfName: 'mbr3' },
  4: { id: 4, identity: 1002, labels: { app: 'db' }, containerId: 'c4', hostIfName: 'mbr4' },
};
const ctx: FlowContext = {
  nodeName: 'n',
  wallOffset: { seconds: 0, nanos: 0 },
  endpointById: (id) => views[id as 3 | 4],
  endpointByAddress: (buf, off) => (buf[off + 3] === 3 ? views[3] : buf[off + 3] === 4 ? views[4] : undefined),
  labelsOfIdentity: () => undefined,
  describeRule: () => undefined,
};

function collect(records: Buffer[]) {
  const ring = new FlowRing(16, 'n');
  const source = new InjectedEventSource();
  const collector = new FlowCollector({ ring, source, context: ctx });
  collector.start();
  for (const r of records) source.push(r);
  collector.close();
  return { ring, collector };
}

const common = {
  tsNs: 1e9,
  saddr: '10.0.0.3',
  daddr: '10.0.0.4',
  sport: 40000,
  dport: 80,
  proto: 6,
  srcIdentity: 1001,
  dstIdentity: 1002,
};
const egress = encodeTraceEvent({
  ...common,
  type: EventType.FLOW_NEW,
  endpointId: 3,
  ifindex: 30,
  direction: Direction.EGRESS,
  ruleId: 0,
});
const ingress = encodeTraceEvent({
  ...common,
  type: EventType.FLOW_NEW,
  endpointId: 4,
  ifindex: 40,
  direction: Direction.INGRESS,
  ruleId: 0,
});

t.test('a two-event record gives the same two flows as two one-event records', async (t) => {
  const pair = collect([Buffer.concat([egress, ingress])]);
  const single = collect([egress, ingress]);
  t.equal(pair.ring.seen, 2);
  t.equal(pair.collector.malformed, 0);
  const strip = (fs: { uuid?: string }[]) => fs.map(({ uuid: _u, ...rest }) => rest);
  const a = await pair.ring.select();
  const b = await single.ring.select();
  t.same(strip(a), strip(b));
  t.same(
    a.map((f) => [f.trafficDirection, f.interface?.name]),
    [
      ['EGRESS', 'mbr3'],
      ['INGRESS', 'mbr4'],
    ],
  );
});

t.test('a record that is not whole trace_events is malformed, not half read', async (t) => {
  const { ring, collector } = collect([Buffer.concat([egress, Buffer.alloc(8)]), egress.subarray(0, 90)]);
  t.equal(ring.seen, 0);
  t.equal(collector.malformed, 2);
});

// The pair's second event reuses the first's endpoint lookups only when both addresses were local
// endpoints and are the same (enrich.ts); otherwise it must come out as if it were a record of its own.
t.test('a pair with an address that is no local endpoint, or with other addresses, is looked up again', async (t) => {
  const remote = { ...common, saddr: '10.0.0.9' };
  const cases = [
    [
      encodeTraceEvent({ ...remote, type: EventType.FLOW_NEW, endpointId: 3, direction: Direction.EGRESS }),
      encodeTraceEvent({ ...remote, type: EventType.FLOW_NEW, endpointId: 4, direction: Direction.INGRESS }),
    ],
    [egress, encodeTraceEvent({ ...common, saddr: '10.0.0.4', daddr: '10.0.0.3', type: EventType.FLOW_NEW, endpointId: 4 })],
  ];
  const strip = (fs: { uuid?: string }[]) => fs.map(({ uuid: _u, ...rest }) => rest);
  for (const [a, b] of cases) {
    const pair = await collect([Buffer.concat([a, b])]).ring.select();
    const single = await collect([a, b]).ring.select();
    t.same(strip(pair), strip(single));
  }
  const [e, i] = await collect([Buffer.concat(cases[0])]).ring.select();
  t.equal(e.source?.ID, 3, 'the sender observes its own packet: its endpoint is the source');
  t.equal(i.source?.ID, undefined, 'at the receiver the unknown source stays unknown');
});

t.test(
  'with a versioned endpoint table, a relabeled endpoint and a peer identity learnt late show in the next flows',
  async (t) => {
    const local: Record<number, (typeof views)[3]> = { 4: { ...views[4] } };
    const known = new Map<number, Record<string, string>>();
    const versioned: FlowContext = {
      ...ctx,
      version: 0,
      endpointById: (id) => local[id],
      endpointByAddress: (buf, off) => (buf[off + 3] === 4 ? local[4] : undefined),
      labelsOfIdentity: (id) => known.get(id),
      peerCache: new Map(),
    };
    const ring = new FlowRing(16, 'n');
    const source = new InjectedEventSource();
    const collector = new FlowCollector({ ring, source, context: versioned });
    collector.start();
    const fromPeer = encodeTraceEvent({
      ...common,
      saddr: '10.0.9.9',
      srcIdentity: 2002,
      endpointId: 4,
      direction: Direction.INGRESS,
    });
    const toPeer = encodeTraceEvent({
      ...common,
      daddr: '10.0.9.9',
      dstIdentity: 2002,
      endpointId: 4,
      direction: Direction.EGRESS,
    });
    source.push(fromPeer); // 2002 not known yet
    known.set(2002, { app: 'far' });
    source.push(fromPeer);
    source.push(toPeer);
    source.push(fromPeer);
    local[4] = { ...views[4], labels: { app: 'db2' } };
    versioned.version = 1;
    source.push(fromPeer);
    source.push(toPeer);
    collector.close();
    const flows = await ring.select();
    t.same(
      flows.map((f) => [f.source?.labels, f.destination?.labels]),
      [
        [undefined, ['app=db']],
        [['app=far'], ['app=db']],
        [['app=db'], ['app=far']],
        [['app=far'], ['app=db']],
        [['app=far'], ['app=db2']],
        [['app=db2'], ['app=far']],
      ],
    );
  },
);

t.test('the memo recalls an event at any alignment, and only the same key', async (t) => {
  const versioned: FlowContext = { ...ctx, version: 0 };
  const memo = new EnrichMemo();
  const e = { ...common, endpointId: 3, srcIdentity: 1001, dstIdentity: 1002, direction: Direction.EGRESS };
  const found = enrichRaw(encodeTraceEvent(e), 0, versioned, emptyRefs(), -1, memo);
  for (const at of [0, 1, 2, 4]) {
    const place = (ev: Buffer) => {
      const b = Buffer.alloc(at + ev.length);
      ev.copy(b, at);
      return b;
    };
    const out = emptyRefs();
    t.ok(memo.recall(place(encodeTraceEvent({ ...e, sport: 1 })), at, versioned, out), `at ${at}: ports are no part of the key`);
    t.same(out, found);
    t.notOk(
      memo.recall(place(encodeTraceEvent({ ...e, daddr: '10.0.0.5' })), at, versioned, emptyRefs()),
      `at ${at}: another address`,
    );
    t.notOk(memo.recall(place(encodeTraceEvent({ ...e, ruleId: 7 })), at, versioned, emptyRefs()), `at ${at}: another rule`);
  }
});
