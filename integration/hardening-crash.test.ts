// The agent killed (SIGKILL) in the middle of CNI ADDs, and DELs the agent could not take: after a
// restart nothing is leaked (addresses, links, routes, map entries, store records: lib/leaks.ts), and
// DELs queued by membrane-cni are found from agentSocket alone. Agents run inside node netns of ours.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { randomId, sleep } from './lib/agent.ts';
import { startNode, type TestNode } from './lib/node-netns.ts';
import { createNetns, ping, type TestNetns } from './lib/netns.ts';
import { nodeState } from './lib/leaks.ts';
import { ensureCniBinary, invokeCni, type Outcome } from '../cni/test/lib/exec.ts';
import { listPendingDeletes, pendingDeletesDir } from '../shared/src/pending-deletes/index.ts';

ensureCniBinary();
// No stateDir in the config: the plugin must find the agent's queue from agentSocket alone.
const conf = (node: TestNode) => ({
  cniVersion: '1.0.0',
  name: `crash-${node.agent.id}`,
  type: 'membrane-cni',
  agentSocket: node.agent.socket,
});

t.test(
  'SIGKILL of the agent during ADDs, restart: exactly the finished pods remain, and after the DELs nothing at all',
  async (t) => {
    const node = await startNode();
    t.teardown(() => node.cleanup());
    const nss: TestNetns[] = [];
    t.teardown(() => {
      for (const n of nss) n.remove();
    });
    const empty = await nodeState(node.agent);
    const pods: { id: string; ns: TestNetns; add: Outcome }[] = [];

    for (let round = 0; round < 3; round++) {
      const batch = Array.from({ length: 6 }, () => {
        const ns = createNetns('mbk');
        nss.push(ns);
        return { id: `k${round}-${randomId(5)}`, ns };
      });
      const adds = batch.map((p) => invokeCni('ADD', conf(node), { containerId: p.id, netns: p.ns.path }));
      // Inside the creates: once the first one is answered (the others are at some step of theirs).
      const first = await Promise.race([Promise.any(adds).then(() => 'the first answer'), sleep(1500).then(() => '1.5 s')]);
      // A different crash point each run on purpose (a seed could not replay scheduling); named, so a
      // failure says where the kill fell.
      const extra = Math.floor(Math.random() * 120);
      t.comment(`round ${round}: kill -9 ${extra} ms after ${first}`);
      await sleep(extra);
      await node.agent.kill9();
      const outcomes = await Promise.all(adds);
      pods.push(...batch.map((p, i) => ({ ...p, add: outcomes[i] })));
      t.ok(
        outcomes.every((o) => o.code === 0 || o.out?.code === 11),
        `round ${round}: each ADD succeeded or said "try again" (${outcomes.map((o) => o.out?.code ?? 0).join(',')})`,
      );
      await node.agent.restart();

      // Without any DEL yet: what the restarted agent holds is consistent on its own.
      const s = await nodeState(node.agent);
      const known = new Set(pods.map((p) => `${p.id}/eth0`));
      const succeeded = pods.filter((p) => p.add.code === 0).map((p) => `${p.id}/eth0`);
      t.ok(
        succeeded.every((k) => s.endpoints.includes(k)),
        'every acknowledged ADD survived the kill',
      );
      t.ok(
        s.endpoints.every((k) => known.has(k)),
        'nothing but the pods asked for',
      );
      t.equal(
        s.addresses.length,
        s.endpoints.length,
        `one address per endpoint, none orphaned (${s.addresses.length} for ${s.endpoints.length})`,
      );
      t.equal(s.links.length, s.endpoints.length, 'one host veth per endpoint');
      t.same(
        [s.maps.endpoints_cfg, s.maps.local_endpoints, s.records.endpoints, s.records.addresses],
        Array(4).fill(s.endpoints.length),
        'datapath entries and store records: one per endpoint',
      );
      for (const p of pods.filter((x) => x.add.code === 0)) {
        t.ok(await ping(p.ns, p.add.out.ips[0].gateway), `acknowledged pod ${p.id} reaches its gateway`);
      }
      // A pod whose ADD failed has no eth0 left behind unless the agent finished it before dying.
      for (const p of pods.filter((x) => x.add.code !== 0 && !s.endpoints.includes(`${x.id}/eth0`))) {
        t.notMatch(await p.ns.exec('ip', ['-o', 'link']), /eth0/, `no half-made interface in ${p.id}'s netns`);
      }
    }

    // The runtime DELs every pod (a failed ADD is followed by a DEL too).
    for (const p of pods) {
      const del = await invokeCni('DEL', conf(node), { containerId: p.id, netns: p.ns.path });
      t.equal(del.code, 0, `DEL ${p.id}`);
    }
    t.same(await nodeState(node.agent), empty, 'nothing leaked: endpoints, addresses, links, routes, map entries, records');
  },
);

