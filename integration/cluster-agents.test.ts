// Three agents on three simulated nodes sharing one real etcd: identities agree across nodes, an
// endpoint created on one node is in the others' BPF ipcache with its identity, a policy imported on
// node 1 is enforced in node 3's policy map, deletes propagate and leave no trace. Maps are read
// with bpftool, not through the agents.
import t from 'tap';
import { startCluster, eventually, tail, type TestCluster } from './lib/cluster.ts';
import { readIpcache, readPolicy, webFromClient } from './lib/cluster-maps.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { REPO } from './lib/agent.ts';

/** The `membrane` CLI against a node's agent socket. */
const cli = (socket: string, ...args: string[]) =>
  execFileSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), '--socket', socket, ...args], {
    encoding: 'utf8',
    cwd: REPO,
  });

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

let c: TestCluster;
t.before(async () => {
  c = await startCluster({ nodes: 3 });
});
t.teardown(() => c?.cleanup());

const POLICY = (name: string) => webFromClient(name, 80);

t.test('every node registered with its own pod CIDR, and `node list` shows them all', async (t) => {
  const [n1] = c.nodes;
  await eventually(
    "three nodes in node 1's list",
    async () => (await n1.client.request<{ items: unknown[] }>('GET', '/v1/cluster/nodes')).items.length === 3,
  );
  const { items } = await n1.client.request<{
    items: { name: string; addresses: { ip: string }[]; podCidrs: { ipv4?: string } }[];
  }>('GET', '/v1/cluster/nodes');
  t.same(
    items.map((n) => n.name),
    ['n1', 'n2', 'n3'],
  );
  t.same(
    items.map((n) => n.addresses[0].ip),
    c.nodes.map((n) => n.ip),
    'underlay addresses',
  );
  const cidrs = items.map((n) => n.podCidrs.ipv4);
  t.equal(new Set(cidrs).size, 3, `three different pod CIDRs: ${cidrs.join(' ')}`);
  for (const node of c.nodes) {
    const nets = await node.client.listNetworks();
    const def = nets.find((n) => n.name === 'default')!;
    t.equal(
      def.subnets[0].cidr,
      items.find((n) => n.name === node.name)!.podCidrs.ipv4,
      `${node.name}'s default network uses its pod CIDR`,
    );
  }
  const list = cli(c.nodes[1].socket, 'node', 'list');
  for (const n of items)
    t.match(
      list,
      new RegExp(`^${n.name}.*${n.addresses[0].ip.replace(/\./g, '\\.')}.*${n.podCidrs.ipv4!.replace(/\./g, '\\.')}`, 'm'),
      `membrane node list shows ${n.name}`,
    );
  t.match(list, /^n2 \(this node\)/m, 'and marks the node asked');
  const status = cli(c.nodes[0].socket, 'status');
  t.match(status, new RegExp(`Cluster:?\\s+${c.name} \\(node n1`), 'membrane status names the cluster and node');
  t.match(
    status,
    /KVStore:?\s+etcd http:\/\/\S+: connected, etcd 3\.4\.\d+, revision \d+/,
    `membrane status shows the kvstore:\n${status}`,
  );
});

t.test('the same labels get the same identity on every node; other labels another one', async (t) => {
  const [n1, n2, n3] = c.nodes;
  const [a1, a3, b2] = await Promise.all([
    n1.pod({ app: 'db', tier: 'x' }),
    n3.pod({ app: 'db', tier: 'x' }),
    n2.pod({ app: 'cache' }),
  ]);
  t.equal(a1.endpoint.identity, a3.endpoint.identity, `app=db on n1 and n3: ${a1.endpoint.identity}`);
  t.not(a1.endpoint.identity, b2.endpoint.identity, 'app=cache differs');
  t.ok(a1.endpoint.identity >= 256, 'a label identity');
  // Node 2 never had an app=db pod, yet its identity list names it (a cluster identity).
  const ms = await eventually('n2 knows app=db', async () =>
    (await new PolicyClient(n2.client).identities()).some((i) => i.id === a1.endpoint.identity && i.labels['api:app'] === 'db'),
  );
  t.ok(ms >= 0, 'node 2 lists the identity node 1 allocated, with its labels');
});

