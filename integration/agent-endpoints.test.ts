// Pods created through the agent's API talk to each other and to the node, over the real kernel;
// deleting them leaves nothing behind.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { agentFor, randomId } from './lib/agent.ts';
import { membrane } from './lib/cli.ts';
import { linkGone, netnsFor, ping } from './lib/netns.ts';
import { startEchoServer, tcpRequest, killAll } from './lib/tcp.ts';
import { hostRouteTo, mapEntries, tcFilters } from './lib/inspect.ts';
import type { Endpoint } from '../shared/src/types.ts';

const execFileP = promisify(execFile);

t.test('two pods talk to each other and to the node, then leave nothing behind', async (t) => {
  const agent = await agentFor(t, { ipv6: true });
  const [nsA, nsB] = netnsFor(t, 2);
  const cid = () => `pod-${randomId(8)}`;

  const a = await agent.client.createEndpoint({ containerId: cid(), netns: nsA.path, ifName: 'eth0', labels: { app: 'a' } });
  const b = await agent.client.createEndpoint({ containerId: cid(), netns: nsB.path, ifName: 'eth0', labels: { app: 'b' } });
  const ip = (e: Endpoint, fam: 4 | 6) => e.ips.find((x) => x.family === fam)!.address.split('/')[0];
  const gw = (e: Endpoint, fam: 4 | 6) => e.ips.find((x) => x.family === fam)!.gateway;

  t.match(a.ips.find((x) => x.family === 4)!.address, /\/32$/, 'IPv4 /32 on eth0');
  t.match(a.ips.find((x) => x.family === 6)!.address, /\/128$/, 'IPv6 /128 on eth0');
  t.not(ip(a, 4), ip(b, 4), 'distinct addresses');
  const eth0 = await nsA.exec('ip', ['-j', 'addr', 'show', 'dev', 'eth0']);
  t.match(eth0, ip(a, 4), 'address configured inside the netns');
  t.match(await nsA.exec('ip', ['route', 'show', 'default']), `default via ${gw(a, 4)} dev eth0`);

  t.ok(await ping(nsA, ip(b, 4)), 'pod A pings pod B (IPv4)');
  t.ok(await ping(nsB, ip(a, 6)), 'pod B pings pod A (IPv6)');
  t.ok(await ping(nsA, gw(a, 4)), 'pod A pings the node (its gateway, IPv4)');
  t.ok(await ping(nsA, gw(a, 6)), 'pod A pings the node (its gateway, IPv6)');

  const srv = await startEchoServer(nsB, 7070);
  t.teardown(() => killAll([srv]));
  t.equal(await tcpRequest(nsA, ip(b, 4), 7070), 'ping', 'TCP pod A -> pod B (IPv4)');
  t.equal(await tcpRequest(nsA, ip(b, 6), 7070), 'ping', 'TCP pod A -> pod B (IPv6)');
  const fromHost = await execFileP('ping', ['-c', '1', '-W', '2', ip(b, 4)]).then(
    () => true,
    () => false,
  );
  t.ok(fromHost, 'the node pings pod B');

  const counters = await agent.client.request<{ items: Endpoint[] }>('GET', '/v1/endpoints');
  t.equal(counters.items.length, 2, 'the agent lists both endpoints');

  const cli = await membrane(['--socket', agent.socket, 'endpoint', 'list', '-o', 'json']);
  const listed = JSON.parse(cli.out) as Endpoint[];
  t.same(listed.map((e) => e.containerId).sort(), [a.containerId, b.containerId].sort(), 'the CLI lists them');
  const table = await membrane(['--socket', agent.socket, 'endpoint', 'list']);
  t.match(table.out, /app=a/, 'labels shown in the table');

  t.match(tcFilters(b.hostIfName, 'ingress'), /tcx from_container/, 'BPF program on the host veth ingress');
  t.match(tcFilters(b.hostIfName, 'egress'), /tcx to_container/, 'and egress');
  t.equal(mapEntries(agent.bpffsDir, 'endpoints_cfg'), 2, 'two endpoint config entries');

  for (const e of [a, b]) t.same(await agent.client.deleteEndpoint(e.containerId, e.ifName), { deleted: true });
  t.same(await agent.client.deleteEndpoint(a.containerId, 'eth0'), { deleted: false }, 'second delete succeeds too');

  t.ok(await linkGone(a.hostIfName), 'host veth A gone');
  t.ok(await linkGone(b.hostIfName), 'host veth B gone');
  t.equal(hostRouteTo(ip(a, 4)), '', 'host route to A gone');
  t.equal(hostRouteTo(ip(b, 6)), '', 'host IPv6 route to B gone');
  const pools = await agent.client.ipam();
  t.equal(pools.flatMap((p) => p.allocations).length, 0, 'no address left allocated');
  t.equal(mapEntries(agent.bpffsDir, 'endpoints_cfg'), 0, 'no endpoint config entry left');
  t.equal(mapEntries(agent.bpffsDir, 'local_endpoints'), 0, 'no local endpoint entry left');
  t.notMatch(await nsA.exec('ip', ['link']), /eth0/, 'eth0 gone from the pod netns');
});

t.test('deleting succeeds when the netns is already gone', async (t) => {
  const agent = await agentFor(t);
  const [ns] = netnsFor(t, 1);
  const ep = await agent.client.createEndpoint({ containerId: `gone-${randomId()}`, netns: ns.path, ifName: 'eth0' });
  ns.remove();
  t.same(await agent.client.deleteEndpoint(ep.containerId, 'eth0'), { deleted: true });
  t.ok(await linkGone(ep.hostIfName));
  t.equal((await agent.client.ipam()).flatMap((p) => p.allocations).length, 0, 'address released');
});

t.test('a retried create returns the same endpoint; a conflicting one is refused', async (t) => {
  const agent = await agentFor(t);
  const [ns, other] = netnsFor(t, 2);
  const req = { containerId: `retry-${randomId()}`, netns: ns.path, ifName: 'eth0' };
  const first = await agent.client.createEndpoint(req);
  const again = await agent.client.createEndpoint(req);
  t.same(again, first);
  await t.rejects(agent.client.createEndpoint({ ...req, netns: other.path }), { status: 409, code: 'endpoint_exists' });
});
