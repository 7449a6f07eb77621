// A pod relabeled while the other nodes cannot learn its new identity (etcd down), native routing: the
// receiving node classifies its packets by the address's ipcache entry, which still names the old
// identity. A pod relabeled out of a policy (quarantined) must not keep reaching, as its old identity,
// pods on other nodes that admit only the old one.
//
// Its node holds the pod's egress (default deny, no allow entries) until the cluster store has taken
// its new ipcache record (cluster/mode.ts holdUntilPublished), then releases it. The overlay needs no
// hold: the VNI carries the identity per packet (cluster-overlay-relabel.test.ts).
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { readIpcache } from './lib/cluster-maps.ts';
import { handshake, probe } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, enforce, serve } = clusterForFile(t, { nodes: 2, agentArgs: ['--routing-mode', 'native'] });
const PORT = 8089;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rl}
spec:
  endpointSelector: {matchLabels: {app: web-rl}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted-rl}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`;

t.test('native routing: a pod relabeled during a store outage does not speak as its old identity', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-rl' });
  const pod = await n1.pod({ app: 'trusted-rl' });
  const jailed = await n1.pod({ app: 'quarantined-rl' }); // the label set has a cluster identity
  const local = await n1.pod({ app: 'local-rl' });
  await serve(local, PORT);
  await enforce({
    policy: POLICY,
    web,
    port: PORT,
    admitted: pod,
    denied: jailed,
    pods: [web, pod, jailed],
    also: async () => (await probe(pod.ns, local.ip4, PORT)) === 'ok',
  });

  await c.etcd.kill9();
  const relabeled = await n1.client.request<Endpoint>(
    'PUT',
    `/v1/endpoints/${encodeURIComponent(pod.endpoint.containerId)}/eth0/labels`,
    { labels: { app: 'quarantined-rl' } },
  );
  t.equal(relabeled.identity, jailed.endpoint.identity, 'relabeled to the quarantined identity');
  t.equal(readIpcache(n2.bpffsDir).get(`${pod.ip4}/32`), pod.endpoint.identity, 'n2 still maps the pod to its old identity');
  t.equal(await handshake(pod.ns, web.ip4, PORT, 2000), 'timeout', 'the relabeled pod cannot reach web as its old identity');
  t.equal(await handshake(pod.ns, local.ip4, PORT, 1000), 'timeout', 'its egress is held (a local pod too: default deny)');
  t.equal(await probe(local.ns, pod.ip4, PORT, 1000), 'refused', 'its ingress is not (nothing listens: refused, not dropped)');

  await c.etcd.start();
  await eventually(
    'n2 learns the new identity',
    () => readIpcache(n2.bpffsDir).get(`${pod.ip4}/32`) === jailed.endpoint.identity,
    30_000,
    100,
  );
  t.equal(await handshake(pod.ns, web.ip4, PORT, 2000), 'timeout', 'and after: denied as the new identity');
  await eventually('its egress is released', async () => (await probe(pod.ns, local.ip4, PORT, 1000)) === 'ok', 20_000, 200);
  t.pass('released once the store has its new identity: it reaches the local pod again');
  await new PolicyClient(n1.client).delete(['web-rl']);
});
