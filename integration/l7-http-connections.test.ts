// L7 HTTP on one connection: Expect: 100-continue, keep-alive with mixed verdicts, upstream connection
// reuse (never across identities), Connection: close and TIME_WAIT, pipelining, and a policy change
// on an open connection (the setup: lib/l7-http-file.ts).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { curl, RawHttp, request, startHttpServer } from './lib/http.ts';
import { killAll } from './lib/tcp.ts';
import type { TestNetns } from './lib/netns.ts';
import { API, ip4, l7HttpForFile } from './lib/l7-http-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);

t.test('Expect: 100-continue through the diverted path', async (t) => {
  const { eps, nsOf, importL7, reset } = f;
  t.teardown(reset);
  await importL7(API());
  const raw = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => raw.close());
  const head = (p: string) => `PUT ${p} HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`;
  t.match(
    (await raw.exchange(head('/upload'), '\r\n\r\n')).got,
    /^HTTP\/1\.1 100 Continue\r\n/,
    "the server's 100 Continue comes back before the body is sent",
  );
  t.match(
    (await raw.exchange('hello', '"bytes":5')).got,
    /^HTTP\/1\.1 200 OK/,
    'then the body goes through and the answer comes',
  );
  const denied = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => denied.close());
  const r = await denied.exchange(head('/secret'), 'Access denied');
  t.match(r.got, /^HTTP\/1\.1 403 Forbidden/, 'a denied request is answered at once: the client need not send its body');
});

t.test('keep-alive: allowed and denied requests share one connection', async (t) => {
  const { eps, nsOf, importL7, reset, url } = f;
  t.teardown(reset);
  await importL7(API());
  const r = await curl(nsOf.good, [url('web', 80, '/public/a'), url('web', 80, '/private'), url('web', 80, '/public/b')]);
  t.equal(r.connects, 1, 'curl reused its one connection for all three');
  t.equal(r.status, 200, 'and the request after the 403 got its answer');
  const raw = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => raw.close());
  const a = await raw.exchange(request('GET', '/secret'), 'Access denied');
  t.match(a.got, /^HTTP\/1\.1 403 Forbidden/);
  const b = await raw.exchange(request('GET', '/public/x'), '"url":"/public/x"');
  t.match(b.got, /^HTTP\/1\.1 200 OK/, 'the same connection still works after a denial');
});

t.test("one-request connections share the proxy's upstream connections, never across identities", async (t) => {
  const { agent, eps, nsOf, pod, importL7, reset, url } = f;
  t.teardown(reset);
  await importL7(API());
  // Same rights, another identity (its own labels).
  if (!eps.good2) await pod('good2', { app: 'checkout-canary', stage: 'live' });
  const once = async (name: string) => {
    const r = await curl(nsOf[name], url('web', 80, '/public/p'), ['-H', 'Connection: close']);
    t.equal(r.status, 200, `${name}: answered`);
    return JSON.parse(r.body) as { peerPort: number; headers: Record<string, string> };
  };
  const ports = async (name: string, n: number) => {
    const seen = new Set<number>();
    for (let i = 0; i < n; i++) {
      const b = await once(name);
      t.equal(b.headers.connection, undefined, `${name}: the server does not see the client's "Connection: close"`);
      seen.add(b.peerPort);
    }
    return seen;
  };
  const good = await ports('good', 6);
  // Each worker keeps its own idle connections; the kernel spreads client connections over the workers.
  const workers = ((await agent.client.status()).l7 as { workers: unknown[] }).workers.length;
  t.ok(
    good.size <= workers,
    `6 one-request connections of checkout rode ${good.size} upstream connection(s) (${workers} workers)`,
  );
  const other = await ports('good2', 4);
  t.same(
    [...other].filter((p) => good.has(p)),
    [],
    "the other identity's requests never ride an upstream connection checkout's requests used",
  );
});

// One request with Connection: close from a fixed local port; the client closes only after the
// server's FIN (as clients that read to the end do). Prints {status, serverClosedFirst} or {error}.
const CLOSE_CLIENT = `
const net = require('node:net');
const [ip, port, localPort, path] = process.argv.slice(1);
const c = net.connect({ host: ip, port: Number(port), localPort: Number(localPort) });
let got = '', serverClosedFirst = false;
c.setTimeout(4000, () => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(0); });
c.on('connect', () => c.write('GET ' + path + ' HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n'));
c.on('data', (d) => { got += d.toString('latin1'); });
c.on('end', () => { serverClosedFirst = true; });
c.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });
c.on('close', () => console.log(JSON.stringify({ status: Number(got.slice(9, 12)), serverClosedFirst })));
`;

function closeClient(
  ns: TestNetns,
  ip: string,
  localPort: number,
  path: string,
): { status?: number; serverClosedFirst?: boolean; error?: string } {
  const out = execFileSync(
    'nsenter',
    [`--net=${ns.path}`, process.execPath, '-e', CLOSE_CLIENT, ip, '80', String(localPort), path],
    {
      encoding: 'utf8',
      env: { ...process.env, NODE_OPTIONS: '', NODE_EXTRA_CA_CERTS: '' },
    },
  );
  return JSON.parse(out.trim());
}

