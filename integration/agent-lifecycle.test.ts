// The agent can die at any time: forwarding goes on, and the restarted agent picks up where it was.
// Many pods at once get distinct working endpoints; bad requests fail cleanly and leave nothing.
import t from 'tap';
import { agentFor, ip4, randomId, restoreVerified } from './lib/agent.ts';
import { linkGone, netnsFor, ping } from './lib/netns.ts';
import { startEchoServer, startFlow, killAll } from './lib/tcp.ts';
import { mapEntries } from './lib/inspect.ts';
import { claimPrefix24 } from './lib/subnets.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';

t.test('kill -9 the agent while TCP flows: the flow goes on; the restarted agent restores and deletes', async (t) => {
  const agent = await agentFor(t);
  const [nsA, nsB] = netnsFor(t, 2);
  const a = await agent.client.createEndpoint({ containerId: `rs-${randomId()}`, netns: nsA.path, ifName: 'eth0' });
  const b = await agent.client.createEndpoint({ containerId: `rs-${randomId()}`, netns: nsB.path, ifName: 'eth0' });
  const srv = await startEchoServer(nsB, 7171);
  const flow = startFlow(nsA, ip4(b), 7171);
  t.teardown(() => {
    flow.stop();
    killAll([srv]);
  });
  await pollUntil(() => flow.echoed() > 0 || flow.failed() !== null, 30_000, 100);
  t.ok(flow.echoed() > 0, `flow established (${flow.failed() ?? 'ok'})`);

  await agent.kill9();
  const atKill = flow.echoed();
  // The flow child reports every 100 ms; a loaded machine may not run it for a while. The agent
  // stays dead for the whole wait, so more echoed bytes still mean forwarding without it.
  await pollUntil(() => flow.echoed() > atKill + 1000 || flow.failed() !== null, 30_000, 100);
  t.ok(flow.echoed() > atKill, `the flow kept going with the agent dead (${atKill} -> ${flow.echoed()} bytes)`);
  t.equal(flow.failed(), null, 'no connection error');

  await agent.restart();
  const listed = await agent.client.listEndpoints();
  t.same(
    listed.map((e) => e.containerId).sort(),
    [a.containerId, b.containerId].sort(),
    'the restarted agent lists the same endpoints',
  );
  const beforeRestartCheck = flow.echoed();
  await pollUntil(() => flow.echoed() > beforeRestartCheck || flow.failed() !== null, 30_000, 100);
  t.ok(flow.echoed() > beforeRestartCheck, 'the flow survives the restart too');
  t.ok(await ping(nsA, ip4(b)), 'new traffic works after the restart');
  t.same(await agent.client.deleteEndpoint(b.containerId, 'eth0'), { deleted: true }, 'delete works after the restart');
  t.ok(await linkGone(b.hostIfName));
});

t.test('restore repairs what is missing and drops what is gone', async (t) => {
  const agent = await agentFor(t);
  const [keep, gone] = netnsFor(t, 2);
  const k = await agent.client.createEndpoint({ containerId: `keep-${randomId()}`, netns: keep.path, ifName: 'eth0' });
  const g = await agent.client.createEndpoint({ containerId: `gone-${randomId()}`, netns: gone.path, ifName: 'eth0' });
  await agent.stop();
  gone.remove(); // the pod died while the agent was down
  await keep.exec('ip', ['route', 'del', 'default']); // and someone broke the other one
  await agent.restart();
  const items = await agent.client.listEndpoints();
  t.same(
    items.map((e) => e.containerId),
    [k.containerId],
    'the endpoint whose netns is gone was dropped',
  );
  t.ok(await linkGone(g.hostIfName), 'its host veth is gone');
  // Its host side is whole: the container side is verified while the API serves, and says so until then.
  t.match(items[0].health?.state ?? 'verified already', /^(verifying|verified already)$/);
  await restoreVerified(agent.client);
  t.notOk((await agent.client.listEndpoints())[0].health, 'verified: ready');
  t.match(await keep.exec('ip', ['route', 'show', 'default']), /default via/, 'the missing default route was repaired');
  const allocated = (await agent.client.ipam()).flatMap((p) => p.allocations).map((a) => a.ip);
  t.same(allocated, [ip4(k)], 'the dropped endpoint released its address');
});

