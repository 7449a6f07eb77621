// An answer that teaches nothing new waits for the writes of earlier answers still under way
// (fqdn/writes.ts): it never reaches its pod before the addresses it carries are in the datapath.
import t from 'tap';
import { WritesInFlight } from '../src/fqdn/writes.ts';

const deferred = () => {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
};
const tick = () => new Promise((r) => setImmediate(r));

t.test('nothing under way: nothing to wait for', async (t) => {
  t.equal(new WritesInFlight().settled(), undefined);
});

t.test('a later answer is released only after the earlier write completes', async (t) => {
  const w = new WritesInFlight();
  const first = deferred();
  w.track(first.promise);
  let released = false;
  const wait = w.settled();
  t.ok(wait, 'a write is under way: the answer waits');
  void wait!.then(() => {
    released = true;
  });
  await tick();
  t.equal(released, false, 'not before the write is done');
  first.resolve();
  await tick();
  t.equal(released, true, 'released once it is');
  t.equal(w.settled(), undefined, 'and nothing is under way any more');
});

t.test('a failed write fails the answers waiting for it (they get SERVFAIL, fail closed)', async (t) => {
  const w = new WritesInFlight();
  const first = deferred();
  w.track(first.promise).catch(() => undefined);
  const wait = w.settled()!;
  first.reject(new Error('ipcache write failed'));
  await t.rejects(wait, /ipcache write failed/);
  await tick();
  t.equal(w.settled(), undefined);
});
