// The agent's conntrack upkeep against a stand-in datapath: collection runs every interval (every
// second while the table is more than half full), and a failing walk is logged, not thrown. (A deleted
// endpoint's flows: endpoint-reaper.test.ts.)
import t from 'tap';
import { ConntrackUpkeep } from '../src/agent/conntrack.ts';
import { pollUntil } from './lib/poll.ts';

const warnings: string[] = [];
const log = {
  warn: (_o: object, msg: string) => {
    warnings.push(msg);
  },
} as never;

t.test('collection runs on its interval and survives a failing walk', async (t) => {
  let calls = 0;
  const ct = new ConntrackUpkeep({
    datapath: {
      gcConntrack: () => {
        calls++;
        if (calls === 1) throw new Error('map gone');
        return 3;
      },
      conntrackFill: () => ({ entries: 0, max: 1 }),
    },
    log,
    intervalSeconds: 0.02,
  });
  ct.start();
  // Polled, not one 150 ms look: a loaded machine runs a 20 ms timer late, but it still runs.
  const started = Date.now();
  const again = await pollUntil(() => calls >= 3, 30_000, 10);
  ct.close();
  const seen = calls;
  t.ok(again, `collected ${seen} times in ${Date.now() - started} ms at a 20 ms interval, the walk after the failed one too`);
  t.same(warnings, ['conntrack GC failed'], 'the failed walk was logged once');
  await new Promise((r) => setTimeout(r, 60));
  t.equal(calls, seen, 'close stops the timer');
  t.equal(ct.collect(), 3, 'a manual collection reports what it removed');
});

t.test('a table more than half full is collected every second, whatever the interval', async (t) => {
  let calls = 0;
  let fill = { entries: 10, max: 100 };
  const ct = new ConntrackUpkeep({
    datapath: {
      gcConntrack: () => {
        calls++;
        return 0;
      },
      conntrackFill: () => fill,
    },
    log,
    intervalSeconds: 3600,
  });
  ct.start();
  t.teardown(() => ct.close());
  t.equal(calls, 1, 'one collection at start');
  await new Promise((r) => setTimeout(r, 1300));
  t.equal(calls, 1, 'a table 10% full waits for the interval');
  fill = { entries: 60, max: 100 };
  const filled = Date.now();
  // At least one more within a generous deadline (a loaded machine runs the 1 s timer late), and no
  // more than one a second: the upper bound cannot be broken by a slow machine.
  t.ok(await pollUntil(() => calls >= 2, 30_000), `a table 60% full: collected again ${Date.now() - filled} ms later`);
  const since = Date.now();
  const before = calls;
  await new Promise((r) => setTimeout(r, 2300));
  // The bound follows the time that really passed: a loaded machine wakes this wait late, and the
  // collections due meanwhile are not too many. Once a second gives at most one per whole second
  // passed, plus one due at the start.
  const passed = Date.now() - since;
  t.ok(calls - before <= Math.floor(passed / 1000) + 1, `and not more than once a second: ${calls - before} in ${passed} ms`);
});