t.test(
  "an endpoint created on node 1 is in node 3's BPF ipcache with its identity; deleted on node 2, it leaves no trace",
  async (t) => {
    const [n1, n2, n3] = c.nodes;
    const p = await n1.pod({ app: 'probe' });
    const ms = await eventually(
      'node 3 ipcache entry',
      () => readIpcache(n3.bpffsDir).get(`${p.ip4}/32`) === p.endpoint.identity,
    );
    t.equal(
      readIpcache(n3.bpffsDir).get(`${p.ip4}/32`),
      p.endpoint.identity,
      `node 3 classifies ${p.ip4} as identity ${p.endpoint.identity} (${ms} ms after the create returned)`,
    );
    // Waited for as well: node 2's agent takes the store's event on its own, node 3 having it says
    // nothing about node 2 (a loaded machine runs one agent later than the other).
    await eventually('node 2 ipcache entry', () => readIpcache(n2.bpffsDir).get(`${p.ip4}/32`) === p.endpoint.identity).catch(
      () => undefined,
    );
    t.equal(readIpcache(n2.bpffsDir).get(`${p.ip4}/32`), p.endpoint.identity, 'node 2 too');
    const q = await n2.pod({ app: 'probe2' });
    await eventually('q known on n1 and n3', () =>
      [n1, n3].every((n) => readIpcache(n.bpffsDir).get(`${q.ip4}/32`) === q.endpoint.identity),
    );
    await n2.deletePod(q);
    await eventually('q gone from n1 and n3 ipcache', () => [n1, n3].every((n) => !readIpcache(n.bpffsDir).has(`${q.ip4}/32`)));
    t.notOk(
      readIpcache(n1.bpffsDir).has(`${q.ip4}/32`) || readIpcache(n3.bpffsDir).has(`${q.ip4}/32`),
      "deleted on node 2: gone from node 1 and node 3's ipcache",
    );
    t.equal(await c.kv.get(c.L.ipcacheEntry(q.ip4)), undefined, 'and from the store');
    t.equal(readIpcache(n2.bpffsDir).has(`${q.ip4}/32`), false, 'and from its own node');
  },
);

t.test("a policy imported on node 1 is enforced in node 3's maps, and its delete too", async (t) => {
  const [n1, , n3] = c.nodes;
  const web = await n3.pod({ app: 'web' });
  const client = await n1.pod({ app: 'client' });
  const pc3 = new PolicyClient(n3.client);
  await eventually('client known on n3', () => readIpcache(n3.bpffsDir).get(`${client.ip4}/32`) === client.endpoint.identity);
  const before = await pc3.endpoint(web.endpoint.containerId, 'eth0');
  t.equal(before.enforcement.ingress, 'allow-all', 'no policy yet');
  const t0 = Date.now();
  const res = await new PolicyClient(n1.client).import(POLICY('web-from-client'));
  t.equal(res.changes[0].change, 'created');
  const allowsClient = () =>
    readPolicy(n3.bpffsDir).some(
      (e) =>
        e.endpointId === web.endpoint.id &&
        e.peer === client.endpoint.identity &&
        e.direction === 'ingress' &&
        e.dport === 80 &&
        e.action === 'allow',
    );
  await eventually('n3 policy map allows client -> web:80', allowsClient);
  t.ok(
    allowsClient(),
    `node 3's policy map allows client (identity ${client.endpoint.identity}) to web:80, ${Date.now() - t0} ms after the import on node 1`,
  );
  const after = await pc3.endpoint(web.endpoint.containerId, 'eth0');
  t.equal(after.enforcement.ingress, 'default-deny', 'web on node 3 is now default-deny on ingress');
  t.same(
    after.policies.map((p) => p.name),
    ['web-from-client'],
    'selected by the imported policy',
  );
  const list3 = await pc3.list();
  t.equal(list3.items.map((p) => p.name).join(), 'web-from-client', 'node 3 lists the policy');
  await new PolicyClient(c.nodes[1].client).delete(['web-from-client']);
  await eventually(
    'n3 no longer enforcing',
    async () => (await pc3.endpoint(web.endpoint.containerId, 'eth0')).enforcement.ingress === 'allow-all',
  );
  t.notOk(allowsClient(), "deleted on node 2: the entry is gone from node 3's map");
});

t.test('concurrent imports on two nodes both land, with distinct policy numbers', async (t) => {
  const [n1, n2, n3] = c.nodes;
  const results = await Promise.all([
    new PolicyClient(n1.client).import(POLICY('race-a')),
    new PolicyClient(n2.client).import(POLICY('race-b')),
  ]);
  t.same(
    results.map((r) => r.changes[0].change),
    ['created', 'created'],
  );
  await eventually('n3 has both', async () => (await new PolicyClient(n3.client).list()).items.length === 2);
  const recs = await Promise.all(['race-a', 'race-b'].map((n) => new PolicyClient(n3.client).get(n)));
  t.not(recs[0].number, recs[1].number, 'different policy numbers (rule ids stay unambiguous cluster-wide)');
  await new PolicyClient(n3.client).delete('all');
});

t.test('a restarted agent keeps classifying remote endpoints throughout (no gap in its BPF ipcache)', async (t) => {
  const [n1, , n3] = c.nodes;
  const p = await n1.pod({ app: 'steady' });
  await eventually('known on n3', () => readIpcache(n3.bpffsDir).get(`${p.ip4}/32`) === p.endpoint.identity);
  let samples = 0,
    missing = 0;
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      if (readIpcache(n3.bpffsDir).get(`${p.ip4}/32`) !== p.endpoint.identity) missing++;
      samples++;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await n3.agent.stop();
  await n3.agent.start();
  await new Promise((r) => setTimeout(r, 500));
  watching = false;
  await watcher;
  t.ok(samples > 20, `sampled node 3's ipcache ${samples} times across the restart`);
  t.equal(missing, 0, 'the remote endpoint was never missing or wrong');
  const st = (await n3.client.status()).cluster!;
  t.ok(st.kvstore.connected && st.remoteEndpoints >= 1, 'the restarted agent is back in the cluster');
});

