// Pod stop: a DEL answers once the endpoint can neither send nor receive and its address is free;
// its veth and flows are reaped afterwards, also by an agent restarted after a SIGKILL. A new pod
// with the old pod's address works at once, while the old pod's netns (still held here, as a
// runtime may) can no longer send anything through Membrane.
import fs from 'node:fs';
import t from 'tap';
import { ip4, startAgent, randomId, type TestAgent } from './lib/agent.ts';
import { createNetns, linkExists, ping } from './lib/netns.ts';
import { killAll, startEchoServer, startFlow, tcpRequest } from './lib/tcp.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';

interface CtEntry {
  owner: number;
  peer: number;
}
const flowsOf = async (agent: TestAgent, id: number) =>
  (await agent.client.request<{ entries: CtEntry[] }>('GET', '/v1/bpf/ct')).entries.filter((e) => e.owner === id || e.peer === id)
    .length;

/** The agent's pinned tcx links of a host interface (shared/src/bpf/tcx.ts). */
const tcxPins = (agent: TestAgent, ifindex: number) =>
  fs
    .readdirSync(agent.bpffsDir)
    .filter((n) => n.startsWith(`link_tcx_${ifindex}_`))
    .sort();

t.test(
  'the address of a deleted pod works for the next pod at once; the old pod cannot send; the reap resumes after SIGKILL',
  async (t) => {
    // Reaping held: the old veth stays, so the window between DEL and reap is there to probe.
    const agent = await startAgent({ extraArgs: ['--endpoint-reap-delay', '600000'] });
    let restarted: TestAgent | undefined;
    t.teardown(async () => {
      await restarted?.cleanup();
      await agent.cleanup();
    });
    const nsA = createNetns(),
      nsB = createNetns(),
      nsC = createNetns();
    t.teardown(() => {
      nsA.remove();
      nsB.remove();
      nsC.remove();
    });
    const a = await agent.client.createEndpoint({ containerId: `a-${randomId()}`, netns: nsA.path, ifName: 'eth0' });
    const c = await agent.client.createEndpoint({ containerId: `c-${randomId()}`, netns: nsC.path, ifName: 'eth0' });
    const srvC = await startEchoServer(nsC, 7070);
    t.teardown(() => killAll([srvC]));
    t.ok(await ping(nsA, ip4(c)), 'pod A reaches pod C before the DEL');
    const flow = startFlow(nsA, ip4(c), 7070);
    t.teardown(() => flow.stop());
    t.ok(await pollUntil(() => flow.echoed() > 0), 'a live flow A -> C');
    t.ok((await flowsOf(agent, a.id)) > 0, 'A has conntrack entries');

    t.same(await agent.client.deleteEndpoint(a.containerId, 'eth0'), { deleted: true }, 'DEL A');
    t.ok(linkExists(a.hostIfName), 'its veth is still there (reaping held)');
    const pools = await agent.client.ipam();
    t.notOk(pools.flatMap((p) => p.allocations.map((x) => x.ip)).includes(ip4(a)), 'its address is free');

    const b = await agent.client.createEndpoint({
      containerId: `b-${randomId()}`,
      netns: nsB.path,
      ifName: 'eth0',
      ips: [ip4(a)],
    });
    t.equal(ip4(b), ip4(a), "pod B got A's address");
    t.not(b.id, a.id, "but not its endpoint id (A's flows are bound to it)");
    const srvB = await startEchoServer(nsB, 7071);
    t.teardown(() => killAll([srvB]));
    t.ok(await ping(nsB, ip4(c)), 'B reaches C');
    t.equal(await tcpRequest(nsB, ip4(c), 7070), 'ping', 'TCP B -> C');
    t.equal(await tcpRequest(nsC, ip4(b), 7071), 'ping', 'TCP C -> the address: B answers');

    const echoedAtDel = flow.echoed();
    t.notOk(await ping(nsA, ip4(c)), 'the old pod A cannot ping C');
    t.match(await tcpRequest(nsA, ip4(c), 7070), /timeout|error/, 'nor open a connection to C');
    t.equal(flow.echoed(), echoedAtDel, 'and its live flow stopped at the DEL');
    t.ok(linkExists(a.hostIfName), "all that with A's veth still in place");
    t.same(
      tcxPins(agent, a.hostIfIndex),
      [`link_tcx_${a.hostIfIndex}_egress`, `link_tcx_${a.hostIfIndex}_ingress`],
      'its programs stay linked, dropping',
    );

    // Killed before reaping: the record is on disk, the next start (no delay) finishes it.
    await agent.kill9();
    restarted = await startAgent({ reuse: agent });
    t.ok(await pollUntil(() => !linkExists(a.hostIfName)), "the restarted agent removed A's veth");
    t.notMatch(await nsA.exec('ip', ['link']), /eth0/, "eth0 is gone from A's netns");
    t.equal(await flowsOf(restarted, a.id), 0, "no conntrack entry bound to A's id is left");
    t.same(tcxPins(restarted, a.hostIfIndex), [], 'no pinned tcx link of its veth is left');
    t.equal(await tcpRequest(nsB, ip4(c), 7070), 'ping', 'B still works');
    t.equal(await tcpRequest(nsC, ip4(b), 7071), 'ping', 'and is still reached at the address');
  },
);

t.test("by default a deleted pod's veth and flows go right after the DEL answered", async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  const nsA = createNetns(),
    nsC = createNetns();
  t.teardown(() => {
    nsA.remove();
    nsC.remove();
  });
  const a = await agent.client.createEndpoint({ containerId: `a-${randomId()}`, netns: nsA.path, ifName: 'eth0' });
  const c = await agent.client.createEndpoint({ containerId: `c-${randomId()}`, netns: nsC.path, ifName: 'eth0' });
  t.ok(await ping(nsA, ip4(c)), 'A reaches C');
  t.same(await agent.client.deleteEndpoint(a.containerId, 'eth0'), { deleted: true });
  t.ok(await pollUntil(() => !linkExists(a.hostIfName), 15_000), "A's veth is removed");
  t.equal(await flowsOf(agent, a.id), 0, "A's flows are gone with it");
  t.same(tcxPins(agent, a.hostIfIndex), [], 'no pinned tcx link of its veth is left');
  t.notOk(await ping(nsA, ip4(c), 1), "A's netns has no way out");
  t.same(await agent.client.deleteEndpoint(a.containerId, 'eth0'), { deleted: false }, 'a second DEL succeeds');
});
