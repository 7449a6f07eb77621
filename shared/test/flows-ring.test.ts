import t from 'tap';
import { encodeTraceEvent, EventType, type TraceEvent } from '../src/flows/event.ts';
import { emptyRefs } from '../src/flows/enrich.ts';
import { FlowRing, MAX_APPEND_BYTES } from '../src/flows/ring.ts';

const OFFSET = { seconds: 1_000_000, nanos: 0 }; // wall = monotonic + 1e6 s
// Event i happens at wall second 1_000_000 + i.
const push = (r: FlowRing, i: number, e: Partial<TraceEvent> = {}) =>
  r.push(
    encodeTraceEvent({
      tsNs: i * 1e9,
      type: i % 2 ? EventType.DROP : EventType.FLOW_NEW,
      verdict: i % 2,
      saddr: `10.0.0.${i % 250}`,
      daddr: '10.0.1.1',
      ...e,
    }),
    0,
    emptyRefs(),
    OFFSET,
  );

t.test('keeps the newest N, counts all seen, builds flows on demand', async (t) => {
  const r = new FlowRing(5, 'node-r');
  for (let i = 1; i <= 12; i++) push(r, i);
  t.equal(r.size, 5);
  t.equal(r.seen, 12);
  t.same(
    (await r.select()).map((f) => f.IP!.source),
    ['10.0.0.8', '10.0.0.9', '10.0.0.10', '10.0.0.11', '10.0.0.12'],
  );
  t.same(
    (await r.select({ number: 2 })).map((f) => f.time.seconds),
    [1_000_011, 1_000_012],
    'last N, oldest first',
  );
  t.same(
    (await r.select({ number: 2, first: true })).map((f) => f.time.seconds),
    [1_000_008, 1_000_009],
  );
  t.same(
    (await r.select({ match: (f) => f.verdict === 'DROPPED' })).map((f) => f.time.seconds),
    [1_000_009, 1_000_011],
  );
  t.same(
    (await r.select({ sinceMs: 1_000_010_000, untilMs: 1_000_011_000 })).map((f) => f.time.seconds),
    [1_000_010, 1_000_011],
  );
  t.equal((await r.select())[0].nodeName, 'node-r');
  t.throws(() => new FlowRing(0, 'n'));
});

t.test('the caller may reuse its buffer and refs after push', async (t) => {
  const r = new FlowRing(3, 'n');
  const buf = encodeTraceEvent({ tsNs: 1, saddr: '10.9.9.1', daddr: '10.9.9.2' });
  const refs = emptyRefs();
  refs.ifName = 'mbr1';
  r.push(buf, 0, refs, OFFSET);
  buf.fill(0);
  refs.ifName = 'changed';
  t.equal((await r.select())[0].IP!.source, '10.9.9.1');
  t.same((await r.select())[0].interface, { index: 0, name: 'mbr1' });
});

t.test('a large ring is searched a chunk per event-loop turn; flows overwritten meanwhile are skipped', async (t) => {
  const r = new FlowRing(100, 'n');
  for (let i = 1; i <= 100; i++) push(r, i);
  let turns = 0;
  const timer = setInterval(() => {
    turns++;
    for (let k = 0; k < 30; k++) push(r, 1000 + k);
  }, 0);
  const newest = await r.select({ first: false }, 10);
  const oldest = await r.select({ first: true }, 10);
  clearInterval(timer);
  t.ok(turns > 0, 'the event loop ran during the search');
  t.ok(newest.length < 100 && newest.length > 0, `kept what was still held (${newest.length})`);
  t.same(
    newest.map((f) => f.time.seconds),
    [...newest.map((f) => f.time.seconds)].sort((a, b) => a - b),
    'oldest first',
  );
  t.ok(
    newest.every((f) => f.time.seconds <= 1_000_100),
    'nothing pushed after the call',
  );
  t.ok(
    oldest.every((f) => f.time.seconds >= 1_000_000),
    'first: skipped the overwritten',
  );
});

t.test('subscribers see every push; rate counts the last minute', async (t) => {
  let now = 50_000;
  const r = new FlowRing(3, 'n', () => now);
  const got: number[] = [];
  const off = r.subscribe((f) => got.push(f.time.seconds));
  push(r, 1);
  push(r, 2);
  t.equal(r.followers, 1);
  off();
  push(r, 3);
  t.same(got, [1_000_001, 1_000_002]);
  t.equal(r.followers, 0);
  now += 1000;
  r.tick();
  for (let i = 0; i < 6; i++) push(r, i);
  t.equal(r.rate(), 9 / 2, '9 flows over 2 seconds');
  now += 120_000;
  t.equal(r.rate(), 0);
});

