// An agent frozen longer than its lease (SIGSTOP here; a blocked event loop or a cut-off node in
// life): its node record expires, the operator releases the node and quarantines its pod CIDR. When
// the agent runs again it writes its record anew, and it must get its own block back: its pods and the
// default network in its state dir are in that block. Before the record asked for it, the operator
// handed the returning node the next free block, the agent went on with the old one, and its next
// start failed ("network default already exists with subnets ..."): seen once in a loaded suite run
// after a 5 s start had outlived a 5 s lease.
import { randomBytes } from 'node:crypto';
import { Etcd3 } from 'etcd3';
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually } from './lib/cluster.ts';
import { probe } from './lib/probe.ts';
import { decode, type PodCidrAllocation } from '../shared/src/kvstore/layout.ts';
import { cidrContains, parseCidr } from '../shared/src/net/index.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

// n1 leaves quickly when frozen; n2 outlives anything the file does.
const { c, known, serve } = clusterForFile(t, { nodes: 2, leaseTtl: (n) => (n === 'n1' ? 4 : 60) });
const PORT = 8091;

async function allocation(name: string): Promise<PodCidrAllocation | undefined> {
  const it = await c.kv.get(c.L.podCidrNode(name));
  return it && decode<PodCidrAllocation>(it.value);
}

t.test('an agent frozen past its lease gets its own pod CIDR back and starts again after kill -9', async (t) => {
  const [n1, n2] = c.nodes;
  const before = await allocation('n1');
  t.ok(before?.ipv4, `n1 holds ${before?.ipv4}`);
  const web = await n2.pod({ app: 'web-ll' });
  await serve(web, PORT);

  const pid = n1.agent.pid()!;
  process.kill(pid, 'SIGSTOP');
  let whileFrozen: PodCidrAllocation | undefined;
  try {
    await eventually('the operator released n1 (lease 4 s)', async () => !(await allocation('n1')), 30_000, 100);
    whileFrozen = await allocation('n1'); // still frozen: nothing can have registered it again
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  t.equal(whileFrozen, undefined, 'n1 was released while its agent was frozen');

  await eventually('n1 registered again', async () => !!(await allocation('n1')), 30_000, 100);
  t.equal((await allocation('n1'))?.ipv4, before!.ipv4, 'the returning node gets its own block back');

  await n1.agent.kill9();
  await n1.agent.start();
  t.ok(n1.agent.running(), 'n1 starts again after kill -9 (its state dir and the store agree on the block)');
  t.equal((await allocation('n1'))?.ipv4, before!.ipv4, 'and keeps the block');

  const client = await n1.pod({ app: 'client-ll' });
  t.ok(cidrContains(parseCidr(before!.ipv4!), client.ip4), `a new pod on n1 gets ${client.ip4}, in ${before!.ipv4}`);
  await eventually('the new pod is known on n2', () => known(client), 20_000);
  t.equal(await probe(client.ns, web.ip4, PORT), 'ok', 'and reaches a pod on n2');
});

// A lease can be gone before the agent's keep-alive (every TTL/3) notices: expired while a loaded node's
// keep-alives were late, or revoked. A pod created then needs a new identity, written under the node's
// lease: the store answered "requested lease not found", and the ADD failed with it (seen in loaded
// runs with 5 s leases). Now the agent takes a new lease at once and allocates under it.
t.test('a pod created right after its node lost its lease gets a new identity and comes up', async (t) => {
  const n2 = c.nodes[1];
  const before = await c.kv.get(c.L.node('n2'));
  t.ok(before && before.lease !== '0', `n2's record is under lease ${before?.lease}`);
  const etcd = new Etcd3({ hosts: c.kv.endpoints });
  try {
    await etcd.leaseClient.leaseRevoke({ ID: before!.lease });
  } finally {
    etcd.close();
  }
  t.equal(await c.kv.get(c.L.node('n2')), undefined, "the revoke took n2's record with it");

  const pod = await n2.pod({ app: `fresh-${randomBytes(3).toString('hex')}` }); // labels no identity has yet
  t.ok(pod.ip4, `the pod came up with ${pod.ip4}`);
  await eventually(
    'n2 wrote its record again under a new lease',
    async () => {
      const now = await c.kv.get(c.L.node('n2'));
      return !!now && now.lease !== before!.lease;
    },
    20_000,
    100,
  );
  const client = await c.nodes[0].pod({ app: 'client-ll2' });
  await eventually('the new pod is known on n1', () => known(pod), 20_000);
  const web = pod;
  await serve(web, PORT + 1);
  t.equal(await probe(client.ns, web.ip4, PORT + 1), 'ok', 'and a pod on n1 reaches it');
});
