// The L7 proxy across failures: its workers outlive an agent restart or SIGKILL (established L7
// connections keep working and keep being enforced), a new agent adopts them, and with the proxy gone
// new connections to L7 ports fail closed, counted as SOCKET_LOOKUP_FAILED drops (Hubble's name for code 178), while other ports
// work; the proxy comes back by itself.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { ip4, randomId, startAgent, type TestAgent } from './lib/agent.ts';
import { curl, RawHttp, request, startHttpServer } from './lib/http.ts';
import { probe } from './lib/probe.ts';
import { l7WorkersConnected } from './lib/l7-workers.ts';
import { killAll, startEchoServer } from './lib/tcp.ts';
import { alive } from './lib/cleanup.ts';
import { eventually } from './lib/proc.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { PROXY_ROUTE_TABLE } from '../shared/src/l7/routing.ts';
import type { Endpoint } from '../shared/src/types.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const ECHO = 8080;
let agent: TestAgent;
let pc: PolicyClient;
const nss: TestNetns[] = [];
const servers: ChildProcess[] = [];
let web: Endpoint;
let clientNs: TestNetns;
let webNs: TestNetns;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public/.*"}]}
    - ports: [{port: "${ECHO}", protocol: TCP}]
`;

/** Every running process that is a proxy worker of the agent with this state dir (its output goes
 *  to the worker's log there; its command line is only its title), by pid. */
const workerProcesses = (stateDir: string): number[] =>
  fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        const out = fs.readlinkSync(`/proc/${d}/fd/1`);
        return out.startsWith(path.join(stateDir, 'l7', 'worker-')) && alive(Number(d));
      } catch {
        return false; // gone meanwhile, or no stdout
      }
    })
    .map(Number)
    .sort((a, b) => a - b);
const workersConnected = () => l7WorkersConnected(agent.client);
const drops = async () => ((await agent.client.request('GET', '/v1/policy/status')) as { drops: Record<string, number> }).drops;
// The host's own way out. An early L7 prototype once replaced the node's default route: the proxy's
// "every destination is local" route must only ever exist in its own table.
const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8' });
const hostDefaults = () =>
  ip('-4', 'route', 'show', 'default', 'table', 'main') + ip('-6', 'route', 'show', 'default', 'table', 'main');
const hostDefaultsBefore = hostDefaults();
/** What listens on the proxy port (with processes and socket details), for a failure message. */
const ss = (port: number) =>
  `\nss -ltnpe sport = :${port}:\n${execFileSync('ss', ['-ltnpe', `sport = :${port}`], { encoding: 'utf8' })}`;

t.before(async () => {
  if (!hostDefaultsBefore.trim()) throw new Error('the host has no default route before the test: not ours to judge');
  // Two workers whatever the machine's default (one on 2 CPUs): adoption and restarts by worker index,
  // and a second listener in the socket lookup's map, stay covered.
  agent = await startAgent({ extraArgs: ['--l7-proxy-workers', '2'] });
  pc = new PolicyClient(agent.client);
  webNs = createNetns('mbl');
  clientNs = createNetns('mbl');
  nss.push(webNs, clientNs);
  web = await agent.client.createEndpoint({
    containerId: `l7r-web-${randomId()}`,
    netns: webNs.path,
    ifName: 'eth0',
    labels: { app: 'web' },
  });
  await agent.client.createEndpoint({
    containerId: `l7r-client-${randomId()}`,
    netns: clientNs.path,
    ifName: 'eth0',
    labels: { app: 'client' },
  });
  servers.push(await startHttpServer(webNs, 80, 'web'), await startEchoServer(webNs, ECHO, '0.0.0.0'));
  await pc.import(POLICY);
  await workersConnected();
});

t.teardown(async () => {
  killAll(servers);
  await agent?.cleanup(); // removes the state dir: surviving workers see it and exit
  for (const ns of nss) ns.remove();
});

t.test('agent restarts and SIGKILL: established L7 connections keep working, still enforced', async (t) => {
  const before = await workersConnected();
  const raw = new RawHttp(clientNs, ip4(web), 80);
  t.teardown(() => raw.close());
  t.match((await raw.exchange(request('GET', '/public/1'), '"url":"/public/1"')).got, /^HTTP\/1\.1 200/);
  await agent.kill9();
  t.match(
    (await raw.exchange(request('GET', '/public/2'), '"url":"/public/2"')).got,
    /^HTTP\/1\.1 200/,
    'agent down: the open connection still works',
  );
  t.match((await raw.exchange(request('GET', '/admin'), 'Access denied')).got, /^HTTP\/1\.1 403/, 'and is still enforced');
  // The request below once the workers have seen the agent go (their control connection closed; they
  // try again every 0.5 s): its records are made with no agent to take them.
  await new Promise((r) => setTimeout(r, 1500));
  const down = `/public/while-down-${randomId()}`;
  t.equal((await curl(clientNs, `http://${ip4(web)}${down}`)).status, 200, 'new connections are proxied too (the workers run)');
  await agent.restart();
  const after = await workersConnected();
  // The workers held what they proxied while no agent ran, and handed it to the new one.
  const observer = new ObserverClient(agent.observerSocket);
  t.teardown(() => observer.close());
  const downFlows = await observer.collect({ number: 100, whitelist: [{ eventType: [{ type: 129 }], httpPath: [`^${down}`] }] });
  t.same(
    downFlows.map((r) => r.flow?.l7?.type).sort(),
    ['REQUEST', 'RESPONSE'],
    "the request made while no agent ran is in the new agent's flows, with its response",
  );
  t.same(
    after.workers.map((w) => w.pid),
    before.workers.map((w) => w.pid),
    `the new agent adopted the running workers: ${JSON.stringify(after.workers)}`,
  );
  t.match(
    (await raw.exchange(request('GET', '/public/3'), '"url":"/public/3"')).got,
    /^HTTP\/1\.1 200/,
    'the connection survived the restart',
  );
  await pc.import(POLICY.replace('path: "/public/.*"', 'path: "/public/.*|/admin"'));
  t.match(
    (await raw.exchange(request('GET', '/admin'), '"url":"/admin"')).got,
    /^HTTP\/1\.1 200/,
    'and follows policy changes made through the new agent',
  );
  await pc.import(POLICY);
});

