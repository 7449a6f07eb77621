// The agent's idle memory give-back (agent/idle-memory.ts): after requests stop, never while they
// keep coming, at most once per interval, and not at all without requests since the last time; a
// second one when the quiet lasts (the young generation), which a new request puts off.
import t from 'tap';
import { idleMemory } from '../src/agent/idle-memory.ts';
import { pollUntil } from './lib/poll.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Waits (generously: a loaded machine runs timers late) until `n` give-backs ran; then the test
 *  asserts exactly n, so one too many still fails. Fixed sleeps stay only before "nothing more". */
const trimsReach = (idle: ReturnType<typeof idleMemory>, n: number) => pollUntil(() => idle.status().trims >= n, 30_000, 10);
/** No threshold: every give-back that is due runs. */
const ALWAYS = { minGrowthBytes: 0, minYoungBytes: 0 };

t.test('one give-back after a burst, once the requests have stopped for idleMs', async (t) => {
  const idle = idleMemory({ idleMs: 500, minIntervalMs: 0, deepIdleMs: 60_000, ...ALWAYS });
  t.teardown(() => idle.stop());
  // A burst: a request every 10 ms (never 500 ms quiet, even on a loaded machine).
  for (let i = 0; i < 20; i++) {
    idle.touch();
    await sleep(10);
  }
  t.equal(idle.status().trims, 0, 'nothing while requests keep coming');
  await trimsReach(idle, 1);
  t.equal(idle.status().trims, 1, 'once after the burst');
  await sleep(700);
  t.equal(idle.status().trims, 1, 'and not again without new requests');
});

t.test('at most once per minIntervalMs, however the requests are spaced', async (t) => {
  const idle = idleMemory({ idleMs: 10, minIntervalMs: 2000, deepIdleMs: 60_000, ...ALWAYS });
  t.teardown(() => idle.stop());
  idle.touch();
  await trimsReach(idle, 1);
  t.equal(idle.status().trims, 1);
  // Requests just over idleMs apart: each would earn a GC without the interval.
  for (let i = 0; i < 5; i++) {
    idle.touch();
    await sleep(30);
  }
  t.equal(idle.status().trims, 1, 'the interval holds the next one back');
  await trimsReach(idle, 2);
  t.equal(idle.status().trims, 2, 'which comes once the interval has passed');
});

t.test('stop() cancels a pending give-back', async (t) => {
  const idle = idleMemory({ idleMs: 30, minIntervalMs: 0, deepIdleMs: 60, ...ALWAYS });
  idle.touch();
  idle.stop();
  await sleep(100);
  t.equal(idle.status().trims, 0);
});

t.test('a second give-back when the quiet lasts deepIdleMs; a request in between starts over', async (t) => {
  // deepIdleMs 3 s: the request below must come before the deep one is due even on a loaded machine.
  const idle = idleMemory({ idleMs: 50, minIntervalMs: 0, deepIdleMs: 3000, ...ALWAYS });
  t.teardown(() => idle.stop());
  idle.touch();
  await trimsReach(idle, 1);
  t.equal(idle.status().trims, 1, 'the quick one');
  const last = Date.now();
  idle.touch(); // before the deep one was due
  await trimsReach(idle, 2);
  t.equal(idle.status().trims, 2, 'the request brought a quick one again, not the deep one');
  await trimsReach(idle, 3);
  const after = Date.now() - last;
  t.equal(idle.status().trims, 3, 'then the deep one');
  t.ok(after >= 2990, `3 s after the last request, not sooner (${after} ms; a timer may round 1 ms early)`);
  await sleep(1000);
  t.equal(idle.status().trims, 3, 'and nothing more without requests');
});

t.test('skipped while the process has not grown since the last one; run again once it has', async (t) => {
  const idle = idleMemory({ idleMs: 20, minIntervalMs: 0, deepIdleMs: 60_000, minGrowthBytes: 32 << 20, minYoungBytes: 2 ** 40 });
  t.teardown(() => idle.stop());
  const ran = () => idle.status().trims + idle.status().skips;
  idle.touch();
  await pollUntil(() => ran() >= 1, 30_000, 10);
  t.same([idle.status().trims, idle.status().skips], [1, 0], 'the first one always runs');
  idle.touch(); // a request that left next to nothing behind
  await pollUntil(() => ran() >= 2, 30_000, 10);
  t.same([idle.status().trims, idle.status().skips], [1, 1], 'nothing worth its GCs: skipped');
  const held = Buffer.alloc(64 << 20, 1); // 64 MiB resident
  idle.touch();
  await pollUntil(() => ran() >= 3, 30_000, 10);
  t.same([idle.status().trims, idle.status().skips], [2, 1], 'grown past the threshold: given back');
  t.equal(held.length, 64 << 20);
});
