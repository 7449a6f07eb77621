// The flow relay on the 3-node harness: membrane-relay runs on the underlay (the control-plane netns),
// finds the nodes in etcd and reaches their observers: n1 and n2 over TCP with mutual TLS from a
// cluster CA made by scripts/cluster-certs.sh, n3 over its unix socket (the harness's way). Through the
// relay (its unix socket, or TCP with mutual TLS from the same CA), `membrane observe --server` shows
// the flows of every node with their names, each cross-node connection once per node that observed
// it, in time order, each drop once, by the node that dropped it; a node that dies is reported
// (NODE_UNAVAILABLE, then NODE_CONNECTED when it is back), never fatal; a node removed from the
// cluster is reported (NODE_GONE) and no longer asked.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startCluster, eventually, RELAY_MAIN, type Proc, type TestCluster, type TestPod } from './lib/cluster.ts';
import { readIpcache, webFromClient } from './lib/cluster-maps.ts';
import { startEchoServer, killAll } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { REPO, randomId } from './lib/agent.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Flow, GetFlowsResponse } from '../shared/src/flows/types.ts';
import { timeNs } from '../shared/src/relay/merge.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const certs = fs.mkdtempSync(path.join(os.tmpdir(), `mbr-certs-${randomId(2)}-`));
const CERTS = path.join(REPO, 'scripts/cluster-certs.sh');
const RELAY_PORT = 4245; // in the control-plane netns, ours alone
let c: TestCluster;
let relay: Proc;
let relaySocket: string;
const servers: ChildProcess[] = [];

t.before(async () => {
  c = await startCluster({
    nodes: 3,
    // A killed agent's node stays in the cluster (unavailable, not gone) while the tests look at it.
    leaseTtl: 20,
    agentArgs: ({ name, ip, cluster }) => {
      if (name === 'n3') return []; // its observer only on its unix socket
      execFileSync('bash', [CERTS, certs, cluster, `${name}=${ip}`], { stdio: 'ignore' });
      return [
        '--observer-address',
        '0.0.0.0:4244',
        '--observer-tls-cert-file',
        path.join(certs, `${name}.pem`),
        '--observer-tls-key-file',
        path.join(certs, `${name}.key`),
        '--observer-tls-client-ca-files',
        path.join(certs, 'ca.pem'),
      ];
    },
  });
  relaySocket = path.join(certs, 'relay.sock');
  relay = c.spawnControl(
    [
      RELAY_MAIN,
      '--cluster-name',
      c.name,
      '--kvstore-endpoints',
      c.etcd.clientUrl,
      '--listen-socket',
      relaySocket,
      '--tls-ca-file',
      path.join(certs, 'ca.pem'),
      '--tls-client-cert-file',
      path.join(certs, 'relay.pem'),
      '--tls-client-key-file',
      path.join(certs, 'relay.key'),
      '--listen-address',
      `0.0.0.0:${RELAY_PORT}`,
      '--tls-server-cert-file',
      path.join(certs, 'relay.pem'),
      '--tls-server-key-file',
      path.join(certs, 'relay.key'),
      '--tls-server-client-ca-file',
      path.join(certs, 'ca.pem'),
      '--log-level',
      'debug',
    ],
    'relay.log',
  );
  await relay.start();
  await eventually(
    'the relay serves',
    async () => {
      const o = new ObserverClient(relaySocket);
      try {
        return (await o.healthCheck(1000)) === 'SERVING';
      } finally {
        o.close();
      }
    },
    60_000,
    250,
  );
});
t.teardown(async () => {
  killAll(servers);
  await relay?.stop();
  await c?.cleanup();
  fs.rmSync(certs, { recursive: true, force: true });
});

/** The `membrane` CLI against the relay. */
const cli = (...args: string[]) =>
  execFileSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), ...args], {
    encoding: 'utf8',
    cwd: REPO,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: '' },
  });
const known = (pod: TestPod) =>
  c.nodes.filter((n) => n !== pod.node).every((n) => readIpcache(n.bpffsDir).get(`${pod.ip4}/32`) === pod.endpoint.identity);
const relayClient = () => new ObserverClient(relaySocket);
const isSyn = (f: Flow) => !!f.l4?.TCP?.flags?.SYN && !f.l4.TCP.flags.ACK;

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
  t.equal(await probe(client.ns, web.ip4, 8080, 3000), 'ok', 'client (n1) connects to web (n2)');
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
    async () => (await probe(stranger.ns, web.ip4, 8080)) === 'timeout' && (await probe(other.ns, web.ip4, 8080)) === 'timeout',
    30_000,
    200,
  );
  t.equal(await probe(client.ns, web.ip4, 8080, 3000), 'ok', 'client (n1) -> web (n2) still allowed');
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

