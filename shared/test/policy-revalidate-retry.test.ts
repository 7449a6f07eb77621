// A conntrack revalidation that fails (policy/datapath-ops.ts) must not leave the flows a change denies
// alive: the walk is retried over every entry until one succeeds. A stand-in datapath whose walk fails
// once; no kernel needed.
import t from 'tap';
import type { Datapath } from '../src/bpf/datapath.ts';
import type { Mirror } from '../src/policy/apply.ts';
import { datapathOps, REVALIDATE_RETRY_MS } from '../src/policy/datapath-ops.ts';
import { pollUntil } from './lib/poll.ts';

t.test('a failed revalidation is retried over every entry until it succeeds', async (t) => {
  const walks: (object | undefined)[] = [];
  let failures = 2;
  const dp = {
    mapFd: () => -1,
    mapCapacity: () => 1024,
    globalConfig: () => ({ audit: false }),
    revokeConntrack: (_allowed: unknown, filter?: object) => {
      walks.push(filter);
      if (failures-- > 0) throw new Error('EINTR: the walk was interrupted');
      return 3;
    },
  } as unknown as Datapath;
  const warnings: string[] = [];
  const ops = datapathOps(dp, { log: { warn: (_o, msg) => warnings.push(msg) } });
  ops.changed?.({} as Mirror, { policyKeys: [], flagIfindexes: [], ipcachePrefixes: ['198.18.0.7/32'] });
  t.equal(await ops.revalidated(), 0, 'the failed walk revoked nothing');
  t.equal(walks.length, 1);
  t.ok(walks[0], 'that walk asked only about what the change touched');
  t.ok(await pollUntil(() => walks.length >= 3, REVALIDATE_RETRY_MS * 5), 'retried after it failed, and after the retry failed');
  t.same(walks.slice(1), [undefined, undefined], 'each retry asks about every entry');
  await new Promise((r) => setTimeout(r, REVALIDATE_RETRY_MS * 1.5));
  t.equal(walks.length, 3, 'no more walks once one succeeded');
  t.match(warnings, [/revalidation failed/, /failed again/]);
});
