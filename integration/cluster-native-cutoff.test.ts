// A node cut off from the cluster store (native routing). It cannot see what changes elsewhere, so
// the other nodes' endpoints keep their last known identities (Cilium's agents do the same while the
// kvstore is unreachable): cross-node flows the policy allows keep going and the ones it denies stay
// denied, with real packets. What this file checks is that the state is not silent: a warn log line,
// `membrane status` degraded naming the last known entries, and the membrane_kvstore_* /
// membrane_cluster_ipcache_stale metrics, all back to normal once the store answers. (Changes made
// elsewhere during the outage are guarded where they are made: cluster-native-reuse*, -relabel,
// cluster-podcidr-quarantine.)
import fs from 'node:fs';
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually, type TestNode } from './lib/cluster.ts';
import { handshake, probe } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { parsePrometheusText, sampleValue } from '../shared/src/metrics/parse.ts';
import { briefLine, statusProblems } from '../shared/src/health/status.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, enforce } = clusterForFile(t, { nodes: 2, agentArgs: ['--routing-mode', 'native'] });
const PORT = 8090;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-co}
spec:
  endpointSelector: {matchLabels: {app: web-co}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client-co}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`;

/** The node's metrics page (served on its own loopback), as name -> value. */
async function metric(n: TestNode, name: string): Promise<number | undefined> {
  const address = (await n.client.status()).metrics.address;
  const text = await n.netns.exec('curl', ['-s', '--max-time', '5', `http://${address}/metrics`]);
  return sampleValue(parsePrometheusText(text), name);
}

async function brief(n: TestNode): Promise<string> {
  return briefLine(statusProblems(await n.client.status()));
}

t.test('native routing: cut off from the store, the last known remote identities are kept, and said so', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-co' });
  const client = await n1.pod({ app: 'client-co' });
  const other = await n1.pod({ app: 'other-co' });
  await enforce({ policy: POLICY, web, port: PORT, admitted: client, denied: other, pods: [web, client, other] });
  t.equal(await brief(n2), 'OK', 'n2 healthy while the store answers');
  t.equal(await metric(n2, 'membrane_kvstore_connected'), 1, 'membrane_kvstore_connected 1');
  t.equal(await metric(n2, 'membrane_cluster_ipcache_stale'), 0, 'membrane_cluster_ipcache_stale 0');
  const remote = (await metric(n2, 'membrane_cluster_remote_endpoints')) ?? 0;
  t.ok(remote >= 2, `membrane_cluster_remote_endpoints ${remote}`);
  const logBefore = fs.readFileSync(n2.agent.logFile, 'utf8').length;

  await c.etcd.kill9();
  await eventually('n2 sees the store gone', async () => (await metric(n2, 'membrane_kvstore_connected')) === 0, 30_000, 200);
  const line = await brief(n2);
  t.match(
    line,
    /^DEGRADED: .*KVStore: not connected .*remote endpoint addresses keep their last known identities/,
    `n2: ${line}`,
  );
  t.equal(await metric(n2, 'membrane_cluster_ipcache_stale'), 1, 'membrane_cluster_ipcache_stale 1');
  t.ok(((await metric(n2, 'membrane_kvstore_last_contact_seconds')) ?? 0) > 0, 'membrane_kvstore_last_contact_seconds grows');
  const log = fs.readFileSync(n2.agent.logFile, 'utf8').slice(logBefore);
  t.match(
    log,
    /cut off from the cluster store: the other nodes' endpoints keep their last known identities/,
    'one warn line says so',
  );

  // Last known, with real packets: allowed stays allowed, denied stays denied (not open, not cut).
  t.equal(await probe(client.ns, web.ip4, PORT, 5000), 'ok', 'cut off: client -> web (allowed) still connects');
  t.equal(await handshake(other.ns, web.ip4, PORT, 2000), 'timeout', 'cut off: other -> web (denied) still dropped');

  await c.etcd.start();
  await eventually('n2 healthy again', async () => (await brief(n2)) === 'OK', 30_000, 200);
  t.equal(await metric(n2, 'membrane_kvstore_connected'), 1, 'membrane_kvstore_connected back to 1');
  t.equal(await metric(n2, 'membrane_cluster_ipcache_stale'), 0, 'membrane_cluster_ipcache_stale back to 0');
  t.match(
    fs.readFileSync(n2.agent.logFile, 'utf8').slice(logBefore),
    /cluster store answers again/,
    'and a line when it answers again',
  );
  t.equal(await probe(client.ns, web.ip4, PORT, 5000), 'ok', 'client -> web connects');
  await new PolicyClient(n1.client).delete(['web-co']);
});