t.test(
  'follow through the relay: flows of every node as they happen; a node that dies is reported, the others go on',
  async (t) => {
    const [n1, n2, n3] = c.nodes;
    const a = await n3.pod({ app: 'a' });
    const b = await n1.pod({ app: 'b' });
    const d = await n2.pod({ app: 'd' });
    servers.push(await startEchoServer(b.ns, 8081, '::'));
    await eventually('pods known', () => known(a) && known(b) && known(d), 20_000);
    const r = relayClient();
    const seen: GetFlowsResponse[] = [];
    const stream = r.flows({ follow: true });
    const reading = (async () => {
      try {
        for await (const x of stream.responses) seen.push(x);
      } catch {
        /* cancelled */
      }
    })();
    try {
      const fromTo = (src: TestPod, node: string) => (x: GetFlowsResponse) =>
        x.flow?.IP?.source === src.ip4 && x.flow.nodeName === node && x.flow.l4?.TCP?.destinationPort === 8081;
      t.equal(await probe(a.ns, b.ip4, 8081, 3000), 'ok', 'a (n3) -> b (n1)');
      await eventually('n3 and n1 flows followed', () => seen.some(fromTo(a, 'n3')) && seen.some(fromTo(a, 'n1')), 15_000, 100);
      t.ok(
        seen.some(fromTo(a, 'n3')) && seen.some(fromTo(a, 'n1')),
        'the follow shows n3 (over its unix socket) and n1 (over TLS)',
      );

      await n3.agent.kill9();
      const status = (state: string) => () =>
        seen.some((x) => x.nodeStatus?.stateChange === state && x.nodeStatus.nodeNames?.includes('n3'));
      await eventually('NODE_UNAVAILABLE for n3', status('NODE_UNAVAILABLE'), 20_000, 100).catch(() => undefined);
      t.ok(status('NODE_UNAVAILABLE')(), "n3's agent died: the follow says NODE_UNAVAILABLE n3");
      t.equal(await probe(d.ns, b.ip4, 8081, 3000), 'ok', 'd (n2) -> b (n1) meanwhile');
      await eventually('n2 flows still followed', () => seen.some(fromTo(d, 'n2')) && seen.some(fromTo(d, 'n1')), 15_000, 100);
      t.ok(seen.some(fromTo(d, 'n2')), "and the same stream goes on with the other nodes' flows");
      const once = relayClient();
      try {
        const res = await once.collect({ number: 5 });
        t.match(
          res[0]?.nodeStatus,
          { stateChange: 'NODE_UNAVAILABLE', nodeNames: ['n3'] },
          'a new request starts by naming the unavailable node',
        );
        t.ok(
          res.slice(1).every((x) => x.flow && x.flow.nodeName !== 'n3'),
          'then flows of the others',
        );
      } finally {
        once.close();
      }
      const out = cli('observe', '--server', relaySocket, '--last', '5', '--print-node-name');
      t.match(
        out.split('\n')[0],
        /NODE_UNAVAILABLE n3$/,
        `membrane observe --server starts by naming the unavailable node:\n${out}`,
      );

      await n3.agent.start();
      await eventually('NODE_CONNECTED for n3', status('NODE_CONNECTED'), 30_000, 200).catch(() => undefined);
      t.ok(status('NODE_CONNECTED')(), 'n3 is back: NODE_CONNECTED n3');
      const before = seen.length;
      t.equal(await probe(a.ns, b.ip4, 8081, 3000), 'ok', 'a (n3) -> b (n1) again');
      await eventually('n3 flows again', () => seen.slice(before).some(fromTo(a, 'n3')), 15_000, 100);
      t.ok(seen.slice(before).some(fromTo(a, 'n3')), 'and its flows come through the same follow again');
      const followTimes = seen.filter((x) => x.flow).map((x) => timeNs(x.time));
      const outOfOrder = followTimes.filter((v, i) => i > 0 && v < followTimes[i - 1]).length;
      t.equal(outOfOrder, 0, `${followTimes.length} followed flows, in time order`);
    } finally {
      stream.cancel();
      await reading;
      r.close();
    }
  },
);

t.test('a node removed from the cluster: the relay says NODE_GONE, stops asking it and serves the others', async (t) => {
  const [n1, n2, n3] = c.nodes;
  const b = await n1.pod({ app: 'b-gone' });
  const d = await n2.pod({ app: 'd-gone' });
  servers.push(await startEchoServer(b.ns, 8082, '::'));
  await eventually('pods known', () => known(b) && known(d), 20_000);
  const r = relayClient();
  const seen: GetFlowsResponse[] = [];
  const stream = r.flows({ follow: true });
  const reading = (async () => {
    try {
      for await (const x of stream.responses) seen.push(x);
    } catch {
      /* cancelled */
    }
  })();
  const gone = () => seen.filter((x) => x.nodeStatus?.stateChange === 'NODE_GONE' && x.nodeStatus.nodeNames?.includes('n3'));
  try {
    // The agent stops and its node leaves etcd when its lease lapses (20 s here).
    await c.removeNode(n3);
    await eventually('NODE_GONE for n3', () => gone().length > 0, 60_000, 200).catch(() => undefined);
    t.ok(gone().length > 0, 'the follow says NODE_GONE n3 once its node record is gone');
    const after = seen.length;
    t.equal(await probe(d.ns, b.ip4, 8082, 3000), 'ok', 'd (n2) -> b (n1)');
    const fromD = (node: string) =>
      seen
        .slice(after)
        .some((x) => x.flow?.IP?.source === d.ip4 && x.flow.nodeName === node && x.flow.l4?.TCP?.destinationPort === 8082);
    await eventually('n1 and n2 flows followed', () => fromD('n1') && fromD('n2'), 15_000, 100).catch(() => undefined);
    t.ok(fromD('n1') && fromD('n2'), "and the same follow goes on with n1's and n2's flows");
  } finally {
    stream.cancel();
    await reading;
    r.close();
  }
  const q = relayClient();
  try {
    t.same(
      (await q.nodes()).map((n) => [n.name, n.state]),
      [
        ['n1', 'NODE_CONNECTED'],
        ['n2', 'NODE_CONNECTED'],
      ],
      'the relay lists the two nodes left',
    );
    const res = await q.collect({ number: 5 });
    t.same(
      res.filter((x) => x.nodeStatus).map((x) => x.nodeStatus),
      [],
      'a new request names no missing node: a node that left the cluster is not unavailable',
    );
  } finally {
    q.close();
  }
  const status = cli('observe', 'status', '--server', relaySocket);
  t.match(status, /Connected Nodes: 2\/2/, `membrane observe status --server counts the nodes left:\n${status}`);
});