t.test('copies a record from any place in a shared buffer, aligned or not', async (t) => {
  // The reader hands records at 8-byte-aligned offsets of one mapped buffer (copied word by word);
  // others may hand any view (copied bytewise).
  const events = [3, 4, 5].map((i) =>
    encodeTraceEvent({ tsNs: i * 1e9, saddr: `10.0.0.${i}`, daddr: '10.0.1.1', sport: 1000 + i }),
  );
  const shared = Buffer.alloc(8 + 3 * 104);
  for (const [k, e] of events.entries()) e.copy(shared, 8 + k * 104);
  const odd = Buffer.alloc(1 + 96);
  events[2].copy(odd, 1);
  const r = new FlowRing(4, 'node-r');
  r.push(shared, 8, emptyRefs(), OFFSET);
  r.push(shared, 8 + 104, emptyRefs(), OFFSET);
  r.push(odd.subarray(1), 0, emptyRefs(), OFFSET);
  r.push(odd, 1, emptyRefs(), OFFSET);
  const flows = await r.select();
  t.same(
    flows.map((f) => [f.IP!.source, f.l4?.TCP?.sourcePort, f.time.seconds]),
    [
      ['10.0.0.3', 1003, 1_000_003],
      ['10.0.0.4', 1004, 1_000_004],
      ['10.0.0.5', 1005, 1_000_005],
      ['10.0.0.5', 1005, 1_000_005],
    ],
  );
});

t.test('a slot that held an IPv6 flow shows the IPv4 flow written over it, and the other way round', async (t) => {
  // Copied word by word from an aligned buffer, an IPv4 event's address words beyond the first are
  // skipped: what a flow shows must not depend on what its slot held before.
  const r = new FlowRing(1, 'n');
  const shared = Buffer.alloc(8 + 3 * 104);
  const events = [
    encodeTraceEvent({ tsNs: 1e9, family: 6, saddr: 'fd00:1:2:3:4:5:6:7', daddr: 'fd00::ffff:ffff:ffff:ffff', dport: 80 }),
    encodeTraceEvent({ tsNs: 2e9, family: 4, saddr: '10.1.2.3', daddr: '10.4.5.6', dport: 81 }),
    encodeTraceEvent({ tsNs: 3e9, family: 6, saddr: 'fd00::1', daddr: 'fd00::2', dport: 82 }),
  ];
  for (const [k, e] of events.entries()) e.copy(shared, 8 + k * 104);
  const seen: string[][] = [];
  for (let k = 0; k < 3; k++) {
    r.push(shared, 8 + k * 104, emptyRefs(), OFFSET);
    seen.push((await r.select()).map((f) => `${f.IP!.source} ${f.IP!.destination} ${f.IP!.ipVersion}`));
  }
  t.same(seen, [['fd00:1:2:3:4:5:6:7 fd00::ffff:ffff:ffff:ffff IPv6'], ['10.1.2.3 10.4.5.6 IPv4'], ['fd00::1 fd00::2 IPv6']]);
});

t.test('spans copied into the log: flows of many appends read back; what the log wrote over is no longer held', async (t) => {
  const r = new FlowRing(5, 'n');
  // Records as the kernel lays them out: an 8-byte header, then the event; spans of 1 to 7 records.
  const span = (from: number, n: number) => {
    const b = Buffer.alloc(n * 104);
    for (let k = 0; k < n; k++)
      encodeTraceEvent({ tsNs: (from + k) * 1e9, saddr: `10.0.0.${(from + k) % 250}`, daddr: '10.0.1.1' }).copy(b, k * 104 + 8);
    return b;
  };
  let i = 0;
  for (let n = 1; i < 2000; n = (n % 7) + 1) {
    const off = r.append(span(i, n), 0, n * 104);
    for (let k = 0; k < n; k++) r.pushAt(off + k * 104 + 8, emptyRefs(), OFFSET);
    i += n;
  }
  t.equal(r.size, 5, 'one-event records: the log holds the last N');
  t.same(
    (await r.select()).map((f) => f.time.seconds),
    [i - 5, i - 4, i - 3, i - 2, i - 1].map((s) => 1_000_000 + s),
  );
  // Records that are no flows (a DNS answer, a malformed one) take room in the log too.
  for (let k = 0; k < 3; k++) r.append(Buffer.alloc(MAX_APPEND_BYTES), 0, MAX_APPEND_BYTES);
  t.equal(r.size, 0, 'their bytes written over, the flows are gone');
  t.same(await r.select(), []);
  push(r, 7);
  t.same(
    (await r.select()).map((f) => f.time.seconds),
    [1_000_007],
  );
  t.throws(() => r.append(Buffer.alloc(MAX_APPEND_BYTES + 8), 0, MAX_APPEND_BYTES + 8), RangeError);
  // Another source's record (no bytes in the log) newer than a flow written over stays.
  r.pushLazy('l7', 0, 0, () => ({ nodeName: 'n', verdict: 'FORWARDED' }) as never);
  for (let k = 0; k < 3; k++) r.append(Buffer.alloc(MAX_APPEND_BYTES), 0, MAX_APPEND_BYTES);
  t.same(
    (await r.select()).map((f) => f.verdict),
    ['FORWARDED'],
  );
});

