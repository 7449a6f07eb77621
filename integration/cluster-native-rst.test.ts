// A blind spoofer on the underlay against a live cross-node connection (native routing): it knows the
// tuple (here it is told; a real one has to guess the client's port) but not the sequence numbers.
// Conntrack has no sequence window for RST and FIN, so its forged RSTs and FINs, claiming the client,
// close web's ingress entry on n1. What that may cost, fail closed: the connection's next packets meet
// web's policy again as a new flow (the client is admitted, so it goes on; nothing the policy denies
// gets through), and the endpoints' own TCP stacks ignore an out-of-window RST (RFC 5961). The
// connection must keep echoing (web's egress admits nobody: its echoes pass only as replies), and
// another pod, which web's policy denies, must stay denied.
import t from 'tap';
import crypto from 'node:crypto';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { handshake } from './lib/probe.ts';
import { sendFrames } from './lib/raw.ts';
import { startFlow } from './lib/tcp.ts';
import { flowsUntil } from './lib/vxlan.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { eth, ETH_P, ipv4, PROTO, tcp, TCP_FLAGS, withChecksum } from '../shared/src/bpf/packets.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, enforce } = clusterForFile(t, { nodes: 2, agentArgs: ['--routing-mode', 'native'] });
const PORT = 8088;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rst}
spec:
  endpointSelector: {matchLabels: {app: web-rst}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client-rst}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
  egress: [{toEndpoints: [{matchLabels: {app: nobody-rst}}]}]
`;

t.test('native routing: blind forged RSTs and FINs into a live connection close nothing the policy denies', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n1.pod({ app: 'web-rst' });
  const client = await n2.pod({ app: 'client-rst' });
  const other = await n2.pod({ app: 'other-rst' });
  await enforce({ policy: POLICY, web, port: PORT, admitted: client, denied: other, pods: [web, client, other] });

  const flow = startFlow(client.ns, web.ip4, PORT);
  try {
    await eventually('the flow echoes', () => flow.echoed() > 0, 30_000, 100); // the flow child is a node process started under nsenter: seconds on a loaded machine
    const ss = await client.ns.exec('ss', ['-Htn', 'state', 'established', 'dst', `${web.ip4}:${PORT}`]);
    const sport = Number(/:(\d+)\s+\S+:\d+\s*$/m.exec(ss)?.[1]);
    t.ok(sport > 0, `the connection's client port: ${sport}`);

    const w = c.addExternal();
    const n1Mac = JSON.parse(await n1.netns.exec('ip', ['-j', 'link', 'show', 'eth0']))[0].address as string;
    const frames = [];
    for (let i = 0; i < 20; i++) {
      const flags = i % 2 ? TCP_FLAGS.RST : TCP_FLAGS.FIN | TCP_FLAGS.ACK;
      const l4 = withChecksum(4, client.ip4, web.ip4, PROTO.TCP, tcp(sport, PORT, flags, crypto.randomInt(1, 2 ** 31)));
      frames.push(eth(n1Mac, '02:00:00:00:00:01', ETH_P.IPV4, ipv4({ src: client.ip4, dst: web.ip4, proto: PROTO.TCP }, l4)));
    }
    await sendFrames(w.ns, frames);
    const seen = await flowsUntil(
      'n1 reports the forged RSTs',
      n1.observerSocket,
      (f) => f.l4?.TCP?.sourcePort === sport && !!f.l4?.TCP?.flags?.RST,
    );
    t.ok(seen.length > 0, `the forged segments reached n1's datapath (${seen.length} RST flows, ${seen[0]?.verdict})`);

    const after = flow.echoed();
    await eventually(
      'the flow echoes after the forged RSTs and FINs',
      () => flow.echoed() > after + 1000 || flow.failed() !== null,
      10_000,
      100,
    );
    t.equal(flow.failed(), null, 'the connection was not broken');
    t.ok(flow.echoed() > after, `and still echoes (${after} -> ${flow.echoed()})`);
    t.equal(await handshake(other.ns, web.ip4, PORT, 1000), 'timeout', 'other is still denied');
  } finally {
    flow.stop();
  }
  await new PolicyClient(n1.client).delete(['web-rst']);
});
