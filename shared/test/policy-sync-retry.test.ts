// A policy change nobody waits on (another node's import reaching this one through the cluster
// store's watch, other nodes' endpoints, host addresses) has no caller to report a refused map write
// to, and the engine's copy of the policy set has moved on already: without another try the maps keep
// the old enforcement until some unrelated change syncs them (cluster-agents' 10,000-rule import
// never reached node 3's maps). These tests refuse map writes and wait for the maps to hold what an
// engine whose write went through at once holds.
import t from 'tap';
import { PolicyEngine } from '../src/policy/engine.ts';
import { MemoryStore } from '../src/store/index.ts';
import { MemoryPolicyOps, records, testEndpoint, WEB_FROM_CLIENT } from './lib/policy.ts';
import { pollUntil } from './lib/poll.ts';

const SET = { revision: 1, nextNumber: 2, records: records(WEB_FROM_CLIENT) };

/** A started engine with a web and a client endpoint; a refused sync is tried again after 10 ms, 20, 40... */
async function engineOver(ops: MemoryPolicyOps): Promise<PolicyEngine> {
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    syncRetryMs: { min: 10, max: 100 },
  });
  for (const [i, app] of ['web', 'client'].entries()) {
    const ep = testEndpoint(i + 1, { app }, await engine.identityFor({ app }), `10.0.0.${i + 2}`);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  await engine.start();
  return engine;
}

/** What the maps hold when the change goes through at once. */
async function reference(): Promise<Map<string, unknown>> {
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const engine = await engineOver(ops);
  await engine.replacePolicies(SET);
  await engine.close();
  return ops.policy;
}

t.test('a cluster policy set whose map write is refused reaches the maps on a later try', async (t) => {
  const want = await reference();
  t.ok(want.size > 0, `written at once: ${want.size} entries`);
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const engine = await engineOver(ops);
  const before = new Map(ops.policy);
  ops.failNextPolicyWrite = true;
  await t.rejects(engine.replacePolicies(SET), /E2BIG/, 'the write is refused');
  t.equal(engine.revision, 1, "the engine holds the cluster's set");
  t.same(ops.policy, before, 'the maps are as they were');
  t.ok(await pollUntil(() => ops.policy.size === want.size, 10_000, 10), 'another try writes the set');
  t.same(ops.policy, want, 'the same entries as written at once');
  await engine.close();
});

t.test('a refused retry is tried again; once written, no more tries', async (t) => {
  const want = await reference();
  t.ok(want.size > 0, `written at once: ${want.size} entries`);
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const engine = await engineOver(ops);
  let refusals = 0;
  const write = ops.writePolicy.bind(ops);
  ops.writePolicy = (upsert, remove) => {
    if (upsert.length && refusals < 3) {
      refusals++;
      throw new Error('ENOMEM');
    }
    write(upsert, remove);
  };
  await t.rejects(engine.replacePolicies(SET), /ENOMEM/);
  t.ok(await pollUntil(() => ops.policy.size === want.size, 10_000, 10), 'written in the end');
  t.equal(refusals, 3, 'after the first try and two retries were refused');
  t.same(ops.policy, want);
  const writes = ops.writes;
  t.notOk(await pollUntil(() => ops.writes > writes, 300, 10), 'nothing is written after that');
  await engine.close();
});

t.test("other nodes' endpoints whose sync is refused reach the maps too", async (t) => {
  const ops = new MemoryPolicyOps(10_000, 10_000);
  const engine = await engineOver(ops);
  const remote = new Map([['10.1.0.7/32', 4242]]);
  const write = ops.writeIpcache.bind(ops);
  let refused = false;
  ops.writeIpcache = (upsert, remove) => {
    if (!refused && upsert.length) {
      refused = true;
      throw new Error('ENOMEM');
    }
    write(upsert, remove);
  };
  await t.rejects(engine.setRemoteEndpoints(remote), /ENOMEM/);
  t.ok(await pollUntil(() => ops.ipcache.get('10.1.0.7/32') === 4242, 10_000, 10), 'the remote address is in the ipcache');
  await engine.close();
});
