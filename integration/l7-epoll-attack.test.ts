// The L7 proxy worker's sockets attacked with real connections from a pod (root), whichever I/O layer
// the worker runs (the default, epoll; and MEMBRANE_L7_WORKER_IO=libuv): fd exhaustion (the worker's
// RLIMIT_NOFILE lowered under it), resets from the client and from the server before, during and
// after requests, half-closes, a client that never reads a large answer, and one that trickles its
// headers. The worker must neither die nor spin, leak no fd, stay bounded in memory, and serve the
// other connections meanwhile. The peers: lib/l7-abuse-peers.ts.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { castOf, waitFor } from './lib/attack-pods.ts';
import { SERVER, runClient, startClient } from './lib/l7-abuse-peers.ts';
import { l7Status, serveThroughL7 } from './lib/l7-workers.ts';
import { killAll } from './lib/tcp.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['web', 'client'], {
  env: { MEMBRANE_L7_PROXY_WORKERS: '1' },
  logFile: process.env.L7_ATTACK_AGENT_LOG, // to keep the agent's and the worker's log
});
const servers: ChildProcess[] = [];
let worker = 0;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7-abuse}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/.*"}]}}]
`;

t.before(async () => {
  worker = await serveThroughL7(cast, SERVER, POLICY, servers);
  t.ok(worker > 0, 'the worker has a pid');
});

t.teardown(() => killAll(servers));
t.afterEach(() => {
  const keep = process.env.L7_ATTACK_AGENT_LOG;
  if (keep) fs.copyFileSync(`${cast.agent.stateDir}/l7/worker-0.log`, `${keep}.worker`);
});

const get = async (path: string, half = false) =>
  (await runClient(cast.pods.client.ns, ['get', cast.pods.web.ip4, path, ...(half ? ['half'] : [])]))[0] as {
    status: number;
    complete: boolean;
    how: string;
  };
const fdNumbers = () => fs.readdirSync(`/proc/${worker}/fd`).map(Number);
const fds = () => fdNumbers().length;
/** Lowers the worker's soft RLIMIT_NOFILE (not its hard one: raising that back was refused, EPERM) so that `free` more fds fit: the limit bounds fd numbers, not their count,
 *  and a new fd takes the lowest free number. */
const leaveFree = (free: number) => {
  const open = new Set(fdNumbers());
  let n = 0;
  for (let left = free; left > 0; n++) if (!open.has(n)) left--;
  execFileSync('prlimit', ['--pid', String(worker), `--nofile=${n}:`]);
  return n;
};
const softLimit = () => /Max open files\s+(\d+)/.exec(fs.readFileSync(`/proc/${worker}/limits`, 'utf8'))![1];
/** The worker's CPU time so far, in clock ticks (utime + stime). */
const cpuTicks = () => {
  const f = fs.readFileSync(`/proc/${worker}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]);
};
const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${worker}/status`, 'utf8'))![1]);
/** Until the worker has no more fds than `n` (its idle upstream connections expire after 2 s). */
const fdsBackTo = (n: number) => waitFor('the worker to close its fds', async () => (fds() <= n ? true : undefined), 20_000);
const samePid = async () => (await l7Status(cast.agent.client)).workers[0].pid;

t.test('resets, half-closes and hang-ups from both sides: answered, closed, and no fd left', async (t) => {
  t.equal((await get('/warm')).status, 200);
  const base = fds();
  const [tally] = await runClient(cast.pods.client.ns, ['storm', cast.pods.web.ip4, '240']);
  t.same(
    tally,
    { '0:closed': 40, '1:closed': 40, '2:answered': 40, '3:cut': 40, '4:closed': 40, '5:closed': 40 },
    '240 connections: each ended; after a half-close the whole answer came; a server reset cut the answer short',
  );
  t.equal(await samePid(), worker, 'the worker is still the same process');
  t.equal((await get('/after')).status, 200, 'and proxies the next request');
  await fdsBackTo(base);
  t.ok(fds() <= base, `the worker's fds are back to ${base}`);
});