t.test('a worker that reconnects late to a restarted agent is adopted, not doubled', async (t) => {
  const before = await workersConnected();
  const started = () => (fs.readFileSync(agent.logFile, 'utf8').match(/L7 proxy worker started/g) ?? []).length;
  const startedBefore = started();
  // Stopped across the restart and well past the agent's adoption grace (1.5 s): what a loaded node
  // does to a worker that is not scheduled, or to an agent slow to read its control socket.
  const pids = before.workers.map((w) => w.pid!);
  const cont = () => {
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGCONT');
  };
  t.teardown(cont);
  for (const pid of pids) process.kill(pid, 'SIGSTOP');
  await agent.restart();
  const upSince = Date.now();
  while (Date.now() - upSince < 4000) await new Promise((r) => setTimeout(r, 100)); // the grace passes
  cont();
  const after = await workersConnected();
  t.same(
    after.workers.map((w) => w.pid),
    pids,
    `the new agent adopted the workers it found (${JSON.stringify(pids)}): ${JSON.stringify(after.workers)}`,
  );
  t.equal(started(), startedBefore, 'and started no other worker for their places');
  t.same(
    workerProcesses(agent.stateDir),
    [...pids].sort((a, b) => a - b),
    `and no other worker process runs for this agent (${agent.stateDir}/l7/worker-*.log)`,
  );
});