t.test(
  'Connection: close: the proxy closes first, as nginx does, and the next connection from the same client port gets through at once',
  async (t) => {
    const { eps, nsOf, importL7, reset } = f;
    t.teardown(reset);
    await importL7(API());
    // The side that closes first keeps TIME_WAIT; with a client that waits for the close it is the
    // node's (the proxy's accepted socket), and the client reuses its port at once. The kernel must
    // meet the new SYN with that TIME_WAIT entry and let it through to the listener: that is why SYNs
    // reach the proxy through the netns's socket lookup (bpf/lib/proxy.h proxy_steer), not
    // bpf_sk_assign at tc, which skips that check (such a SYN went unanswered until TIME_WAIT ended).
    for (const [path, status] of [
      ['/public/close', 200],
      ['/private', 403],
    ] as const) {
      const port = 20000 + crypto.randomInt(0, 20000);
      t.same(
        closeClient(nsOf.good, ip4(eps.web), port, path),
        { status, serverClosedFirst: true },
        `${path}: answered, then the proxy closed`,
      );
      const tw = execFileSync(
        'ss',
        ['-Htan', 'state', 'time-wait', 'src', `${ip4(eps.web)}:80`, 'dst', `${ip4(eps.good)}:${port}`],
        {
          encoding: 'utf8',
        },
      );
      t.not(tw.trim(), '', `${path}: the TIME_WAIT for port ${port} is in the node's stack`);
      t.same(
        closeClient(nsOf.good, ip4(eps.web), port, path),
        { status, serverClosedFirst: true },
        `${path}: a new connection from the same port ${port} is answered (not held back by the TIME_WAIT)`,
      );
    }
  },
);

t.test('pipelining: responses in request order, 403s in their place', async (t) => {
  const { eps, nsOf, importL7, reset } = f;
  t.teardown(reset);
  await importL7(API());
  const raw = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => raw.close());
  const r = await raw.exchange(
    request('GET', '/public/1') + request('DELETE', '/public/1') + request('GET', '/public/3'),
    '"url":"/public/3"',
  );
  t.same(
    [...r.got.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => m[1]),
    ['200', '403', '200'],
  );
});

t.test('a policy change takes effect on the next request of an open connection', async (t) => {
  const { eps, nsOf, importL7, reset } = f;
  t.teardown(reset);
  await importL7(API());
  const raw = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => raw.close());
  t.match((await raw.exchange(request('GET', '/admin'), 'Access denied')).got, /^HTTP\/1\.1 403/);
  await importL7(
    API().replace('- {method: GET, path: /ws}', '- {method: GET, path: /ws}\n        - {method: GET, path: /admin}'),
  );
  t.match(
    (await raw.exchange(request('GET', '/admin'), '"url":"/admin"')).got,
    /^HTTP\/1\.1 200/,
    'allowed now, same connection',
  );
  await importL7(API());
  t.match((await raw.exchange(request('GET', '/admin'), 'Access denied')).got, /^HTTP\/1\.1 403/, 'and denied again');
});

// The attack: a client keeps the keep-alive connection the proxy accepted while the policy allowed it,
// and goes on sending after L3/L4 stopped allowing it at all. With no HTTP rule left on the server's
// ingress, a snapshot without that direction would read as "unrestricted" and forward the request.
// What counts is what reached the server (its access log), not only what the client was told.
type L7Pc = (typeof f)['pc'];
/** The logged server's access log (the pod and server are made by the first test that needs them). */
let logOf = (): string => '';
const cleanups: (() => void)[] = [];
t.teardown(() => {
  for (const c of cleanups) c();
});
const ONLY_INVENTORY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: NAME}
spec:
  endpointSelector: {matchLabels: {app: storefront-logged}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: inventory}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`;

for (const [change, before, apply] of [
  [
    'the HTTP policy is deleted (another policy still selects the server, not the client)',
    `${API()}---\n${ONLY_INVENTORY.replace('NAME', 'base')}`,
    (pc: L7Pc) => pc.delete(['api']),
  ],
  [
    'the HTTP policy is replaced by one that does not select the client',
    API(),
    (pc: L7Pc) => pc.import(ONLY_INVENTORY.replace('NAME', 'api')),
  ],
] as const) {
  t.test(`an open keep-alive connection after ${change}: the next request does not reach the server`, async (t) => {
    const { eps, nsOf, pod, pc, importL7, reset, url } = f;
    t.teardown(reset);
    const name = 'logged';
    if (!eps[name]) {
      await pod(name, { app: 'storefront-logged', tier: 'web' });
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbl7log-'));
      const log = path.join(dir, 'access.log');
      const server = await startHttpServer(nsOf[name], 80, name, '0.0.0.0', log);
      logOf = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : '');
      cleanups.push(() => {
        killAll([server]);
        fs.rmSync(dir, { recursive: true, force: true });
      });
    }
    await importL7(before);
    const tag = crypto.randomBytes(4).toString('hex');
    const raw = new RawHttp(nsOf.good, ip4(eps[name]), 80);
    t.teardown(() => raw.close());
    const first = await raw.exchange(request('GET', `/public/before-${tag}`), `"url":"/public/before-${tag}"`);
    t.match(first.got, /^HTTP\/1\.1 200/, 'allowed before the change');
    t.match(logOf(), `GET /public/before-${tag}`, 'and the server logged it');
    await apply(pc);
    // The change is in force at L3/L4 (this also gives the proxy time for its new snapshot).
    t.equal((await curl(nsOf.good, url(name, 80, '/public/new'), [], { timeoutS: 2 })).status, 0, 'a new connection is dropped');
    const after = await raw.exchange(request('GET', `/public/after-${tag}`), 'HTTP/1.1', 1, 4000);
    t.notMatch(after.got, /^HTTP\/1\.1 200/, `the open connection got no answer from the server: ${JSON.stringify(after)}`);
    t.ok(/^HTTP\/1\.1 403/.test(after.got) || after.closed || after.error, 'it was refused (403), closed or left unanswered');
    t.notMatch(logOf(), `/public/after-${tag}`, 'the server never received the request');
  });
}
