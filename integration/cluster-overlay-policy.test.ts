// Policy across nodes through the VXLAN overlay, on the 3-node harness (see cluster-overlay.test.ts):
// labels (allowed, default deny), an egress deny, entities (remote-node, host), CIDR rules; a drop is
// reported by the node that dropped, naming the sender's identity.
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import crypto from 'node:crypto';
import { eventually } from './lib/cluster.ts';
import { untilDropped, webFromClient } from './lib/cluster-maps.ts';
import { startEchoServer } from './lib/tcp.ts';
import { handshake, probe } from './lib/probe.ts';
import { flowsOf, flowsUntil, tcpDport } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Flow } from '../shared/src/flows/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, servers, known, serve } = clusterForFile(t, {
  nodes: 3,
  clusterPoolIpv6: `fd00:${crypto.randomInt(1, 0xffff).toString(16)}::/104`,
});

const importPolicy = (text: string) => new PolicyClient(c.nodes[2].client).import(text);

t.test(
  "policy across nodes: the receiving node enforces with the sender's identity; each node reports its own drops",
  async (t) => {
    const [n1, n2] = c.nodes;
    const web = await n2.pod({ app: 'web' });
    const client = await n1.pod({ app: 'client' });
    const other = await n1.pod({ app: 'other' });
    await serve(web, 8080);
    await eventually('pods known everywhere', () => known(web) && known(client) && known(other), 20_000);
    await importPolicy(webFromClient('web-from-client', 8080));
    await eventually(
      'enforced on n2',
      async () => (await handshake(other.ns, web.ip4, 8080)) === 'timeout' && (await probe(client.ns, web.ip4, 8080)) === 'ok',
      20_000,
      200,
    );
    t.equal(await probe(client.ns, web.ip4, 8080, 5000), 'ok', 'client (n1) -> web (n2): allowed by labels');
    t.equal(await probe(client.ns, web.ip6, 8080, 5000), 'ok', 'and over IPv6');
    t.equal(await probe(other.ns, web.ip4, 8080), 'timeout', 'other (n1) -> web (n2): default deny');
    const drops = await eventually(
      'n2 reports the drop',
      async () =>
        (
          await flowsOf(
            n2.observerSocket,
            (f) => f.verdict === 'DROPPED' && f.IP?.source === other.ip4 && f.IP?.destination === web.ip4,
          )
        ).length > 0,
      10_000,
      200,
    );
    const [drop] = await flowsOf(
      n2.observerSocket,
      (f) => f.verdict === 'DROPPED' && f.IP?.source === other.ip4 && f.IP?.destination === web.ip4,
    );
    t.equal(
      drop.source?.identity,
      other.endpoint.identity,
      `n2's DROPPED flow names other's identity ${other.endpoint.identity} (${drops} ms)`,
    );
    t.equal(drop.dropReasonDesc, 'POLICY_DENIED');
    t.equal(drop.nodeName, 'n2');
    t.equal(drop.trafficDirection, 'INGRESS');
    const allowed = await flowsOf(
      n2.observerSocket,
      (f) => f.verdict !== 'DROPPED' && f.IP?.source === client.ip4 && f.IP?.destination === web.ip4,
    );
    t.ok(
      allowed.some(
        (f) => f.source?.identity === client.endpoint.identity && f.ingressAllowedBy?.some((p) => p.name === 'web-from-client'),
      ),
      "n2 reports client's connection as allowed by web-from-client, with client's identity",
    );
    const sent = await flowsOf(
      n1.observerSocket,
      (f) => f.IP?.source === client.ip4 && f.IP?.destination === web.ip4 && f.trafficDirection === 'EGRESS',
    );
    t.ok(
      sent.length > 0 && sent.every((f) => f.destination?.identity === web.endpoint.identity),
      "n1 reports the same connection leaving, towards web's identity",
    );

    // Replies through conntrack on both ends: the client's ingress is closed too, yet its connections'
    // replies come back (its node admits them as replies of the client's own flow), while a new
    // connection from web's side is dropped there.
    servers.push(await startEchoServer(client.ns, 8085, '::'));
    await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-closed}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
`);
    await untilDropped('client closed on n1', web.ns, client.ip4, 8085);
    t.equal(
      await probe(client.ns, web.ip4, 8080, 5000),
      'ok',
      'client (default-deny ingress) -> web: the replies pass conntrack on both nodes',
    );
    t.equal(await probe(web.ns, client.ip4, 8085), 'timeout', "web -> client: a new flow, dropped by client's node");
    await new PolicyClient(n1.client).delete(['client-closed']);

    // An egress deny: dropped on the sending node, before the tunnel.
    await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-not-web}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`);
    await untilDropped('client denied on n1', client.ns, web.ip4, 8080);
    const egressDrop = (f: Flow) =>
      f.verdict === 'DROPPED' &&
      f.IP?.source === client.ip4 &&
      f.trafficDirection === 'EGRESS' &&
      f.dropReasonDesc === 'POLICY_DENY';
    await flowsUntil('n1 reports the egress drop', n1.observerSocket, egressDrop);
    t.ok(
      (await flowsOf(n1.observerSocket, egressDrop)).every((f) => f.nodeName === 'n1'),
      "the sender's node drops what its egress policy denies, and says so (POLICY_DENY, egress, on n1)",
    );
    await new PolicyClient(n1.client).delete(['client-not-web', 'web-from-client']);
  },
);