t.test("a 10,000-rule policy (2.7 MB of JSON, stored gzipped) imported on node 1 is enforced in node 3's maps", async (t) => {
  const [n1, , n3] = c.nodes;
  const web = await n3.pod({ app: 'web-big' });
  // The CIDRs come from the half of 198.18.0.0/15 the underlay is not in. A CIDR naming a node's
  // address selects nothing (README: the ipcache holds host or remote-node for it, as in Cilium), and
  // the underlay is a random /24 of 198.18.0.0/15: one in 198.18.0-39 put the three node addresses
  // among the rules, and node 3 held 9,996 entries (1 run in ~13: check-60 had 198.18.5.0/24).
  const base = c.nodes[0].ip.startsWith('198.18.') ? '198.19' : '198.18';
  const ingress: object[] = Array.from({ length: 9_999 }, (_, i) => ({
    fromCIDR: [`${base}.${i >> 8}.${i & 255}/32`],
    toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }],
  }));
  ingress.push({ fromEndpoints: [{ matchLabels: { app: 'client-big' } }] });
  const doc = JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'big' },
    spec: { endpointSelector: { matchLabels: { app: 'web-big' } }, ingress },
  });
  const res = await new PolicyClient(n1.client).import(doc);
  t.equal(res.changes[0].change, 'created', 'the import is accepted by the cluster store');
  const stored = await c.kv.get(c.L.policyRecord('big'));
  t.ok(
    stored?.value.startsWith('gz:') && stored.value.length < 1024 * 1024,
    `stored gzipped: ${Math.round((stored?.value.length ?? 0) / 1024)} KiB`,
  );
  const entries = () =>
    readPolicy(n3.bpffsDir).filter((e) => e.endpointId === web.endpoint.id && e.direction === 'ingress' && e.dport === 443)
      .length;
  // A shortfall is asserted with what node 3 shows, not thrown as a bare timeout: the rules' addresses
  // it gives no peer of web-big's entries, its status, policies and log name why.
  await eventually('node 3 holds the 9,999 CIDR entries', () => entries() >= 9_999, 60_000, 500).catch(() => undefined);
  const held = entries();
  t.ok(held >= 9_999, `node 3's policy map holds ${held} port-443 entries for web-big`);
  if (held < 9_999) {
    const peers = new Set(
      readPolicy(n3.bpffsDir)
        .filter((e) => e.endpointId === web.endpoint.id && e.direction === 'ingress' && e.dport === 443)
        .map((e) => e.peer),
    );
    const ipcache = readIpcache(n3.bpffsDir);
    const unmatched = ingress
      .flatMap((r) => (r as { fromCIDR?: string[] }).fromCIDR ?? [])
      .filter((cidr) => !peers.has(ipcache.get(cidr) ?? -1));
    t.comment(
      `${unmatched.length} rule addresses are no peer of web-big's port-443 entries (=their identity in node 3's ipcache): ${unmatched
        .slice(0, 10)
        .map((cidr) => `${cidr}=${ipcache.get(cidr)}`)
        .join(' ')}`,
    );
    const status = await n3.client.status().catch((e: Error) => e.message);
    t.comment(`node 3's status: ${JSON.stringify(status)}`);
    // Which step stopped: the store's policy set, node 3's copy of it (its watch), web-big's selection.
    const meta = await c.kv.get(c.L.policyMeta).catch((e: Error) => e.message);
    t.comment(`the store's policy meta: ${JSON.stringify(meta)}`);
    const pc3 = new PolicyClient(n3.client);
    const list3 = await pc3.list().then(
      (l) => ({ revision: l.revision, items: l.items.map((p) => `${p.name}@${p.revision}`) }),
      (e: Error) => e.message,
    );
    t.comment(`node 3's policies: ${JSON.stringify(list3)}`);
    const view = await pc3.endpoint(web.endpoint.containerId, 'eth0').then(
      (v) => ({
        identity: v.identity,
        labels: v.labels,
        init: v.init,
        entries: v.entries,
        policies: v.policies.map((p) => p.name),
      }),
      (e: Error) => e.message,
    );
    t.comment(`node 3's view of web-big (identity ${web.endpoint.identity}): ${JSON.stringify(view)}`);
    t.comment(`node 3's agent log (last 60 lines):\n${tail(path.join(n3.stateDir, 'agent.log'), 60)}`);
  }
  await new PolicyClient(n1.client).delete(['big']);
  await eventually('gone again on node 3', () => entries() === 0, 60_000, 500);
});
