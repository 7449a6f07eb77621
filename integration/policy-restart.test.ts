// An agent restart keeps enforcing from the pinned maps throughout: while the agent is down and while
// it comes back, denied stays denied and allowed (including a live flow) stays allowed; afterwards
// nothing in the maps changed and identities kept their numbers. Agent-wide audit mode
// (--policy-audit-mode) lets would-be drops pass, and turning it off enforces again.
import t from 'tap';
import { ip4, randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { clientWebOther, WEB_FROM_CLIENT as POLICY } from './lib/three-pods.ts';
import { startEchoServer, startFlow, killAll } from './lib/tcp.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { probe } from './lib/probe.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';
import type { AgentClient } from '../shared/src/api/client.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const PORT = 8080;

/** The agent, restarted the hard way (SIGKILL: no chance to clean up anything) with other flags. */
interface Restartable {
  client: AgentClient;
  stop(): Promise<void>;
  start(extraArgs?: string[]): Promise<void>;
  cleanup(): Promise<void>;
}

async function restartable(): Promise<Restartable> {
  const first: TestAgent = await startAgent();
  let current: TestAgent = first;
  return {
    client: first.client,
    stop: () => current.kill9(),
    start: async (extra) => {
      if (extra?.length) current = await startAgent({ reuse: first, extraArgs: extra });
      else {
        current = first;
        await first.restart();
      }
    },
    cleanup: async () => {
      if (current !== first) await current.stop();
      await first.cleanup();
    },
  };
}

let agent: Restartable;
const nss: TestNetns[] = [];
const children: { kill(sig?: NodeJS.Signals): boolean; exitCode: number | null }[] = [];

t.teardown(async () => {
  killAll(children as never[]);
  await agent?.cleanup();
  for (const ns of nss) ns.remove();
});

t.test('restart keeps enforcing throughout; agent-wide audit mode', async (t) => {
  agent = await restartable();
  const pc = new PolicyClient(agent.client);
  const pods = await clientWebOther(agent.client, 'rst', nss);
  children.push(await startEchoServer(pods.web.ns, PORT, '0.0.0.0'));
  await pc.import(POLICY);
  const web = ip4(pods.web.ep);
  t.equal(await probe(pods.client.ns, web, PORT, 5000), 'ok');
  t.equal(await probe(pods.other.ns, web, PORT), 'timeout');
  const before = await pc.status();
  const idsBefore = await pc.identities();

  const flow = startFlow(pods.client.ns, web, PORT);
  const check = async (what: string) => {
    t.equal(await probe(pods.client.ns, web, PORT, 5000), 'ok', `${what}: allowed stays allowed`);
    t.equal(await probe(pods.other.ns, web, PORT, 700), 'timeout', `${what}: denied stays denied`);
  };
  await agent.stop();
  await check('agent down');
  // Probe continuously while the agent starts again: not one denied connection may get through.
  let restarting = true;
  const leaks: string[] = [];
  let rounds = 0;
  const watcher = (async () => {
    while (restarting || rounds < 8) {
      const r = await probe(pods.other.ns, web, PORT, 300);
      rounds++;
      if (r === 'ok') leaks.push(new Date().toISOString());
    }
  })();
  await agent.start();
  await new Promise((r) => setTimeout(r, 500));
  restarting = false;
  await watcher;
  t.same(leaks, [], `no denied connection got through during the restart (${rounds} probes)`);
  await check('agent back');
  const after = await pc.status();
  t.equal(after.revision, before.revision, 'same revision');
  t.equal(after.policyEntries, before.policyEntries, 'same number of policy entries');
  t.same(
    (await pc.identities()).filter((i) => i.kind === 'endpoint').map((i) => [i.id, i.labels]),
    idsBefore.filter((i) => i.kind === 'endpoint').map((i) => [i.id, i.labels]),
    'identities kept their numbers',
  );
  t.equal(flow.failed(), null, 'the live flow survived');
  const echoed = flow.echoed();
  await pollUntil(() => flow.echoed() > echoed || flow.failed() !== null, 20_000, 100);
  t.ok(flow.echoed() > echoed, 'and still flows');
  flow.stop();

  // A pod created after the restart is enforced from its first packet.
  const ns = createNetns('mbr');
  nss.push(ns);
  const web2 = await agent.client.createEndpoint({
    containerId: `rst-web2-${randomId()}`,
    netns: ns.path,
    ifName: 'eth0',
    labels: { app: 'web' },
  });
  children.push(await startEchoServer(ns, PORT, '0.0.0.0'));
  t.equal(await probe(pods.other.ns, ip4(web2), PORT), 'timeout', 'new web pod: other denied');
  t.equal(await probe(pods.client.ns, ip4(web2), PORT, 5000), 'ok', 'new web pod: client allowed');

  // Agent-wide audit mode.
  await agent.stop();
  await agent.start(['--policy-audit-mode']);
  t.equal((await pc.status()).auditMode, true);
  t.equal(await probe(pods.other.ns, web, PORT, 5000), 'ok', 'audit mode: the would-be drop passes');
  await agent.stop();
  await agent.start();
  t.equal(await probe(pods.other.ns, web, PORT), 'timeout', 'audit mode off: enforced again');
});
