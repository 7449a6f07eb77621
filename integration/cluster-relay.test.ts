// The flow relay on the 3-node harness (lib/relay-cluster.ts): it finds the nodes in etcd and reaches
// their observers (n1 and n2 over TCP with mutual TLS, n3 over its unix socket); through the relay
// (its unix socket, or TCP with mutual TLS from the same CA), `membrane observe --server` shows the
// flows of every node with their names, each cross-node connection once per node that observed it,
// in time order, each drop once, by the node that dropped it. Following and nodes that die or leave:
// cluster-relay-follow.test.ts.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { eventually } from './lib/cluster.ts';
import { webFromClient } from './lib/cluster-maps.ts';
import { startEchoServer } from './lib/tcp.ts';
import { handshake, probe } from './lib/probe.ts';
import { REPO } from './lib/agent.ts';
import { cli, isSyn, RELAY_PORT, relayClusterForFile } from './lib/relay-cluster.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Flow, GetFlowsResponse } from '../shared/src/flows/types.ts';
import { timeNs } from '../shared/src/relay/merge.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const { c, relaySocket, certs, servers, known, relayClient } = relayClusterForFile(t);

t.test('the relay finds every node in etcd and reaches each: two over mutual TLS, one over its unix socket', async (t) => {
  await eventually(
    'three nodes connected',
    async () => {
      const r = relayClient();
      try {
        return (await r.status()).numConnectedNodes?.value === 3;
      } finally {
        r.close();
      }
    },
    30_000,
    250,
  );
  const r = relayClient();
  try {
    const nodes = await r.nodes();
    t.same(
      nodes.map((n) => [n.name, n.state]),
      [
        ['n1', 'NODE_CONNECTED'],
        ['n2', 'NODE_CONNECTED'],
        ['n3', 'NODE_CONNECTED'],
      ],
    );
    t.match(
      nodes[0],
      { address: `${c.nodes[0].ip}:4244`, tls: { enabled: true, serverName: `n1.${c.name}.observer.membrane` } },
      'n1 over TCP with TLS',
    );
    t.match(nodes[2].address, /^unix:\/\/.*observer\.sock$/, 'n3 over its unix socket');
  } finally {
    r.close();
  }
  const status = cli('observe', 'status', '--server', relaySocket);
  t.match(status, /Connected Nodes: 3\/3/, `membrane observe status --server shows the relay's view:\n${status}`);

  // Over TCP with mutual TLS (the relay in the control-plane netns, the CLI there too): the client
  // certificate from scripts/cluster-certs.sh is admitted; no certificate, or no TLS, is refused.
  const address = `${c.subnet.replace(/\.0\/24$/, '.2')}:${RELAY_PORT}`;
  const inControl = (...args: string[]) =>
    spawnSync(
      'nsenter',
      [
        `--net=${c.control.path}`,
        process.execPath,
        '--import',
        'tsx',
        path.join(REPO, 'shared/src/cli/main.ts'),
        'observe',
        'status',
        '--server',
        address,
        ...args,
      ],
      { encoding: 'utf8', cwd: REPO, env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } },
    );
  const ca = ['--tls-ca-cert-files', path.join(certs, 'ca.pem'), '--tls-server-name', `relay.${c.name}.observer.membrane`];
  const mtls = inControl(
    ...ca,
    '--tls-client-cert-file',
    path.join(certs, 'client.pem'),
    '--tls-client-key-file',
    path.join(certs, 'client.key'),
  );
  t.equal(mtls.status, 0, `membrane observe --server ${address} --tls-*: ${mtls.stderr}`);
  t.match(mtls.stdout, /Connected Nodes: 3\/3/, 'the relay over TCP with mutual TLS');
  const noCert = inControl(...ca);
  t.equal(noCert.status, 1, 'without a client certificate: exit 1');
  t.match(noCert.stderr, /cannot reach the flow observer/, `and a reason: ${noCert.stderr.trim()}`);
  const plain = inControl();
  t.equal(plain.status, 1, 'without TLS: exit 1');
  const half = inControl('--tls-client-cert-file', path.join(certs, 'client.pem'));
  t.match(
    half,
    { status: 1, stderr: /--tls-client-cert-file and --tls-client-key-file go together/ },
    'a client certificate without its key: a clear error',
  );
});

