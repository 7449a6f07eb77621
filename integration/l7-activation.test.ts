// The proxies' routing rule and socket lookup come with the first policy that needs them
// (shared/src/l7/activation.ts): an agent without L7 or DNS policy leaves its node's route lookups and
// socket lookups alone, and an L7 policy applied later is enforced from its first connection on,
// never delivering a request the policy denies to the server. The agent runs in a netns of its own (a
// node), so the rule it adds or leaves out is that node's alone.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { LINK_PINS } from '../shared/src/bpf/datapath.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { ip4, randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { API } from './lib/l7-http-file.ts';
import { curl, startHttpServer } from './lib/http.ts';
import { l7WorkersConnected } from './lib/l7-workers.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { killAll } from './lib/tcp.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const nss: TestNetns[] = [];
const servers: ChildProcess[] = [];
let agent: TestAgent | undefined;
t.teardown(async () => {
  killAll(servers);
  await agent?.cleanup();
  for (const ns of nss.reverse()) ns.remove();
});

const node = createNetns('mba');
nss.push(node);
const rules = () => execFileSync('nsenter', [`--net=${node.path}`, 'ip', '-4', 'rule', 'show'], { encoding: 'utf8' });
const PROXY_RULE = /fwmark 0xe00\/0xf00/;

t.test('no proxy rule until a policy needs it; the first connection after is enforced', async (t) => {
  const a = (agent = await startAgent({ netnsPath: node.path }));
  const pod = async (name: string, labels: Record<string, string>) => {
    const ns = createNetns('mbp');
    nss.push(ns);
    const ep = await a.client.createEndpoint({
      containerId: `l7a-${name}-${randomId()}`,
      netns: ns.path,
      ifName: 'eth0',
      labels,
    });
    return { ns, ep };
  };
  const web = await pod('web', { app: 'storefront', tier: 'web' });
  const good = await pod('good', { app: 'checkout', stage: 'live' });
  servers.push(await startHttpServer(web.ns, 80, 'web'));
  const url = (p: string) => `http://${ip4(web.ep)}:80${p}`;
  const linkPin = path.join(a.bpffsDir, LINK_PINS.proxy_steer);

  const open = await curl(good.ns, url('/private'));
  t.equal(open.status, 200, 'no policy: the server answers /private itself');
  t.notMatch(rules(), PROXY_RULE, 'and the node has no proxy routing rule');
  t.notOk(fs.existsSync(linkPin), 'nor the socket lookup program');

  const pc = new PolicyClient(a.client);
  await pc.import(API());
  t.match(rules(), PROXY_RULE, 'the L7 policy brought the routing rule');
  t.ok(fs.existsSync(linkPin), 'and the socket lookup program');
  // At once, before the proxy's workers have started: the policy's entries divert, so /private must
  // never reach the server (a dropped SYN, or the proxy's 403 once it listens).
  const early = await curl(good.ns, url('/private'), [], { timeoutS: 3 });
  t.not(early.status, 200, `right after the import /private does not reach the server (got ${early.status})`);
  await l7WorkersConnected(a.client);
  const denied = await curl(good.ns, url('/private'));
  t.equal(denied.status, 403, 'the proxy denies /private');
  const allowed = await curl(good.ns, url('/public/a'));
  t.equal(allowed.status, 200, 'and lets /public/a through');
  t.match(allowed.body, /"url":"\/public\/a"/, 'answered by the server');

  await pc.delete('all');
  t.match(rules(), PROXY_RULE, 'the rule stays after the policy is gone (the kernel would not go back anyway)');
  const after = await curl(good.ns, url('/private'));
  t.equal(after.status, 200, 'and without the policy the server answers /private again');
});
