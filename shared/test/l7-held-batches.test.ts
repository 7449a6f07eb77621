// A worker's batches while nobody follows flows (held-batches.ts): as many flows as the agent's ring
// holds are kept, older batches let go and counted, everything handed over oldest first.
import t from 'tap';
import { HeldBatches } from '../src/l7/proxy/held-batches.ts';

const batch = (tag: number, size = 8) => Buffer.alloc(size, tag);
const tags = (bs: Buffer[]) => bs.map((b) => b[0]);

t.test('keeps the newest batches that hold the ring size, lets the older go and counts their flows', async (t) => {
  const h = new HeldBatches(100);
  h.hold(batch(1), 60);
  h.hold(batch(2), 30);
  h.hold(batch(3), 50);
  t.same([h.size, h.flows], [3, 140], "the newer two hold 80 flows of the ring's 100: the oldest is still partly needed");
  h.hold(batch(4), 70);
  t.same([h.size, h.flows], [2, 120], 'the newest two hold 120: the two before go');
  const got = h.take();
  t.same(tags(got.batches), [3, 4], 'oldest first');
  t.equal(got.skipped, 90, "the flows let go: 60 + 30, for the ring's seen count");
  t.same([h.size, h.flows, h.take().skipped, h.take().batches.length], [0, 0, 0, 0], 'taken: empty, counts start over');
});

t.test('a batch larger than the ring alone is kept; what is held is a copy', async (t) => {
  const h = new HeldBatches(10);
  const b = batch(7);
  h.hold(b, 4);
  h.hold(batch(8), 25);
  t.same([h.size, h.flows], [1, 25], 'the newest alone is over the ring: kept, the one before goes');
  b.fill(0);
  h.hold(b, 1);
  const got = h.take();
  t.same(tags(got.batches), [8, 0]);
  t.equal(got.skipped, 4);
  h.hold(batch(9), 3);
  b.fill(5);
  t.same(tags(h.take().batches), [9], "the writer's buffer reused after hold(): the held bytes stay");
});

t.test('a smaller ring (setKeep) lets go at once what it no longer needs', async (t) => {
  const h = new HeldBatches(1000);
  for (let i = 1; i <= 10; i++) h.hold(batch(i), 100);
  t.equal(h.size, 10);
  h.setKeep(250);
  t.same(tags(h.take().batches), [8, 9, 10]);
});