t.test('proxy down: new connections to L7 ports fail closed and are counted; other ports work; then back', async (t) => {
  const { workers, port } = await workersConnected();
  const dropped = (await drops()).SOCKET_LOOKUP_FAILED ?? 0;
  // No agent to restart the workers during the check: kill it first, then every worker it started.
  await agent.kill9();
  for (const w of workers) process.kill(w.pid!, 'SIGKILL');
  // Gone means every thread gone (alive() in lib/cleanup.ts): a worker's main thread exits first and
  // its other threads keep its listener open until the last one has; taking the first for the worker
  // gone once let a SYN be accepted by a listener on its way out, then reset (1 suite run in 14).
  await eventually('the killed workers to exit', () => workers.every((w) => !alive(w.pid!)), 30_000);
  const a = await curl(clientNs, `http://${ip4(web)}/public/x`, [], { timeoutS: 2 });
  const listeners = a.connects ? ss(port) : '';
  t.same(
    [a.status, a.connects],
    [0, 0],
    `a new connection to the L7 port gets nowhere, refused by the datapath (no connect): ${JSON.stringify(a)}${listeners}`,
  );
  const l4 = await probe(clientNs, ip4(web), ECHO, 5000);
  t.equal(l4, 'ok', `the L4-only port works: ${l4}`);
  await agent.restart();
  const back = await workersConnected();
  t.ok(
    back.workers.every((w) => !workers.some((old) => old.pid === w.pid)),
    `new workers were started: ${JSON.stringify(back.workers.map((w) => w.pid))}, killed ${JSON.stringify(workers.map((w) => w.pid))}`,
  );
  // Read before any connection to the L7 port after the restart: a worker that has connected to the
  // agent listens only once it has the policy (a SYN before that is one more such drop), so only the
  // refused attempts above can be in this count (the counters are pinned: they outlive the agent).
  const after = await drops();
  t.ok(
    (after.SOCKET_LOOKUP_FAILED ?? 0) > dropped,
    `the refused connection attempts are drops with their reason: SOCKET_LOOKUP_FAILED ${dropped} before, now ${JSON.stringify(after)}`,
  );
  // The proxy comes back by itself: new connections are proxied again once a new worker listens.
  let last: Awaited<ReturnType<typeof curl>> | undefined;
  const tookMs = await eventually(
    'the L7 port to answer again',
    async () => (last = await curl(clientNs, `http://${ip4(web)}/public/y`)).status === 200,
    60_000,
    200,
  ).catch((e: Error) => {
    t.fail(`and the L7 port works again: ${e.message}; last ${JSON.stringify(last)}`);
    return -1;
  });
  if (tookMs >= 0) t.pass(`and the L7 port works again (after ${tookMs} ms): ${last!.body.slice(0, 80)}`);
  const log = fs.readFileSync(path.join(agent.stateDir, 'agent.log'), 'utf8');
  t.match(log, /L7 proxy worker started/, 'the agent says it started them');
});

t.test(
  "the host's routes are never touched: default routes the same with the proxy up, after SIGKILL, and after the agent is gone",
  async (t) => {
    await workersConnected();
    t.equal(hostDefaults(), hostDefaultsBefore, `with L7 policy enforced:\n${hostDefaultsBefore}`);
    t.match(
      ip('-4', 'route', 'show', 'table', 'all', 'dev', 'lo', 'type', 'local', 'default'),
      new RegExp(`^local default table ${PROXY_ROUTE_TABLE} `, 'm'),
      `the proxy's local default route is in its own table (${PROXY_ROUTE_TABLE})`,
    );
    t.notMatch(ip('-4', 'route', 'show', 'table', 'main'), /^local default/m, 'and not in main');
    await agent.kill9();
    t.equal(hostDefaults(), hostDefaultsBefore, 'after the agent is killed');
    await agent.restart();
    await workersConnected();
    t.equal(hostDefaults(), hostDefaultsBefore, 'after it starts again');
    await agent.cleanup();
    t.equal(hostDefaults(), hostDefaultsBefore, 'after it stopped and its endpoints, device and state are gone');
  },
);