t.test('a cross-node connection: once per observing node, with node names, in time order', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web' });
  const client = await n1.pod({ app: 'client' });
  servers.push(await startEchoServer(web.ns, 8080, '::'));
  await eventually('pods known', () => known(web) && known(client), 20_000);
  t.equal(await probe(client.ns, web.ip4, 8080, 5000), 'ok', 'client (n1) connects to web (n2)');
  const match = (f: Flow) => f.IP?.source === client.ip4 && f.IP?.destination === web.ip4 && f.l4?.TCP?.destinationPort === 8080;
  let flows: GetFlowsResponse[] = [];
  await eventually(
    "both nodes' flows through the relay",
    async () => {
      const r = relayClient();
      try {
        flows = (await r.collect({ number: 10_000 })).filter((x) => x.flow && match(x.flow));
      } finally {
        r.close();
      }
      return flows.some((x) => x.flow!.nodeName === 'n1') && flows.some((x) => x.flow!.nodeName === 'n2');
    },
    15_000,
    250,
  );
  const syns = flows.filter((x) => isSyn(x.flow!));
  t.same(
    syns.map((x) => [x.flow!.nodeName, x.flow!.trafficDirection]).sort(),
    [
      ['n1', 'EGRESS'],
      ['n2', 'INGRESS'],
    ],
    "the connection's SYN appears once from n1 (leaving) and once from n2 (arriving), nothing twice",
  );
  const times = (
    await (async () => {
      const r = relayClient();
      try {
        return await r.collect({ number: 10_000 });
      } finally {
        r.close();
      }
    })()
  ).map((x) => timeNs(x.time));
  t.ok(
    times.every((v, i) => i === 0 || v >= times[i - 1]),
    `${times.length} flows of all nodes, oldest first`,
  );
  const last = await (async () => {
    const r = relayClient();
    try {
      return await r.collect({ number: 3 });
    } finally {
      r.close();
    }
  })();
  t.equal(last.filter((x) => x.flow).length, 3, '--last 3 over the relay: three flows of the whole cluster');

  const out = cli('observe', '--server', relaySocket, '--print-node-name', '--ip', web.ip4, '--port', '8080', '--last', '100');
  t.match(out, new RegExp(`\\[n1\\].*${client.ip4.replace(/\./g, '\\.')}`), `membrane observe --server names n1:\n${out}`);
  t.match(out, new RegExp(`\\[n2\\].*${client.ip4.replace(/\./g, '\\.')}`), 'and n2');

  // Drops on either node, each reported once, by the node that dropped it: web's ingress policy on n2
  // drops a pod of n3; an egress deny on n1 drops a pod of n1 before the tunnel.
  const other = await n1.pod({ app: 'other' });
  const stranger = await c.nodes[2].pod({ app: 'stranger' });
  await eventually('pods known', () => known(other) && known(stranger), 20_000);
  const policies = new PolicyClient(n1.client);
  await policies.import(webFromClient('web-from-client', 8080));
  await policies.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-not-web}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: web}}]
`);
  await eventually(
    'enforced on n1 and n2',
    async () =>
      (await handshake(stranger.ns, web.ip4, 8080)) === 'timeout' && (await handshake(other.ns, web.ip4, 8080)) === 'timeout',
    30_000,
    200,
  );
  t.equal(await probe(client.ns, web.ip4, 8080, 5000), 'ok', 'client (n1) -> web (n2) still allowed');
  const esc = (ip: string) => ip.replace(/\./g, '\\.');
  const dropLines = (from: string) =>
    cli(
      'observe',
      '--server',
      relaySocket,
      '--verdict',
      'DROPPED',
      '--print-node-name',
      '--from-ip',
      from,
      '--to-ip',
      web.ip4,
      '--last',
      '1000',
    )
      .split('\n')
      .filter(Boolean);
  const strangerDrops = dropLines(stranger.ip4);
  t.ok(
    strangerDrops.length > 0 && strangerDrops.every((l) => new RegExp(`\\[n2\\]: ${esc(stranger.ip4)}:\\d+ .*DROPPED`).test(l)),
    `the pod of n3 -> web: dropped by n2 and named so, by n2 alone:\n${strangerDrops.join('\n')}`,
  );
  const otherDrops = dropLines(other.ip4);
  t.ok(
    otherDrops.length > 0 && otherDrops.every((l) => new RegExp(`\\[n1\\]: ${esc(other.ip4)}:\\d+ .*DROPPED`).test(l)),
    `other (n1) -> web: dropped by n1 on the way out and named so, by n1 alone:\n${otherDrops.join('\n')}`,
  );
  await policies.delete(['web-from-client', 'other-not-web']);
});
