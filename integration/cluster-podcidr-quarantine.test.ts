// A gone node's pod CIDR handed to a new node while another node still maps its addresses. Native
// routing classifies a packet from another node by its source address's ipcache entry alone. Here n2
// is slow to learn (its agent is stopped: its pinned ipcache keeps n1's pods), n1 dies (kill -9, lease
// expires, the operator removes it) and n3 joins a pool with no other free block. If n3 got n1's block
// at once, a pod on n3 given a gone trusted pod's address would pass n2's policy as that pod (its SYN
// reaches the web pod on n2). The operator quarantines the block (no ipcache entry in it left in the
// store, then --pod-cidr-quarantine): n3 gets it only after that, and by then n2 has forgotten n1's
// pods, so the taker's SYN is dropped.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually, type TestNode, type TestPod } from './lib/cluster.ts';
import { readIpcache } from './lib/cluster-maps.ts';
import { handshake, probe } from './lib/probe.ts';
import { sleep } from './lib/agent.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { decode, type PodCidrAllocation } from '../shared/src/kvstore/layout.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const GRACE_S = 8;
// Two /24 blocks: once n1 and n2 have theirs, a third node can only get a gone node's block. (The
// harness names a new node after the highest index left: n1 must be the one that goes for it to be n3.)
const pool = `10.${crypto.randomInt(64, 192)}.${2 * crypto.randomInt(0, 128)}.0/23`;
const { c, known, serve } = clusterForFile(t, {
  nodes: 2,
  agentArgs: ['--routing-mode', 'native'],
  // n2's lease outlives the seconds its agent is stopped; n1 leaves quickly once killed. Not under
  // 8 s: with a 4 s lease the suite's load once let n1's lease lapse while it was alive (its block
  // freed and quarantined mid-test).
  leaseTtl: (n) => (n === 'n2' ? 60 : 8),
  clusterPool: pool,
  nodeMaskSize: 24,
  operatorArgs: ['--pod-cidr-quarantine', `${GRACE_S}s`],
});
const PORT = 8089;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-pq}
spec:
  endpointSelector: {matchLabels: {app: web-pq}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted-pq}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`;

/** Connections from `src` the web pod's kernel has half-open (its SYN was let in). */
async function synRecvFrom(web: TestPod, src: string): Promise<number> {
  const out = await web.ns.exec('ss', ['-Htn', 'state', 'syn-recv']);
  return out.split('\n').filter((l) => l.includes(`${src}:`)).length;
}

async function allocation(name: string): Promise<PodCidrAllocation | undefined> {
  const it = await c.kv.get(c.L.podCidrNode(name));
  return it && decode<PodCidrAllocation>(it.value);
}

t.test("native routing: a gone node's pod CIDR is quarantined before another node gets it", async (t) => {
  const [gone, slow] = c.nodes;
  const web = await slow.pod({ app: 'web-pq' });
  const trusted = await gone.pod({ app: 'trusted-pq' });
  const evil = await gone.pod({ app: 'evil-pq' }); // its label set has a cluster identity from now on
  await serve(web, PORT);
  await eventually('pods known', () => known(web) && known(trusted) && known(evil), 20_000);
  await new PolicyClient(slow.client).import(POLICY);
  await eventually(
    'enforced',
    async () => (await handshake(evil.ns, web.ip4, PORT)) === 'timeout' && (await probe(trusted.ns, web.ip4, PORT)) === 'ok',
    20_000,
    200,
  );
  const mine = await allocation('n1');
  if (!mine?.ipv4) throw new Error(`n1 has no pod CIDR allocation in the store before the attack: ${JSON.stringify(mine)}`);
  const block = mine.ipv4;
  const addr = trusted.ip4;

  const pid = slow.agent.pid()!;
  process.kill(pid, 'SIGSTOP');
  let n3: TestNode | undefined;
  let adding: Promise<TestNode> | undefined;
  let removedAt = 0;
  try {
    await c.removeNode(gone, { kill9: true });
    await eventually('the operator removed n1 (lease 8 s)', async () => !(await allocation('n1')), 30_000, 100);
    removedAt = Date.now();
    t.equal((await c.kv.get(c.L.podCidrQuarantine(block)))?.value, 'n1', `n1's block ${block} is quarantined`);
    t.equal(
      readIpcache(slow.bpffsDir).get(`${addr}/32`),
      trusted.endpoint.identity,
      "n2 still maps the gone pod's address to it",
    );

    adding = c.addNode();
    await eventually('n3 registered', async () => !!(await c.kv.get(c.L.node('n3'))), 30_000, 100);
    await sleep(Math.max(0, removedAt + (GRACE_S * 1000) / 2 - Date.now()));
    // Under load the read can come after the grace has legitimately ended: what decides is when the
    // operator allocated, not when the test looked.
    const got = await allocation('n3');
    const early = got && Date.parse(got.allocatedAt) - removedAt < GRACE_S * 1000 - 500 ? got : undefined;
    if (early?.ipv4 === block) {
      // The hole: n3 holds the gone node's block while n2 still maps its addresses.
      n3 = await adding;
      const taker = await n3.pod({ app: 'evil-pq' }, undefined, { ips: [addr] });
      t.equal(
        await handshake(taker.ns, web.ip4, PORT, 3000),
        'timeout',
        'the taker is not admitted to web as the gone trusted pod',
      );
      t.equal(await synRecvFrom(web, addr), 0, 'nothing half-open on web from the address');
    }
    t.equal(
      early,
      undefined,
      `n3 gets no pod CIDR in the grace after n1 was removed (looked ${Math.round((Date.now() - removedAt) / 1000)} s after)`,
    );
  } finally {
    process.kill(pid, 'SIGCONT');
  }

  await eventually('n2 forgets the gone pod', () => !readIpcache(slow.bpffsDir).has(`${addr}/32`), 30_000, 100);
  n3 ??= await adding!;
  const a3 = await allocation('n3');
  t.equal(a3?.ipv4, block, 'n3 gets the block once the quarantine is over');
  const after = Date.parse(a3!.allocatedAt) - removedAt;
  t.ok(
    after >= GRACE_S * 1000 - 500,
    `${after} ms after n1 was removed (its entries left the store with its lease; grace ${GRACE_S} s)`,
  );
  t.equal(await c.kv.get(c.L.podCidrQuarantine(block)), undefined, 'and the quarantine key is gone');
  // n3 waited for a block for seconds (the operator reconciles at least once a second meanwhile).
  const exhausted = fs
    .readFileSync(c.operators[0].logFile, 'utf8')
    .split('\n')
    .filter((l) => l.includes('pool exhausted') && l.includes('"node":"n3"'));
  t.ok(exhausted.length <= 1, `the operator says once that n3 waits for a block, not every tick (${exhausted.length})`);
  const taker = await n3.pod({ app: 'evil-pq' }, undefined, { ips: [addr] });
  await eventually('n2 knows the taker', () => readIpcache(slow.bpffsDir).get(`${addr}/32`) === evil.endpoint.identity, 20_000);
  t.equal(await handshake(taker.ns, web.ip4, PORT, 3000), 'timeout', "the taker's SYN gets its own identity: dropped");
  t.equal(await synRecvFrom(web, addr), 0, 'nothing half-open on web from the address');
  await new PolicyClient(slow.client).delete(['web-pq']);
});
