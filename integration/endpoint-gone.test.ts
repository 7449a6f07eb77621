// Garbage the runtime leaves: `ctr run -d --cni` never sends DEL, and a runtime can crash before it
// does. When an endpoint's netns no longer exists the agent removes the endpoint with everything it
// holds (record, addresses, host link), at start and at every upkeep, logs it and counts it in
// membrane_endpoints_gone_total. An endpoint whose netns still exists is never touched.
import t from 'tap';
import { startAgent, randomId } from './lib/agent.ts';
import { eventually } from './lib/proc.ts';
import { createNetns, linkExists, linkGone, type TestNetns } from './lib/netns.ts';
import { sampleValue } from '../shared/src/metrics/parse.ts';
import { scrapeMetrics } from './lib/metrics.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

t.test('endpoints of a gone netns are removed, at upkeep and at start, and counted', async (t) => {
  const run = randomId(3);
  const agent = await startAgent({ extraArgs: ['--endpoint-upkeep-interval', '1'] });
  t.teardown(() => agent.cleanup());
  const nss: TestNetns[] = [];
  t.teardown(() => {
    for (const n of nss) n.remove();
  });
  const create = async (name: string): Promise<Endpoint> => {
    const n = createNetns('mbg');
    nss.push(n);
    return agent.client.createEndpoint({
      containerId: `gone-${name}-${run}`,
      netns: n.path,
      ifName: 'eth0',
      labels: { app: name },
    });
  };
  const goneMetric = async () => {
    return sampleValue(await scrapeMetrics(agent.client), 'membrane_endpoints_gone_total') ?? -1;
  };
  const ipOf = (e: Endpoint) => e.ips[0].address.split('/')[0];
  const allocated = async () => (await agent.client.ipam()).flatMap((p) => p.allocations.map((a) => a.ip));
  const ids = async () => (await agent.client.listEndpoints()).map((e) => e.id).sort();

  const keep = await create('keep');
  const leak = await create('leak');
  t.equal(await goneMetric(), 0, 'nothing removed yet');

  // The container goes away without a DEL: its netns is deleted under the agent.
  nss[1].remove();
  // The 60 s deadline only ends a failing test.
  await eventually('the endpoint of the deleted netns is removed', async () => !(await ids()).includes(leak.id), 60_000, 200);
  t.same(await ids(), [keep.id], 'only the live endpoint is left');
  t.notOk((await allocated()).includes(ipOf(leak)), `its address ${ipOf(leak)} is free`);
  t.ok((await allocated()).includes(ipOf(keep)), 'the live endpoint keeps its address');
  // Polled: the endpoint leaves the list before its veth is gone (the reaper deletes it after the
  // teardown answers, and the kernel destroys a deleted netns's veths from a workqueue).
  t.ok(await linkGone(leak.hostIfName), 'its host link is gone');
  t.ok(linkExists(keep.hostIfName), 'the live one keeps its link');
  t.equal(await goneMetric(), 1, 'membrane_endpoints_gone_total counts it');

  // Gone while the agent was down: removed when it starts.
  const late = await create('late');
  await agent.stop();
  nss[2].remove();
  await agent.restart();
  t.same(await ids(), [keep.id], 'removed at start');
  t.notOk((await allocated()).includes(ipOf(late)), 'its address is free');
  t.equal(await goneMetric(), 1, 'and counted by the new agent');
  t.match(await agent.client.getEndpoint(`gone-keep-${run}`, 'eth0'), { id: keep.id }, 'the live endpoint survived both');
});