t.test(
  "batches of another source's records: each built from its own batch, across more batches than slots, beside events",
  async (t) => {
    let now = 7_000_000;
    const r = new FlowRing(4, 'n', () => now);
    r.tick();
    // A record's flow names its batch and offset; its time is the one given with it.
    const build = (src: unknown, off: number) =>
      ({ nodeName: 'n', verdict: 'FORWARDED', Summary: `${src as string}@${off}`, time: { seconds: 0, nanos: 0 } }) as never;
    const summaries = async () => (await r.select()).map((f) => f.Summary);
    const many = (name: string, offs: number[]) =>
      r.pushLazyMany(name, Int32Array.from(offs), Float64Array.from(offs.map((o) => 1000 * o)), offs.length, build);
    many('b1', [5, 9, 13]);
    t.same(await summaries(), ['b1@5', 'b1@9', 'b1@13']);
    t.same(await r.select({ sinceMs: 9000 }).then((fs) => fs.map((f) => f.Summary)), ['b1@9', 'b1@13'], 'times kept per record');
    // More batches than the ring has slots (4): every held record still names its own batch.
    for (let k = 2; k <= 11; k++) many(`b${k}`, [k]);
    t.same(await summaries(), ['b8@8', 'b9@9', 'b10@10', 'b11@11']);
    t.equal(r.lazySources, 4, 'only the batches of the records held are kept');
    many('b12', []); // an empty batch takes no slot and no place
    t.equal(r.seen, 13);
    // Events and records in turn, one subscriber seeing each record as it comes.
    const seen: string[] = [];
    const off = r.subscribe((f) => seen.push(f.IP ? f.IP.source : f.Summary!));
    push(r, 1);
    many('b13', [1, 2]);
    off();
    push(r, 2);
    t.same(seen, ['10.0.0.1', 'b13@1', 'b13@2']);
    t.same(
      (await r.select()).map((f) => (f.IP ? f.IP.source : f.Summary)),
      ['10.0.0.1', 'b13@1', 'b13@2', '10.0.0.2'],
    );
    // A batch as large as the ring and more: the newest of it held.
    many('big', [1, 2, 3, 4, 5, 6]);
    t.same(await summaries(), ['big@3', 'big@4', 'big@5', 'big@6']);
    t.equal(r.size, 4);
    t.equal(r.lazySources, 1);
    t.equal(r.rate(), 23, 'all 23 flows of this second counted');
    now += 1000;
    t.equal(r.rate(), 23 / 2);
  },
);

t.test('a batch is let go once its last record is written over, not when its slot comes round again', async (t) => {
  const r = new FlowRing(8, 'n');
  const build = () => ({ nodeName: 'n', verdict: 'FORWARDED' }) as never;
  // 1,000 batches of one record each: the ring holds 8 records, so it keeps 8 batches, never 1,000.
  for (let k = 0; k < 1000; k++) r.pushLazyMany({ k }, Int32Array.of(0), Float64Array.of(k), 1, build);
  t.equal(r.lazySources, 8);
  for (let k = 0; k < 8; k++) push(r, k); // events write over every record
  t.equal(r.lazySources, 0, 'no batch kept once no record is of it');
  t.equal(r.size, 8);
});

t.test('flows another source let go unsent count as seen, and in the rate, without taking a slot', async (t) => {
  let now = 1_000_000;
  const r = new FlowRing(4, 'node-s', () => now);
  const build = (_s: unknown, off: number) => ({ nodeName: 'n', verdict: 'FORWARDED', Summary: String(off) }) as never;
  r.pushLazy('a', 1, 0, build);
  r.countSkipped(1000);
  r.pushLazy('b', 2, 0, build);
  t.same([r.size, r.seen], [2, 1002], 'two held, 1,002 seen');
  t.same(
    (await r.select()).map((f) => f.Summary),
    ['1', '2'],
    'the held ones are read as before',
  );
  t.equal(r.rate(), 1002, 'in the rate (one second so far)');
  now += 1000;
  r.countSkipped(0);
  r.countSkipped(-5);
  t.equal(r.seen, 1002, 'nothing skipped');
});

t.test('followers are reported as they come and go', async (t) => {
  const r = new FlowRing(4, 'node-f');
  const seen: number[] = [];
  r.onFollowers = (n) => seen.push(n);
  const a = r.subscribe(() => undefined);
  const b = r.subscribe(() => undefined);
  a();
  a();
  b();
  t.same(seen, [1, 2, 1, 0], 'unsubscribing twice says nothing the second time');
});
