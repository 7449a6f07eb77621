// --kvstore-max-stale (native routing, opt-in): a node cut off from the cluster store for longer than
// it stops trusting its last known view of the other nodes' endpoints. With real packets: before the
// bound a cross-node client the policy admits by its identity still connects; after it, the client's
// new connections are dropped (its address has no identity but world: fail closed) while the node's
// status says why; once the store answers, the ipcache is listed again and the client connects.
// Without the flag the entries are kept (cluster-native-cutoff.test.ts).
import fs from 'node:fs';
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { readIpcache } from './lib/cluster-maps.ts';
import { handshake, probe } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { briefLine, statusProblems } from '../shared/src/health/status.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const MAX_STALE_S = 4;
const { c, enforce } = clusterForFile(t, {
  nodes: 2,
  agentArgs: ['--routing-mode', 'native', '--kvstore-max-stale', String(MAX_STALE_S)],
});
const PORT = 8091;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-ms}
spec:
  endpointSelector: {matchLabels: {app: web-ms}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client-ms}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`;

t.test('native routing, --kvstore-max-stale: cut off too long, remote endpoints stop counting as who they were', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-ms' });
  const client = await n1.pod({ app: 'client-ms' });
  const other = await n1.pod({ app: 'other-ms' });
  await enforce({ policy: POLICY, web, port: PORT, admitted: client, denied: other, pods: [web, client, other] });
  const logBefore = fs.readFileSync(n2.agent.logFile, 'utf8').length;

  const t0 = Date.now();
  await c.etcd.kill9();
  t.equal(await probe(client.ns, web.ip4, PORT, 2000), 'ok', 'just cut off: client -> web still connects (last known kept)');
  await eventually('n2 withdraws the remote endpoints', () => !readIpcache(n2.bpffsDir).has(`${client.ip4}/32`), 30_000, 100);
  const after = Date.now() - t0;
  t.ok(after >= MAX_STALE_S * 1000, `n2's datapath forgot the client ${after} ms after etcd went (bound ${MAX_STALE_S} s)`);
  t.equal(await handshake(client.ns, web.ip4, PORT, 2000), 'timeout', 'client -> web: a new connection is dropped (world)');
  t.equal(await handshake(other.ns, web.ip4, PORT, 2000), 'timeout', 'other -> web still dropped');
  const line = briefLine(statusProblems(await n2.client.status()));
  t.match(line, /withdrawn from the datapath \(--kvstore-max-stale/, `n2: ${line}`);
  t.match(
    fs.readFileSync(n2.agent.logFile, 'utf8').slice(logBefore),
    /leave the datapath .*--kvstore-max-stale/,
    'a warn line says so',
  );

  await c.etcd.start();
  await eventually(
    'n2 knows the client again',
    () => readIpcache(n2.bpffsDir).get(`${client.ip4}/32`) === client.endpoint.identity,
    30_000,
    100,
  );
  await eventually(
    'client -> web connects again',
    async () => (await probe(client.ns, web.ip4, PORT, 2000)) === 'ok',
    20_000,
    200,
  );
  t.pass('after the store answered and the ipcache was listed again, client -> web connects');
  t.equal(await handshake(other.ns, web.ip4, PORT, 2000), 'timeout', 'other -> web still dropped');
  await eventually('n2 healthy again', async () => briefLine(statusProblems(await n2.client.status())) === 'OK', 30_000, 200);
  await new PolicyClient(n1.client).delete(['web-ms']);
});
