// A deleted pod's address taken by a new pod before the other nodes learn it (the address-takeover
// window). Native routing has no identity on the wire: the receiving node classifies a remote packet
// by its source address's ipcache entry, so while it still maps the address to the deleted pod's
// identity, a pod holding that address speaks as the deleted pod. Here n2 cannot learn of the delete
// (etcd is down, so n1's withdrawal waits), n1 deletes a trusted pod and a pod with other labels asks
// for its address: the address must not be handed out until the cluster store has taken the
// withdrawal and the other nodes had time to see it (cluster mode's release quarantine), and once it
// is, the new pod's packets get its own identity on n2 (dropped by web's policy).
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually, type TestPod } from './lib/cluster.ts';
import { readIpcache } from './lib/cluster-maps.ts';
import { handshake, probe } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { AgentApiError } from '../shared/src/api/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, enforce, known } = clusterForFile(t, { nodes: 2, agentArgs: ['--routing-mode', 'native'] });
const PORT = 8087;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ru}
spec:
  endpointSelector: {matchLabels: {app: web-ru}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted-ru}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`;

t.test('native routing: a released address is not handed out again before the other nodes forget it', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-ru' });
  const trusted = await n1.pod({ app: 'trusted-ru' });
  const evil = await n1.pod({ app: 'evil-ru' }); // its label set has a cluster identity from now on
  await enforce({ policy: POLICY, web, port: PORT, admitted: trusted, denied: evil, pods: [web, trusted, evil] });

  await c.etcd.kill9();
  const addr = trusted.ip4;
  await n1.deletePod(trusted);
  t.equal(readIpcache(n2.bpffsDir).get(`${addr}/32`), trusted.endpoint.identity, "n2 still maps the deleted pod's address to it");

  // The takeover: a pod with evil's labels asks for the trusted pod's address while n2 cannot know.
  let taker: TestPod | undefined;
  const refused = await n1.pod({ app: 'evil-ru' }, undefined, { ips: [addr] }).then(
    (p) => {
      taker = p;
      return undefined;
    },
    (e: unknown) => e,
  );
  if (taker) {
    // Without the quarantine: the packets of the pod now holding the address pass n2 as trusted's.
    t.equal(await handshake(taker.ns, web.ip4, PORT, 3000), 'timeout', 'the taker is not admitted as the deleted trusted pod');
    await n1.deletePod(taker);
  }
  t.ok(refused instanceof AgentApiError, 'the address is not handed out while its withdrawal is not in the store');
  t.equal((refused as AgentApiError).code, 'address_in_use', 'address_in_use (CNI code 11: try again later)');
  t.match((refused as Error).message, /withdraw|other nodes/, `the message says why: ${(refused as Error).message}`);
  const other = await n1.pod({ app: 'evil-ru' });
  t.not(other.ip4, addr, 'a pod asking for no address gets another one meanwhile');

  await c.etcd.start();
  await eventually('n2 forgets the deleted pod', () => !readIpcache(n2.bpffsDir).has(`${addr}/32`), 30_000, 100);
  const t0 = Date.now();
  await eventually(
    'the address is handed out again',
    async () => {
      taker = await n1.pod({ app: 'evil-ru' }, undefined, { ips: [addr] }).catch(() => undefined);
      return taker !== undefined;
    },
    30_000,
    500,
  );
  t.ok(taker, `handed out again once the store took the withdrawal (${Date.now() - t0} ms after n2 forgot it)`);
  await eventually('n2 knows the taker', () => known(taker!), 20_000);
  t.equal(readIpcache(n2.bpffsDir).get(`${addr}/32`), evil.endpoint.identity, "n2 maps the address to the taker's identity");
  t.equal(await handshake(taker!.ns, web.ip4, PORT, 3000), 'timeout', "the taker's packets get its own identity: dropped");
  t.equal(await probe(evil.ns, web.ip4, PORT, 2000), 'timeout', 'evil still dropped');
  await new PolicyClient(n1.client).delete(['web-ru']);
});
