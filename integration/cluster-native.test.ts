// Native routing (--routing-mode native) on the multi-node harness: the underlay carries pod
// addresses itself (the nodes share it, so a route via the other node's address reaches its pods);
// no tunnel device, pods keep the underlay's MTU, the receiving node classifies the sender by its
// ipcache (the sender's address is known cluster-wide), policy and drops as in tunnel mode.
import { tcFilters } from './lib/inspect.ts';
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { clusterRoutes, inNode, purgeNode, startSingleNode } from './lib/purge-node.ts';
import { eventually } from './lib/cluster.ts';
import { clusterForFile } from './lib/cluster-file.ts';
import { untilDropped, webFromClient } from './lib/cluster-maps.ts';
import { ping } from './lib/netns.ts';
import { startEchoServer } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { sniff, frameInfo } from './lib/raw.ts';
import { flowsUntil } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, servers, known } = clusterForFile(t, { nodes: 2, agentArgs: ['--routing-mode', 'native'] });

t.test('native routing: routes via the node addresses, no tunnel device, pod addresses on the underlay', async (t) => {
  const [n1, n2] = c.nodes;
  const a = await n1.pod({ app: 'a' });
  const b = await n2.pod({ app: 'b' });
  servers.push(await startEchoServer(b.ns, 8080, '::'));
  await eventually('pods known', () => known(a) && known(b), 20_000);
  const routes = execFileSync('nsenter', [`--net=${n1.netns.path}`, 'ip', '-4', 'route', 'show', 'proto', '196'], {
    encoding: 'utf8',
  });
  const cidr2 = (await n2.client.status()).cluster!.podCidrs.ipv4!;
  t.match(
    routes,
    new RegExp(`^${cidr2.replace(/\./g, '\\.')} via ${n2.ip.replace(/\./g, '\\.')} dev eth0`, 'm'),
    `n1 routes n2's pods via n2's address: ${routes.trim()}`,
  );
  t.throws(
    () => execFileSync('nsenter', [`--net=${n1.netns.path}`, 'ip', 'link', 'show', 'membrane_vxlan'], { stdio: 'pipe' }),
    'no tunnel device',
  );
  t.match(await a.ns.exec('ip', ['-o', 'link', 'show', 'eth0']), /mtu 1500/, 'pods keep the underlay MTU');
  const st = (await n1.client.status()).cluster!.routing!;
  // The tunnel map holds the other node's pod CIDR: what the datapath sends out of the underlay (fib.h).
  t.match(st, { mode: 'native', routes: 1, tunnelEntries: 1 }, 'status says native');

  const cap = await sniff(c.underlay, 20, 'n1');
  const forwarded = async (n: typeof n1) => {
    const snmp = (await n.netns.exec('cat', ['/proc/net/snmp'])).split('\n').filter((l) => l.startsWith('Ip:'));
    return Number(snmp[1].split(' ')[snmp[0].split(' ').indexOf('ForwDatagrams')]);
  };
  const fwd0 = [await forwarded(n1), await forwarded(n2)];
  t.ok(await ping(a.ns, b.ip4, 3), 'ping n1 -> n2');
  const fwd = [(await forwarded(n1)) - fwd0[0], (await forwarded(n2)) - fwd0[1]];
  // The sending node's datapath puts a pod's packet on the underlay itself (bpf/lib/fib.h) and the
  // receiving node's hands it from the underlay device straight to its pod (bpf/underlay.c): neither
  // stack forwards any of the 6 packets.
  t.same(fwd, [0, 0], `forwarded by the stacks of n1, n2: ${fwd}`);
  t.equal(await probe(a.ns, b.ip4, 8080, 5000), 'ok', 'TCP n1 -> n2');
  const frames = await cap.stop();
  const direct = frames.map((f) => frameInfo(f.frame)).filter((i) => i && i.src === a.ip4 && i.dst === b.ip4);
  t.ok(direct.length >= 3, `${direct.length} packets with pod addresses straight on the underlay`);
  t.notOk(
    frames.some((f) => {
      const i = frameInfo(f.frame);
      return i?.proto === 17 && i.dport === 8472;
    }),
    'and no VXLAN',
  );

  servers.push(await startEchoServer(a.ns, 8090, '::'), await startEchoServer(n2.netns, 8091, '0.0.0.0'));
  t.equal(await probe(n2.netns, a.ip4, 8090, 5000), 'ok', 'node n2 -> the pod on n1');
  t.equal(await probe(a.ns, n2.ip, 8091, 5000), 'ok', "the pod on n1 -> node n2's address");
});