t.test('a client that never reads a large answer: the worker buffers little, the others are served', async (t) => {
  const base = fds();
  const rss0 = rssKiB();
  const size = 256 * 1024 * 1024;
  const stuck = await startClient(cast.pods.client.ns, ['noread', cast.pods.web.ip4, `/big/${size}`]);
  t.teardown(() => stuck.release());
  // The server's progress ("sent <bytes>" each time its socket is full) stops once backpressure holds it.
  let sent = 0;
  const server = servers[0];
  const onOut = (d: Buffer) => {
    for (const m of String(d).matchAll(/sent (\d+)/g)) sent = Number(m[1]);
  };
  server.stdout!.on('data', onOut);
  t.teardown(() => server.stdout!.off('data', onOut));
  let last = -1;
  await waitFor(
    'the server to stall',
    async () => {
      const stalled = sent > 0 && sent === last;
      last = sent;
      await new Promise((r) => setTimeout(r, 500));
      return stalled ? true : undefined;
    },
    60_000,
  );
  t.ok(sent < size / 4, `the server stalled after ${(sent / 2 ** 20).toFixed(1)} MiB of ${size / 2 ** 20} MiB`);
  const grew = (rssKiB() - rss0) / 1024;
  t.ok(grew < 64, `the worker's memory grew by ${grew.toFixed(1)} MiB, less than 64`);
  for (let i = 0; i < 3; i++) t.equal((await get(`/other/${i}`)).status, 200, 'another connection is served');
  await stuck.release(); // a reset: unread bytes were waiting
  t.equal(await samePid(), worker, 'the worker is still the same process');
  // Its two held-up sockets (the client's, whose reading paused, and the upstream one, paused) closed.
  await fdsBackTo(base + 1); // + the last request's idle upstream connection, until it expires
  t.ok(fds() <= base + 1, `its fds are back to ${base} (+ 1 idle upstream connection at most)`);
});

t.test('a client trickling its headers a byte at a time holds up no other connection', async (t) => {
  const [r] = await runClient(cast.pods.client.ns, ['slowloris', cast.pods.web.ip4, '5']);
  t.same(
    r,
    { others: [200, 200, 200, 200, 200], answeredBeforeOthers: false, slow: 200, slowHow: 'end' },
    'the five requests on other connections were answered while the slow one was unfinished; then it was too',
  );
});

// Last: a worker that dies here takes the others' subjects with it.
t.test('out of fds: the worker neither dies nor spins, and serves again once fds free up', async (t) => {
  t.equal((await get('/warm')).status, 200, 'proxied before');
  const warm = fds();
  await waitFor('the idle upstream connection to expire', async () => (fds() < warm ? true : undefined), 20_000);
  const base = fds();
  const soft = softLimit();
  t.teardown(() => {
    if (fs.existsSync(`/proc/${worker}`)) execFileSync('prlimit', ['--pid', String(worker), `--nofile=${soft}:`]);
  });
  // One fd left: the client's connection is accepted, the upstream connection cannot be made.
  leaveFree(1);
  const one = await get('/one');
  t.ok(one.status >= 500, `no fd for the upstream connection: answered ${one.status}`);
  t.equal(await samePid(), worker, 'the worker is still the same process');
  // Twelve left, thirty connections: the rest wait in the listener's backlog.
  const limit = leaveFree(12);
  const idle = await startClient(cast.pods.client.ns, ['hold', cast.pods.web.ip4, '30']);
  t.teardown(() => idle.release());
  t.equal((idle.first as { held: number }).held, 30, '30 connections are up');
  const full = () => fdNumbers().filter((n) => n < limit).length === limit;
  await waitFor('the worker at its fd limit', async () => (full() ? true : undefined), 20_000);
  const cpu0 = cpuTicks();
  const wall0 = Date.now();
  await new Promise((r) => setTimeout(r, 2000));
  const cpuShare = (cpuTicks() - cpu0) / 100 / ((Date.now() - wall0) / 1000);
  t.ok(cpuShare < 0.1, `the worker does not spin while out of fds (${(cpuShare * 100).toFixed(0)}% of a CPU)`);
  t.equal(await samePid(), worker, 'the worker is still the same process');
  await idle.release();
  const after = await get('/after');
  t.equal(after.status, 200, 'once the connections closed, a new request is proxied');
  t.equal(await samePid(), worker, 'by the same worker');
  await fdsBackTo(base + 1); // the new request's idle upstream connection
  t.ok(fds() <= base + 1, `and its fds are back to ${base} (+ 1 idle upstream connection at most)`);
});