t.test('DELs the agent could not take are queued next to its socket and drained at restart and while it runs', async (t) => {
  const node = await startNode({ extraArgs: ['--endpoint-upkeep-interval', '1'] });
  t.teardown(() => node.cleanup());
  const nss = [createNetns('mbq'), createNetns('mbq'), createNetns('mbq')];
  t.teardown(() => {
    for (const n of nss) n.remove();
  });
  const empty = await nodeState(node.agent);
  const ids = nss.map(() => `q-${randomId(5)}`);
  for (const [i, ns] of nss.entries())
    t.equal((await invokeCni('ADD', conf(node), { containerId: ids[i], netns: ns.path })).code, 0, `ADD ${ids[i]}`);
  const queue = pendingDeletesDir(node.agent.socket);

  await node.agent.stop();
  const del = await invokeCni('DEL', conf(node), { containerId: ids[0], netns: nss[0].path });
  t.same([del.code, del.stdout], [0, ''], 'DEL with the agent down succeeds');
  t.same(
    listPendingDeletes(queue).map((q) => q.entry?.containerId),
    [ids[0]],
    `and is queued in ${path.basename(queue)} next to the socket`,
  );
  await node.agent.restart();
  t.notOk(
    (await node.agent.client.listEndpoints()).some((e) => e.containerId === ids[0]),
    'the restarted agent (another --state-dir than the default) finished it',
  );
  t.same(listPendingDeletes(queue), [], 'queue drained');

  // A DEL that timed out while the agent ran is queued too: it must not wait for a restart.
  fs.writeFileSync(
    path.join(queue, `${'1'.repeat(32)}.json`),
    JSON.stringify({
      version: 1,
      containerId: ids[1],
      ifName: 'eth0',
      netns: nss[1].path,
      reason: 'deadline exceeded',
      queuedAt: new Date().toISOString(),
    }),
  );
  // ...and one queued before its attachment was created again (older than the endpoint): dropped, the pod kept.
  fs.writeFileSync(
    path.join(queue, `${'2'.repeat(32)}.json`),
    JSON.stringify({
      version: 1,
      containerId: ids[2],
      ifName: 'eth0',
      netns: nss[2].path,
      reason: 'deadline exceeded',
      queuedAt: new Date(Date.now() - 3_600_000).toISOString(),
    }),
  );
  let left: string[] = [];
  for (let i = 0; i < 120; i++) {
    left = (await node.agent.client.listEndpoints()).map((e) => e.containerId);
    if (!left.includes(ids[1]) && listPendingDeletes(queue).length === 0) break;
    await sleep(250);
  }
  t.same(left, [ids[2]], 'the running agent drained the queue: the timed-out DEL done, the stale one dropped');
  t.same(listPendingDeletes(queue), [], 'nothing left queued');
  const eps = await node.agent.client.listEndpoints();
  t.ok(await ping(nss[2], eps[0].ips[0].gateway), 'the kept pod works');
  t.equal((await invokeCni('DEL', conf(node), { containerId: ids[2], netns: nss[2].path })).code, 0);
  t.same(await nodeState(node.agent), empty, 'nothing leaked');
});