t.test("entities across nodes: remote-node is another node, never this node's host", async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n1.pod({ app: 'web-rn' });
  const peer = await n2.pod({ app: 'peer-rn' });
  await serve(web, 8081);
  await eventually('pods known', () => known(web) && known(peer), 20_000);
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rn}
spec:
  endpointSelector: {matchLabels: {app: web-rn}}
  ingress:
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "8081", protocol: TCP}]}]
`);
  await untilDropped('enforced', peer.ns, web.ip4, 8081);
  t.equal(await probe(n2.netns, web.ip4, 8081, 5000), 'ok', 'node n2 -> pod on n1: allowed as remote-node');
  t.equal(
    await probe(n1.netns, web.ip4, 8081, 5000),
    'ok',
    'node n1 (its own host) -> its pod: the host may always reach its endpoints',
  );
  t.equal(await probe(peer.ns, web.ip4, 8081), 'timeout', 'a pod on n2 is not remote-node: dropped');
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rn}
spec:
  endpointSelector: {matchLabels: {app: web-rn}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
`);
  await untilDropped('remote-node no longer allowed', n2.netns, web.ip4, 8081);
  t.equal(await probe(n2.netns, web.ip4, 8081), 'timeout', 'without the rule node n2 is dropped (remote-node is no host)');
  t.equal(await probe(n1.netns, web.ip4, 8081, 5000), 'ok', 'node n1 still reaches its own pod');
  const [rn] = await flowsOf(
    n1.observerSocket,
    (f) => f.verdict === 'DROPPED' && f.IP?.destination === web.ip4 && tcpDport(f) === 8081 && f.IP?.source !== peer.ip4,
  );
  t.equal(rn?.source?.identity, 6, `n1's drop of node n2's connection (from ${rn?.IP?.source}) names remote-node (6)`);

  // Egress to another node's address: remote-node, not world.
  const prober = await n1.pod({ app: 'to-nodes' });
  servers.push(await startEchoServer(n2.netns, 8092, '0.0.0.0'));
  const world = c.addExternal();
  servers.push(await startEchoServer(world.ns, 8092, '0.0.0.0'));
  await world.ns.exec('ip', ['route', 'add', (await n1.client.status()).cluster!.podCidrs.ipv4!, 'via', n1.ip]); // no SNAT: the world routes back
  t.equal(await probe(prober.ns, world.ip, 8092, 5000), 'ok', 'before any policy the pod reaches the world netns');
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-nodes}
spec:
  endpointSelector: {matchLabels: {app: to-nodes}}
  egress:
  - toEntities: [remote-node]
`);
  await untilDropped('egress enforced', prober.ns, world.ip, 8092);
  t.equal(await probe(prober.ns, n2.ip, 8092, 5000), 'ok', 'toEntities remote-node: the pod reaches node n2');
  t.equal(await probe(prober.ns, world.ip, 8092), 'timeout', 'and not the world');
  await new PolicyClient(n1.client).delete(['web-rn', 'to-nodes']);
});

t.test('CIDR rules across nodes: a world address by CIDR, pods by identity', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-cidr' });
  const client = await n1.pod({ app: 'client-cidr' });
  await serve(web, 8082);
  const w1 = c.addExternal();
  const w2 = c.addExternal();
  const podCidr2 = (await n2.client.status()).cluster!.podCidrs.ipv4!;
  const podCidr1 = (await n1.client.status()).cluster!.podCidrs.ipv4!;
  // The world reaches n2's pods through n2 (an upstream router would hold this route).
  for (const w of [w1, w2]) await w.ns.exec('ip', ['route', 'add', podCidr2, 'via', n2.ip]);
  await eventually('client known on n2', () => known(client), 20_000);
  await importPolicy(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-cidr}
spec:
  endpointSelector: {matchLabels: {app: web-cidr}}
  ingress:
  - fromCIDR: ["${w1.ip}/32", "${podCidr1}"]
    toPorts: [{ports: [{port: "8082", protocol: TCP}]}]
`);
  await untilDropped('enforced', w2.ns, web.ip4, 8082);
  t.equal(await probe(w1.ns, web.ip4, 8082, 5000), 'ok', `the world address ${w1.ip} is allowed by fromCIDR`);
  t.equal(await probe(w2.ns, web.ip4, 8082), 'timeout', `${w2.ip} is not`);
  t.equal(
    await probe(client.ns, web.ip4, 8082),
    'timeout',
    `a pod on n1 inside the named ${podCidr1} is no CIDR peer: pods are selected by identity (as on one node)`,
  );
  await new PolicyClient(n1.client).delete(['web-cidr']);
});
