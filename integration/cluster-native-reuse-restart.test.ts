// The release quarantine across an agent crash (cluster-native-reuse.test.ts is the same attack
// without the crash). n2 is slow to learn (its agent is stopped: its pinned ipcache, which the
// datapath classifies native-routed packets by, keeps the deleted pod's address as that pod's
// identity), n1 deletes a trusted pod, the store takes the withdrawal, and n1's agent is killed -9
// inside the quarantine and started again. A pod with other labels asking for the address must be
// refused: the hold is on n1's disk, not only in the killed agent's memory. Once n2 forgot the
// address and the hold ended, the address is handed out and its packets get the taker's identity.
import t from 'tap';
import { clusterForFile } from './lib/cluster-file.ts';
import { eventually, type TestPod } from './lib/cluster.ts';
import { readIpcache } from './lib/cluster-maps.ts';
import { handshake } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { AgentApiError } from '../shared/src/api/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

// n2's lease outlives the seconds its agent is stopped (its pods stay in the store meanwhile).
const { c, enforce, known } = clusterForFile(t, {
  nodes: 2,
  agentArgs: ['--routing-mode', 'native'],
  leaseTtl: (n) => (n === 'n2' ? 60 : 5),
});
const PORT = 8088;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-rr}
spec:
  endpointSelector: {matchLabels: {app: web-rr}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: trusted-rr}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`;

t.test('native routing: a released address stays held through a kill -9 of the agent', async (t) => {
  const [n1, n2] = c.nodes;
  const web = await n2.pod({ app: 'web-rr' });
  const trusted = await n1.pod({ app: 'trusted-rr' });
  const evil = await n1.pod({ app: 'evil-rr' });
  await enforce({ policy: POLICY, web, port: PORT, admitted: trusted, denied: evil, pods: [web, trusted, evil] });

  const n2pid = n2.agent.pid()!;
  const addr = trusted.ip4;
  process.kill(n2pid, 'SIGSTOP');
  let taker: TestPod | undefined;
  try {
    await n1.deletePod(trusted);
    await eventually('the store took the withdrawal', async () => !(await c.kv.get(c.L.ipcacheEntry(addr))), 10_000, 20);
    await n1.agent.kill9();
    const t0 = Date.now();
    await n1.agent.start();
    t.comment(`n1's agent killed -9 and ready again in ${Date.now() - t0} ms`);
    t.equal(
      readIpcache(n2.bpffsDir).get(`${addr}/32`),
      trusted.endpoint.identity,
      'n2 still maps the address to the deleted pod',
    );

    const refused = await n1.pod({ app: 'evil-rr' }, undefined, { ips: [addr] }).then(
      (p) => {
        taker = p;
        return undefined;
      },
      (e: unknown) => e,
    );
    if (taker) {
      // The hole: the restarted agent forgot the hold, and n2 admits the taker as the trusted pod.
      t.equal(await handshake(taker.ns, web.ip4, PORT, 3000), 'timeout', 'the taker is not admitted as the deleted trusted pod');
      await n1.deletePod(taker);
      taker = undefined;
    }
    t.ok(refused instanceof AgentApiError, 'the restarted agent does not hand the address out');
    t.equal((refused as AgentApiError | undefined)?.code, 'address_in_use', 'address_in_use (CNI code 11: try again later)');
    t.match(
      (refused as Error | undefined)?.message,
      /other nodes/,
      `the message says why: ${(refused as Error | undefined)?.message}`,
    );
  } finally {
    process.kill(n2pid, 'SIGCONT');
  }

  await eventually('n2 forgets the deleted pod', () => !readIpcache(n2.bpffsDir).has(`${addr}/32`), 30_000, 100);
  const t1 = Date.now();
  await eventually(
    'the address is handed out again',
    async () => {
      taker = await n1.pod({ app: 'evil-rr' }, undefined, { ips: [addr] }).catch(() => undefined);
      return taker !== undefined;
    },
    30_000,
    500,
  );
  t.ok(taker, `handed out again once the hold ended (${Date.now() - t1} ms after n2 forgot the old pod)`);
  await eventually('n2 knows the taker', () => known(taker!), 20_000);
  t.equal(readIpcache(n2.bpffsDir).get(`${addr}/32`), evil.endpoint.identity, "n2 maps the address to the taker's identity");
  t.equal(await handshake(taker!.ns, web.ip4, PORT, 3000), 'timeout', "the taker's packets get its own identity: dropped");
  await new PolicyClient(n1.client).delete(['web-rr']);
});