t.test('50 parallel creates give 50 distinct working endpoints', async (t) => {
  const agent = await agentFor(t);
  const nss = netnsFor(t, 50);
  const eps = await Promise.all(
    nss.map((ns, i) => agent.client.createEndpoint({ containerId: `par-${i}-${randomId()}`, netns: ns.path, ifName: 'eth0' })),
  );
  t.equal(new Set(eps.map(ip4)).size, 50, '50 distinct addresses');
  t.equal(new Set(eps.map((e) => e.id)).size, 50, '50 distinct endpoint ids');
  t.equal(mapEntries(agent.bpffsDir, 'endpoints_cfg'), 50, '50 datapath entries');
  const results = await Promise.all(eps.slice(1).map((e) => ping(nss[0], ip4(e), 3)));
  t.equal(results.filter(Boolean).length, 49, 'the first pod reaches all 49 others');
  await Promise.all(eps.map((e) => agent.client.deleteEndpoint(e.containerId, 'eth0')));
  t.equal((await agent.client.ipam()).flatMap((p) => p.allocations).length, 0, 'all addresses released');
  t.ok(await linkGone(eps.map((e) => e.hostIfName)), 'all host veths gone');
});

t.test('bad requests get clear errors and leave nothing behind', async (t) => {
  const agent = await agentFor(t);
  const c = agent.client;
  const leftovers = async () => (await c.ipam()).flatMap((p) => p.allocations).length + (await c.listEndpoints()).length;

  await t.rejects(
    c.createEndpoint({ containerId: 'x1', netns: `/var/run/netns/does-not-exist-${randomId()}`, ifName: 'eth0' }),
    { status: 400, code: 'netns_not_found', message: /does-not-exist/ },
    'missing netns',
  );
  await t.rejects(
    c.createNetwork({ name: `n${randomId()}`, subnets: ['10.300.0.0/24'] }),
    { status: 400, code: 'bad_request', message: /10.300.0.0\/24/ },
    'bad CIDR',
  );
  const [ns] = netnsFor(t, 1);
  await t.rejects(
    c.createEndpoint({ containerId: 'x2', netns: ns.path, ifName: 'eth0', network: 'no-such-net' }),
    { status: 404, code: 'network_not_found', message: /"no-such-net"/ },
    'unknown network',
  );
  await t.rejects(
    c.createEndpoint({ containerId: 'x3', netns: ns.path, ifName: 'this-is-too-long-for-linux' }),
    { status: 400, code: 'bad_request', message: /ifName/ },
    'interface name too long',
  );
  await t.rejects(
    c.request('POST', '/v1/endpoints', { netns: ns.path }),
    { status: 400, message: /containerId/ },
    'missing field named',
  );

  const tiny = `tiny${randomId()}`;
  await c.createNetwork({ name: tiny, subnets: [`${claimPrefix24(64, 192)}.0/30`] });
  const ok = await c.createEndpoint({ containerId: 'x4', netns: ns.path, ifName: 'eth0', network: tiny });
  const [ns2] = netnsFor(t, 1);
  await t.rejects(
    c.createEndpoint({ containerId: 'x5', netns: ns2.path, ifName: 'eth0', network: tiny }),
    { status: 409, code: 'pool_exhausted', message: new RegExp(`"${tiny}" is exhausted`) },
    'exhausted pool names the pool',
  );
  t.notMatch(await ns2.exec('ip', ['link']), /eth0/, 'the failed create left no interface in the netns');
  await c.deleteEndpoint(ok.containerId, 'eth0');
  await c.deleteNetwork(tiny);
  t.equal(await leftovers(), 0, 'no endpoint or address left after the failures');
});
