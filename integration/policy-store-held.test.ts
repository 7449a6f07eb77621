// A stored policy the agent cannot read holds the policy maps (f40ee53): attacked with real packets.
// Two stored records are damaged while the agent is down: a deny (web-deny: other may not reach web,
// which web-allow admits) and the only policy selecting db (db-only: without it db would be open to
// everyone). The restarted agent loads the rest; had it rebuilt the maps from them, other would reach
// web and db. Denied must stay denied and allowed allowed, during the restart and after it; a pod
// that comes meanwhile gets default deny both ways; importing the damaged names again enforces the
// whole set (shared/test/policy-store-held.test.ts is the engine's unit test).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { ip4, randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { killAll, startEchoServer } from './lib/tcp.ts';
import { probe } from './lib/probe.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { encodeRecord } from '../shared/src/store/journal.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const PORT = 8080;
const cnp = (name: string, spec: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
${spec}`;
const WEB_ALLOW = cnp(
  'web-allow',
  `  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}, {matchLabels: {app: other}}]}]
`,
);
const WEB_DENY = cnp(
  'web-deny',
  `  endpointSelector: {matchLabels: {app: web}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {app: other}}]}]
`,
);
const DB_ONLY = cnp(
  'db-only',
  `  endpointSelector: {matchLabels: {app: db}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
`,
);

let agent: TestAgent | undefined;
const nss: TestNetns[] = [];
const servers: Awaited<ReturnType<typeof startEchoServer>>[] = [];
t.teardown(async () => {
  killAll(servers);
  await agent?.cleanup();
  for (const ns of nss) ns.remove();
});

t.test('an unreadable stored policy: the last enforced policy holds, with real packets', async (t) => {
  agent = await startAgent();
  const a = agent;
  const pc = new PolicyClient(a.client);
  const pod = async (app: string) => {
    const ns = createNetns('mbh');
    nss.push(ns);
    const ep: Endpoint = await a.client.createEndpoint({
      containerId: `held-${app}-${randomId()}`,
      netns: ns.path,
      ifName: 'eth0',
      labels: { app },
    });
    return { ns, ep, ip: ip4(ep) };
  };
  const client = await pod('client');
  const other = await pod('other');
  const web = await pod('web');
  const db = await pod('db');
  for (const p of [web, db]) servers.push(await startEchoServer(p.ns, PORT, '0.0.0.0'));
  for (const doc of [WEB_ALLOW, WEB_DENY, DB_ONLY]) await pc.import(doc);

  const check = async (what: string) => {
    t.equal(await probe(client.ns, web.ip, PORT, 5000), 'ok', `${what}: client -> web allowed`);
    t.equal(await probe(client.ns, db.ip, PORT, 5000), 'ok', `${what}: client -> db allowed`);
    t.equal(await probe(other.ns, web.ip, PORT, 700), 'timeout', `${what}: other -> web denied (web-deny)`);
    t.equal(await probe(other.ns, db.ip, PORT, 700), 'timeout', `${what}: other -> db denied (db-only)`);
  };
  await check('before');

  await a.kill9();
  // Damage both records: a well-framed journal record under each key whose value is no policy record.
  const file = path.join(a.stateDir, 'store', 'journal.log');
  const end = fs.readFileSync(file).lastIndexOf(0x0a) + 1;
  const recs = Buffer.concat(
    ['web-deny', 'db-only'].map((name) =>
      Buffer.from(encodeRecord({ op: 'put', key: `policy/records/${name}`, value: { name, policy: 'x' } })),
    ),
  );
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, recs, 0, recs.length, end);
  fs.closeSync(fd);

  // Probe other -> web and other -> db all through the restart: not one may get through.
  let restarting = true;
  let rounds = 0;
  const leaks: string[] = [];
  const watcher = (async () => {
    while (restarting || rounds < 6) {
      for (const target of [web, db]) if ((await probe(other.ns, target.ip, PORT, 300)) === 'ok') leaks.push(target.ip);
      rounds++;
    }
  })();
  await a.restart();
  await new Promise((r) => setTimeout(r, 500));
  restarting = false;
  await watcher;
  t.same(leaks, [], `no denied connection got through during the restart (${rounds} rounds)`);
  t.same((await pc.list()).items.map((p) => p.name).sort(), ['web-allow'], 'the readable policy loaded, the two damaged not');
  t.match((await a.client.status()).store?.problem ?? '', /policy maps held at the last enforced state/, 'status: held');
  await check('held');

  // Refused while held, and enforced as before after it.
  const refused = await pc.delete(['web-allow']).then(
    () => undefined,
    (e: unknown) => e as { status?: number },
  );
  t.equal(refused?.status, 503, 'deleting another policy while held: 503 (the maps stay)');
  await check('after the refused delete');

  // A pod that comes while held gets default deny both ways.
  const web2 = await pod('web');
  servers.push(await startEchoServer(web2.ns, PORT, '0.0.0.0'));
  t.equal(await probe(client.ns, web2.ip, PORT, 1000), 'timeout', 'a new web pod while held: client -> it denied');
  t.equal(await probe(other.ns, web2.ip, PORT, 700), 'timeout', 'and other -> it denied');
  t.equal(await probe(web2.ns, db.ip, PORT, 1000), 'timeout', 'and its egress denied');

  // One damaged name imported again: still held (the other is still unreadable).
  await pc.import(WEB_DENY);
  t.match((await a.client.status()).store?.problem ?? '', /db-only/, 'still held while db-only is unreadable');
  t.equal(await probe(other.ns, db.ip, PORT, 700), 'timeout', 'other -> db still denied');
  await pc.import(DB_ONLY);
  t.equal((await a.client.status()).store?.problem, undefined, 'both imported again: not held');
  await check('whole set again');
  t.equal(await probe(client.ns, web2.ip, PORT, 5000), 'ok', 'the new web pod: client allowed now (web-allow)');
  t.equal(await probe(other.ns, web2.ip, PORT, 700), 'timeout', 'other denied (web-deny)');
});