t.test(
  "native routing: policy across nodes with the sender's identity from the ipcache; remote-node for the other node",
  async (t) => {
    const [n1, n2] = c.nodes;
    const web = await n2.pod({ app: 'web' });
    const client = await n1.pod({ app: 'client' });
    const other = await n1.pod({ app: 'other' });
    servers.push(await startEchoServer(web.ns, 8080, '::'));
    await eventually('pods known', () => known(web) && known(client) && known(other), 20_000);
    await new PolicyClient(n1.client).import(webFromClient('web-from-client', 8080));
    await untilDropped('enforced on n2', other.ns, web.ip4, 8080);
    t.equal(await probe(client.ns, web.ip4, 8080, 5000), 'ok', 'client (n1) -> web (n2) allowed');
    t.equal(await probe(other.ns, web.ip4, 8080), 'timeout', 'other (n1) -> web (n2) dropped');
    const [drop] = await flowsUntil(
      'n2 reports it',
      n2.observerSocket,
      (f) => f.verdict === 'DROPPED' && f.IP?.source === other.ip4,
    );
    t.equal(drop.source?.identity, other.endpoint.identity, "n2 names other's identity (its ipcache knows n1's pods)");

    const rn = await n1.pod({ app: 'web-rn' });
    servers.push(await startEchoServer(rn.ns, 8081, '::'));
    await new PolicyClient(n1.client).import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rn}
spec:
  endpointSelector: {matchLabels: {app: web-rn}}
  ingress:
  - fromEntities: [remote-node]
`);
    await untilDropped('enforced', web.ns, rn.ip4, 8081);
    t.equal(await probe(n2.netns, rn.ip4, 8081, 5000), 'ok', 'node n2 -> pod on n1: remote-node');
    t.equal(await probe(web.ns, rn.ip4, 8081), 'timeout', 'a pod on n2 is not');
  },
);

t.test('native routing: --uninstall --purge removes the routes and the underlay program, nothing else', async (t) => {
  // The admin's own filter and route on the same device: purge must leave them.
  const { n3, ingress } = await thirdNodeWithAdminState(t, '198.19.77.0/24');
  await n3.agent.stop();
  t.match(ingress(), /from_underlay/, 'the stopped agent leaves the receive path in place (pods keep working)');

  const purge = purgeNode(c, n3, { routingMode: 'native' });
  t.equal(purge.status, 0, `purge exits 0: ${purge.stderr}`);
  t.match(purge.stdout, /purged from_underlay on eth0 ingress/, `it says what it removed: ${purge.stdout}`);
  t.equal(clusterRoutes(n3), '', "no route of ours to the other nodes' pods is left");
  t.notMatch(ingress(), /from_underlay/, 'from_underlay is off the underlay device');
  t.match(ingress(), /pref 7 bpf .*bytecode/, "the admin's filter (classic BPF, priority 7) stays");
  t.match(inNode(n3, 'ip', ['-4', 'route', 'show', '198.19.77.0/24']).stdout, /dev eth0/, "the admin's route stays");
  t.match(inNode(n3, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']).stdout, n3.ip, 'the underlay device keeps its address');
  t.notOk(fs.existsSync(n3.bpffsDir), 'the pins are gone');
});

t.test('native routing: the agent restarted in single-node mode removes the routing it left, nothing else', async (t) => {
  const { n3, ingress } = await thirdNodeWithAdminState(t, '198.19.78.0/24');
  const podCidr = (await n3.client.status()).cluster!.podCidrs.ipv4!;
  await n3.agent.stop();
  t.match(ingress(), /from_underlay/, 'the stopped agent leaves the receive path in place');

  // The state dir keeps the default network the cluster gave it: the same pool, as a user would give.
  const single = await startSingleNode(n3, ['--pool', podCidr]);
  t.teardown(() => single.stop());
  t.equal(clusterRoutes(n3), '', "no route of ours to the other nodes' pods is left");
  t.notMatch(ingress(), /from_underlay/, 'from_underlay is off the underlay device');
  t.match(fs.readFileSync(single.logFile, 'utf8'), /removed the routing an earlier cluster-mode agent left/, 'the log says so');
  t.match(ingress(), /pref 7 bpf .*bytecode/, "the admin's filter stays");
  t.match(inNode(n3, 'ip', ['-4', 'route', 'show', '198.19.78.0/24']).stdout, /dev eth0/, "the admin's route stays");
  t.equal((await n3.client.status()).cluster, undefined, 'the agent runs in single-node mode');
});

/** A third node once its routes to n1 and n2 and from_underlay on eth0 are in place, with the admin's
 *  own classic-BPF filter (priority 7) and route (`adminRoute`) on the same device. */
async function thirdNodeWithAdminState(t: Test, adminRoute: string) {
  const n3 = await c.addNode();
  t.teardown(() => (c.nodes.includes(n3) ? c.removeNode(n3) : undefined));
  const ingress = () => tcFilters('eth0', 'ingress', n3.netns.path);
  await eventually(
    'n3 routes to n1 and n2, from_underlay on eth0',
    () => clusterRoutes(n3).split('\n').length === 2 && /from_underlay/.test(ingress()),
    30_000,
  );
  const foreign = ['filter', 'add', 'dev', 'eth0', 'ingress', 'prio', '7', 'bpf', 'bytecode', '1,6 0 0 0,'];
  // Membrane's tcx links need no qdisc: the admin brings the clsact their filter sits on.
  t.equal(inNode(n3, 'tc', ['qdisc', 'add', 'dev', 'eth0', 'clsact']).status, 0, "the admin's clsact qdisc");
  t.equal(inNode(n3, 'tc', foreign).status, 0, 'a foreign filter');
  t.equal(inNode(n3, 'ip', ['route', 'add', adminRoute, 'dev', 'eth0', 'proto', 'static']).status, 0, 'a foreign route');
  return { n3, ingress };
}
