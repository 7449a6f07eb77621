// A remote pod relabeled out of a policy through the VXLAN overlay (2-node harness): the receiving node
// admitted its connection by the identity the tunnel carried (the VNI, never the inner source), and
// that recorded identity is stale once the pod's labels change. The established connection must be cut
// like a local pod's or a native-routed one's (README: "those it denies are cut within a second"),
// also while another pod keeps the old identity alive (a replica: the policy's entries for it stay).
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { readIpcache, webFromClient } from './lib/cluster-maps.ts';
import { startFlow } from './lib/tcp.ts';
import { handshake, probe } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, known, serve } = clusterForFile(t, { nodes: 2 });

t.test('a remote pod relabeled out of the policy loses its established tunnel connection', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web' });
  const client = await n1.pod({ app: 'client' });
  const twin = await n1.pod({ app: 'client' }); // the same labels: the identity outlives the relabel
  await serve(web, 8080);
  await eventually('pods known on the other node', () => known(web) && known(client) && known(twin), 20_000);
  await new PolicyClient(n2.client).import(webFromClient('web-from-client', 8080));
  await eventually('client allowed', async () => (await probe(client.ns, web.ip4, 8080)) === 'ok', 20_000, 200);
  const flow = startFlow(client.ns, web.ip4, 8080);
  t.teardown(() => flow.stop());
  await eventually('the connection echoes', () => flow.echoed() > 2000, 20_000, 100);

  const relabeled = await n1.client.request<Endpoint>(
    'PUT',
    `/v1/endpoints/${encodeURIComponent(client.endpoint.containerId)}/eth0/labels`,
    { labels: { app: 'quarantined' } },
  );
  t.not(relabeled.identity, client.endpoint.identity, `a new identity (${client.endpoint.identity} -> ${relabeled.identity})`);
  await eventually(
    'n2 knows the new identity',
    () => readIpcache(n2.bpffsDir).get(`${client.ip4}/32`) === relabeled.identity,
    20_000,
  );
  t.equal(await handshake(client.ns, web.ip4, 8080, 2000), 'timeout', 'a new connection of the relabeled pod is denied');
  t.equal(await probe(twin.ns, web.ip4, 8080, 5000), 'ok', 'the twin with the old labels still connects');
  await new Promise((r) => setTimeout(r, 1000)); // "cut within a second"
  const cut = flow.echoed();
  await new Promise((r) => setTimeout(r, 3000));
  t.equal(flow.echoed(), cut, `the established connection is cut (echoed ${cut} bytes before, the flow sends 5,000 a second)`);
});
