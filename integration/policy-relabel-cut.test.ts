// A pod relabeled out of a policy on one node (the single-node agent): its established connections are
// cut like any flow a policy change denies (README: "those it denies are cut within a second"), also
// while a twin keeps its old identity alive. The overlay's case is cluster-overlay-relabel.test.ts.
import t from 'tap';
import { castOf } from './lib/attack-pods.ts';
import { startEchoServer, startFlow, killAll, tcpRequest } from './lib/tcp.ts';
import { waitFor } from './lib/attack-pods.ts';
import { createNetns } from './lib/netns.ts';
import { randomId } from './lib/agent.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['web', 'client']);
const WEB_FROM_CLIENT = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-client}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`;

t.test('a local pod relabeled out of the policy loses its established connection', async (t) => {
  const { web, client } = cast.pods;
  t.teardown(() => cast.pc.delete('all'));
  // A twin with client's labels: the identity outlives the relabel (the policy's entries for it stay).
  const twinNs = createNetns('mba');
  t.teardown(() => twinNs.remove());
  const twin = await cast.agent.client.createEndpoint({
    containerId: `atk-twin-${randomId()}`,
    netns: twinNs.path,
    ifName: 'eth0',
    labels: { app: 'client' },
  });
  t.equal(twin.identity, client.ep.identity, "the twin shares client's identity");
  const server = await startEchoServer(web.ns, 8080, '0.0.0.0');
  t.teardown(() => killAll([server]));
  await cast.pc.import(WEB_FROM_CLIENT);
  t.equal(await tcpRequest(client.ns, web.ip4, 8080), 'ping', 'client -> web allowed');
  const flow = startFlow(client.ns, web.ip4, 8080);
  t.teardown(() => flow.stop());
  await waitFor('the connection echoes', async () => (flow.echoed() > 2000 ? true : undefined), 20_000);
  const relabeled = await cast.agent.client.request<Endpoint>(
    'PUT',
    `/v1/endpoints/${encodeURIComponent(client.ep.containerId)}/eth0/labels`,
    { labels: { app: 'quarantined' } },
  );
  t.not(relabeled.identity, client.ep.identity, 'a new identity');
  await new Promise((r) => setTimeout(r, 1000));
  const cut = flow.echoed();
  await new Promise((r) => setTimeout(r, 3000));
  t.equal(flow.echoed(), cut, `the established connection is cut (${cut} bytes echoed before)`);
  t.match(await tcpRequest(client.ns, web.ip4, 8080), /timeout|error/, 'and a new one is denied');
  t.equal(await tcpRequest(twinNs, web.ip4, 8080), 'ping', 'while the twin still connects');
});
