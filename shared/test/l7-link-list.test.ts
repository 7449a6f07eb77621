// The worker's list of open client connections (link-list.ts): adds, removals in any order, removal
// during iteration, and no links left on a removed entry (nothing dead may point at a live entry).
import t from 'tap';
import { type Linked, LinkList } from '../src/l7/proxy/link-list.ts';

class E implements Linked<E> {
  prevLink?: E = undefined;
  nextLink?: E = undefined;
  constructor(readonly n: number) {}
}

const all = (l: LinkList<E>) => {
  const out: number[] = [];
  l.forEach((e) => {
    out.push(e.n);
  });
  return out.sort((a, b) => a - b);
};

t.test('add, delete from the middle, the ends, twice, and an entry never added', async (t) => {
  const l = new LinkList<E>();
  const es = [0, 1, 2, 3, 4].map((n) => new E(n));
  for (const e of es) l.add(e);
  t.equal(l.size, 5);
  l.delete(es[2]);
  l.delete(es[4]); // the head (last added)
  l.delete(es[0]); // the tail
  t.same(all(l), [1, 3]);
  t.equal(l.size, 2);
  l.delete(es[2]); // again: a no-op
  l.delete(new E(9)); // never added: a no-op
  t.equal(l.size, 2);
  for (const e of [es[0], es[2], es[4]]) t.ok(e.prevLink === undefined && e.nextLink === undefined, `entry ${e.n} unlinked`);
  l.delete(es[1]);
  l.delete(es[3]);
  t.equal(l.size, 0);
  t.same(all(l), []);
  l.add(es[2]);
  t.same(all(l), [2]);
});

t.test('forEach visits every entry while the callback deletes it (a worker destroying its connections)', async (t) => {
  const l = new LinkList<E>();
  for (let n = 0; n < 100; n++) l.add(new E(n));
  const seen: number[] = [];
  l.forEach((e) => {
    seen.push(e.n);
    l.delete(e);
  });
  t.equal(seen.length, 100);
  t.equal(l.size, 0);
  t.same(all(l), []);
});

t.test('churn: one entry in, one out, in any order, the size and contents stay right', async (t) => {
  const l = new LinkList<E>();
  const live: E[] = [];
  let next = 0;
  for (let i = 0; i < 10_000; i++) {
    if (live.length < 50 && (i % 3 !== 0 || !live.length)) {
      const e = new E(next++);
      l.add(e);
      live.push(e);
    } else {
      const [e] = live.splice((i * 7919) % live.length, 1);
      l.delete(e);
    }
  }
  t.equal(l.size, live.length);
  t.same(
    all(l),
    live.map((e) => e.n).sort((a, b) => a - b),
  );
});
