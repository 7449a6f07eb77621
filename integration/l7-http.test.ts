// L7 HTTP policy on real traffic: HTTP servers and clients in netns pods and a "world" netns of our own
// (198.18.0.0/15), the agent's proxy in between. The example policies (examples/policies/l7-http), methods, paths, headers,
// hosts, deny precedence, keep-alive with mixed verdicts, pipelining, a 100 MB chunked upload with
// bounded proxy memory, WebSocket upgrade, policy changes on open connections, and attempts to use
// the proxy to get around L3/L4 policy. Every name and address is unique to this run.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { randomId, REPO, startAgent, type TestAgent } from './lib/agent.ts';
import { curl, RawHttp, request, startHttpServer, webSocket } from './lib/http.ts';
import { probe } from './lib/probe.ts';
import { killAll } from './lib/tcp.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { spawn } from 'node:child_process';
import type { Endpoint } from '../shared/src/types.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const FIXTURES = path.join(REPO, 'examples/policies/l7-http');
const ip4 = (e: Endpoint) => e.ips.find((x) => x.family === 4)!.address.split('/')[0];

let agent: TestAgent;
let pc: PolicyClient;
const nss: TestNetns[] = [];
const servers: ChildProcess[] = [];
const eps: Record<string, Endpoint> = {};
const nsOf: Record<string, TestNetns> = {};
const R = crypto.randomInt(0, 512);
const WORLD_NET = `198.${18 + (R >> 8)}.${R & 255}`;
const W1 = `${WORLD_NET}.10`;
const wHost = `mbw${randomId(3)}`;
let world: TestNetns;

async function pod(name: string, labels: Record<string, string>, serve: number[] = []): Promise<Endpoint> {
  const ns = createNetns('mbl');
  nss.push(ns);
  const ep = await agent.client.createEndpoint({
    containerId: `l7-${name}-${randomId()}`,
    netns: ns.path,
    ifName: 'eth0',
    labels,
  });
  eps[name] = ep;
  nsOf[name] = ns;
  for (const port of serve) servers.push(await startHttpServer(ns, port, name));
  return ep;
}

function cli(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    MEMBRANE_SOCKET: agent.socket,
    MEMBRANE_OBSERVER_SOCKET: agent.observerSocket,
  };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), ...args], {
    cwd: REPO,
    env,
  });
  let out = '',
    err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
  });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, out, err })));
}

const fixture = (f: string) => fs.readFileSync(path.join(FIXTURES, f), 'utf8');

/** Imports, then waits until every proxy worker has the new policy's connection (they start with the first L7 rule). */
async function importL7(yaml: string): Promise<void> {
  await pc.import(yaml);
  const end = Date.now() + 60_000;
  for (;;) {
    const l7 = (await agent.client.status()).l7 as { workers: { connected: boolean }[] };
    if (l7.workers.every((w) => w.connected)) return;
    if (Date.now() > end) throw new Error(`L7 proxy workers did not connect: ${JSON.stringify(l7)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const reset = () => pc.delete('all');
const url = (name: string, port: number, p: string) => `http://${ip4(eps[name])}:${port}${p}`;

t.before(async () => {
  agent = await startAgent();
  pc = new PolicyClient(agent.client);
  await pod('web', { app: 'storefront', tier: 'web' }, [8080, 80]);
  await pod('good', { app: 'checkout', stage: 'live' });
  await pod('bad', { app: 'crawler' });
  await pod('inv', { app: 'inventory' }, [80]);
  world = createNetns('mbw');
  nss.push(world);
  execFileSync('ip', ['link', 'add', wHost, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', world.path]);
  execFileSync('ip', ['link', 'set', wHost, 'up']);
  execFileSync('sysctl', ['-qw', `net.ipv4.conf.${wHost}.proxy_arp=1`, `net.ipv4.neigh.${wHost}.proxy_delay=0`]);
  await world.exec('ip', ['addr', 'add', `${W1}/32`, 'dev', 'eth0']);
  execFileSync('ip', ['route', 'add', `${W1}/32`, 'dev', wHost]);
  await world.exec('ip', ['link', 'set', 'eth0', 'up']);
  // The proxy talks to the world from the node's own address: the world routes everything back.
  await world.exec('ip', ['route', 'add', 'default', 'dev', 'eth0']);
  servers.push(await startHttpServer(world, 80, 'world'));
});

t.teardown(async () => {
  killAll(servers);
  try {
    execFileSync('ip', ['link', 'del', wHost], { stdio: 'ignore' });
  } catch {
    /* gone with the netns */
  }
  try {
    execFileSync('ip', ['route', 'del', `${W1}/32`], { stdio: 'ignore' });
  } catch {
    /* gone */
  }
  await agent?.cleanup();
  for (const ns of nss) ns.remove();
});

t.test('storefront-reads.yaml: GET /catalog from checkout only', async (t) => {
  t.teardown(reset);
  await importL7(fixture('storefront-reads.yaml'));
  const ok = await curl(nsOf.good, url('web', 8080, '/catalog'));
  t.equal(ok.status, 200, 'checkout GET /catalog');
  t.match(JSON.parse(ok.body), { server: 'web', method: 'GET', url: '/catalog' }, 'the request reached the server unchanged');
  const denied = await curl(nsOf.good, url('web', 8080, '/orders'));
  t.same([denied.status, denied.body], [403, 'Access denied'], 'checkout GET /orders: 403 "Access denied"');
  t.equal((await curl(nsOf.good, url('web', 8080, '/catalog'), ['-X', 'POST'])).status, 403, 'POST /catalog: method not allowed');
  t.equal(
    (await curl(nsOf.bad, url('web', 8080, '/catalog'), [], { timeoutS: 2 })).status,
    0,
    'crawler: dropped at L3, never reaches the proxy',
  );
  t.equal(await probe(nsOf.good, ip4(eps.web), 80), 'timeout', 'port 80 is not allowed at all');
});

t.test('inventory-api.yaml: methods, whole-path regexes, a required header', async (t) => {
  t.teardown(reset);
  await importL7(fixture('inventory-api.yaml'));
  t.equal((await curl(nsOf.good, url('inv', 80, '/stock'))).status, 200, 'GET /stock');
  t.equal((await curl(nsOf.good, url('inv', 80, '/stock/x'))).status, 403, 'GET /stock/x: the regex matches the whole path');
  t.equal(
    (await curl(nsOf.good, url('inv', 80, '/restock'), ['-X', 'PUT'])).status,
    403,
    'PUT /restock without X-Inventory-Role',
  );
  t.equal(
    (await curl(nsOf.good, url('inv', 80, '/restock'), ['-X', 'PUT', '-H', 'X-Inventory-Role: reader'])).status,
    403,
    'with another value',
  );
  const put = await curl(nsOf.good, url('inv', 80, '/restock'), ['-X', 'PUT', '-H', 'X-Inventory-Role: writer', '-d', 'payload']);
  t.equal(put.status, 200, 'PUT /restock with X-Inventory-Role: writer');
  t.match(JSON.parse(put.body), { method: 'PUT', bytes: 7, headers: { 'x-inventory-role': 'writer' } });
});

t.test('storefront-additive.yaml: stage=live may do anything (L3 rule), everyone else GET /catalog', async (t) => {
  t.teardown(reset);
  await importL7(fixture('storefront-additive.yaml'));
  t.equal(
    (await curl(nsOf.good, url('web', 80, '/anything'), ['-X', 'DELETE'])).status,
    200,
    'live: rules are additive, the L3 rule allows all',
  );
  t.equal((await curl(nsOf.bad, url('web', 80, '/catalog'))).status, 200, 'crawler: GET /catalog');
  t.equal((await curl(nsOf.bad, url('web', 80, '/catalog'), ['-X', 'POST'])).status, 403, 'crawler: POST /catalog');
  t.equal(await probe(nsOf.bad, ip4(eps.web), 8080), 'timeout', 'crawler: no other port');
});

t.test('storefront-and-partner.yaml: egress to the world by Host, ingress by method and path', async (t) => {
  t.teardown(reset);
  await importL7(fixture('storefront-and-partner.yaml'));
  const world = (args: string[]) => curl(nsOf.good, `http://${W1}/submit`, args);
  const ok = await world(['-X', 'POST', '-H', 'Host: partner-api.example', '-d', 'x']);
  t.equal(ok.status, 200, 'live -> world: POST with Host partner-api.example');
  t.match(JSON.parse(ok.body), { server: 'world', headers: { host: 'partner-api.example' } });
  t.equal((await world(['-H', 'Host: partner-api.example'])).status, 403, 'GET is not allowed');
  t.equal(
    (await world(['-X', 'POST', '-H', 'Host: partner-api.example.attacker.test', '-d', 'x'])).status,
    403,
    'another Host is not allowed',
  );
  // Spec 1 is live's egress on port 80 to anyone, so it also applies to live -> storefront: both ends check.
  t.equal(
    (await curl(nsOf.good, url('web', 80, '/catalog'))).status,
    403,
    "live -> storefront GET /catalog: allowed by the storefront's ingress, denied by live's own egress",
  );
  const tr = await pc.trace(
    { labels: { app: 'checkout', stage: 'live' } },
    { labels: { app: 'storefront', tier: 'web' } },
    '80/tcp',
    { method: 'GET', path: '/catalog' },
  );
  t.match(
    tr,
    {
      verdict: 'deny',
      steps: [
        { direction: 'egress', verdict: 'deny' },
        { direction: 'ingress', verdict: 'allow' },
      ],
    },
    'trace says so, side by side',
  );
  t.equal(
    (await curl(nsOf.bad, url('web', 80, '/catalog'), [], { timeoutS: 2 })).status,
    0,
    'a client without stage=live is not allowed at L3',
  );
});

const API = (extra = '') => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api}
spec:
  endpointSelector: {matchLabels: {tier: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {stage: live}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: "GET|HEAD", path: "/public/.*"}
        - {method: "POST|PUT", path: "/upload"}
        - {method: GET, path: /ws}
${extra}`;

t.test('the CLI: the HTTP examples validate; trace answers for an HTTP request; endpoint get shows the L7 rules', async (t) => {
  t.teardown(reset);
  for (const f of ['storefront-reads.yaml', 'inventory-api.yaml', 'storefront-additive.yaml', 'storefront-and-partner.yaml']) {
    const v = await cli(['policy', 'validate', path.join(FIXTURES, f)]);
    t.same([v.code, v.err], [0, ''], `membrane policy validate ${f}`);
    t.match(v.out, /^valid: CiliumNetworkPolicy /);
  }
  await importL7(fixture('storefront-reads.yaml'));
  const trace = (method: string, p: string) =>
    cli([
      'policy',
      'trace',
      '--src',
      'app=checkout',
      '--dst',
      'app=storefront',
      '--dport',
      '8080/tcp',
      '--http-method',
      method,
      '--http-path',
      p,
    ]);
  const ok = await trace('GET', '/catalog');
  t.equal(ok.code, 0, 'GET /catalog: allowed (exit 0)');
  t.match(ok.out, /^ALLOWED: 8080\/tcp/i);
  const no = await trace('GET', '/orders');
  t.equal(no.code, 2, 'GET /orders: denied (exit 2)');
  t.match(
    no.out,
    /^DENIED[\s\S]*ingress\s+deny[\s\S]*http GET \/catalog\s+\(storefront-reads spec\.ingress\[0\]\.toPorts\[0\]\.rules\.http\[0\]\)/,
    `the HTTP rules it was held against:\n${no.out}`,
  );
  t.equal((await trace('POST', '/catalog')).code, 2, 'POST /catalog: denied');
  const ep = await cli(['endpoint', 'get', String(eps.web.id)]);
  t.equal(ep.code, 0);
  t.match(
    ep.out,
    /L7 ingress:\s+8080\/tcp from 1 peer identity through the HTTP proxy: GET \/catalog\n/,
    `endpoint get:\n${ep.out}`,
  );
});

t.test('Expect: 100-continue through the diverted path', async (t) => {
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

t.test('a 100 MB chunked upload streams through; neither the proxy workers nor the agent buffer it', async (t) => {
  t.teardown(reset);
  await importL7(API());
  const size = 100 * 1024 * 1024;
  // Well under the body: holding it would take 100 MiB; what a streaming worker gains is garbage not yet collected.
  const BOUND = 64 * 1024 * 1024;
  const workers = ((await agent.client.status()).l7 as { workers: { pid?: number }[] }).workers
    .map((w) => w.pid!)
    .filter(Boolean);
  t.ok(workers.length > 0, `proxy workers: ${workers.join(', ')}`);
  const rss = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
  const watched = [...workers.map((pid) => ({ name: `worker ${pid}`, pid })), { name: 'agent', pid: agent.pid()! }];
  const start = watched.map((w) => rss(w.pid));
  const peak = [...start];
  const sample = () =>
    watched.forEach((w, i) => {
      try {
        peak[i] = Math.max(peak[i], rss(w.pid));
      } catch {
        /* gone */
      }
    });
  const sampler = setInterval(sample, 25);
  const zeros = spawn('head', ['-c', String(size), '/dev/zero'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const r = await curl(nsOf.good, url('web', 80, '/upload'), ['-T', '-', '-H', 'Transfer-Encoding: chunked'], {
    timeoutS: 180,
    stdin: zeros,
  });
  clearInterval(sampler);
  sample();
  t.equal(r.status, 200);
  const want = crypto.createHash('sha256').update(Buffer.alloc(size)).digest('hex');
  t.match(JSON.parse(r.body), { bytes: size, sha256: want }, 'every byte arrived, in order');
  watched.forEach((w, i) => {
    const grew = peak[i] - start[i];
    t.ok(
      grew < BOUND,
      `${w.name}: RSS ${(start[i] / 1048576).toFixed(0)} -> peak ${(peak[i] / 1048576).toFixed(0)} MiB (+${(grew / 1048576).toFixed(1)} MiB, bound ${BOUND / 1048576} MiB) for a ${size / 1048576} MiB body`,
    );
  });
});

t.test('WebSocket: a client on an allowed path talks both ways; on a denied path the upgrade is refused', async (t) => {
  t.teardown(reset);
  await importL7(API());
  const ws = (p: string, messages: string[]) => webSocket(nsOf.good, `ws://${ip4(eps.web)}${p}`, messages);
  const ok = await ws('/ws', ['hello', 'bytes:100000', 'bye']);
  t.same(
    ok,
    { opened: true, got: ['echo:hello', 'bytes:100005:echo:', 'echo:bye'], closeCode: 1000 },
    "Node's WebSocket client: handshake accepted (its key checked), a text, a 100 kB binary and a text message echoed, a clean close",
  );
  const denied = await ws('/chat', ['hello']);
  t.match(
    denied,
    { opened: false, got: [], error: /non-101 status/ },
    `GET /chat is not allowed: the client never gets a WebSocket (${denied.error})`,
  );
  // What the client was told, byte for byte; and the tunnel works for a client that speaks no WebSocket framing.
  const raw = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => raw.close());
  const upgrade = (p: string) => request('GET', p, 'svc', { Connection: 'Upgrade', Upgrade: 'websocket' });
  const no = await raw.exchange(upgrade('/chat'), 'Access denied');
  t.match(no.got, /^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*\r\n\r\nAccess denied$/, 'a 403 "Access denied", not a 101');
  t.match(
    (await raw.exchange(upgrade('/ws'), '\r\n\r\n')).got,
    /^HTTP\/1\.1 101 Switching Protocols/,
    'and the same connection may then upgrade on an allowed path',
  );
  t.equal((await raw.exchange('frame-1', 'echo:frame-1')).got, 'echo:frame-1', 'after which bytes pass both ways untouched');
});

t.test('a policy change takes effect on the next request of an open connection', async (t) => {
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

t.test('deny precedence and L3/L4 first: the proxy is no way around them', async (t) => {
  t.teardown(reset);
  await importL7(
    API(`  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: crawler}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`),
  );
  t.equal(
    (await curl(nsOf.bad, url('web', 80, '/public/a'), [], { timeoutS: 2 })).status,
    0,
    'crawler: denied at L4 although an L7 rule allows all requests',
  );
  t.equal((await curl(nsOf.good, url('web', 80, '/anything'))).status, 200, 'live: the empty HTTP rule allows every request');
  // A Host header naming another pod does not move the request: the proxy connects to the original destination.
  const r = await curl(nsOf.good, url('web', 80, '/public/x'), ['-H', `Host: ${ip4(eps.inv)}`]);
  t.match(JSON.parse(r.body), { server: 'web' }, 'the request went to the destination the client connected to');
  // The proxy's port is on loopback only: a pod cannot reach it directly.
  const port = (await agent.client.status()).l7!.port as number;
  const gw = eps.good.ips.find((x) => x.family === 4)!.gateway;
  t.not(await probe(nsOf.good, gw, port), 'ok', `pod -> node ${gw}:${port} (the proxy port) is not served`);
});

t.test('from the world to a pod: diverted on the way in (the hairpin through the host device)', async (t) => {
  t.teardown(reset);
  await importL7(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-world}
spec:
  endpointSelector: {matchLabels: {tier: web}}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}]}}]
`);
  const ok = await curl(world, url('web', 80, '/public/w'));
  t.equal(ok.status, 200, 'world GET /public/w');
  t.match(JSON.parse(ok.body), { server: 'web', url: '/public/w' });
  const denied = await curl(world, [url('web', 80, '/private'), url('web', 80, '/public/again')]);
  t.same([denied.status, denied.connects], [200, 1], 'a denied request and an allowed one on one connection from the world');
  t.equal((await curl(world, url('web', 80, '/private'))).body, 'Access denied');
  t.equal(await probe(world, ip4(eps.web), 8080), 'timeout', 'other ports stay closed');
});

t.test('every request and response is an L7 flow: gRPC, membrane observe, metrics', async (t) => {
  t.teardown(reset);
  await importL7(API());
  const marker = `/public/flow-${randomId()}`;
  t.equal((await curl(nsOf.good, url('web', 80, marker))).status, 200);
  t.equal((await curl(nsOf.good, url('web', 80, `${marker}-denied`), ['-X', 'DELETE'])).status, 403);
  const observer = new ObserverClient(agent.observerSocket);
  t.teardown(() => observer.close());
  const l7Flows = async () =>
    (await observer.collect({ number: 1000, whitelist: [{ eventType: [{ type: 129 }], httpPath: [`^${marker}`] }] })).map(
      (r) => r.flow!,
    );
  let flows = await l7Flows();
  for (let i = 0; i < 50 && flows.length < 4; i++) {
    await new Promise((r) => setTimeout(r, 100));
    flows = await l7Flows();
  }
  const req = flows.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.method === 'GET');
  const res = flows.find((f) => f.l7?.type === 'RESPONSE' && f.l7.http?.method === 'GET');
  const denied = flows.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.method === 'DELETE');
  const deniedRes = flows.find((f) => f.l7?.type === 'RESPONSE' && f.l7.http?.method === 'DELETE');
  t.match(
    req,
    {
      Type: 'L7',
      verdict: 'FORWARDED',
      trafficDirection: 'INGRESS',
      IP: { source: ip4(eps.good), destination: ip4(eps.web) },
      l4: { TCP: { destinationPort: 80 } },
      l7: {
        type: 'REQUEST',
        http: { method: 'GET', url: `http://${ip4(eps.web)}:80${marker}`.replace(':80/', '/'), protocol: 'HTTP/1.1' },
      },
      source: { ID: eps.good.id, identity: eps.good.identity, labels: ['app=checkout', 'stage=live'] },
      destination: { ID: eps.web.id, identity: eps.web.identity },
      ingressAllowedBy: [{ name: 'api', membraneRulePath: 'spec.ingress[0].toPorts[0].rules.http[0]' }],
    },
    'the request: endpoints, identities, labels, the HTTP rule that allowed it',
  );
  t.match(res, {
    verdict: 'FORWARDED',
    isReply: { value: true },
    IP: { source: ip4(eps.web), destination: ip4(eps.good) },
    l7: { type: 'RESPONSE', http: { code: 200 } },
  });
  t.ok((res?.l7?.latencyNs ?? 0) > 0, `the response has a latency (${res?.l7?.latencyNs} ns)`);
  t.match(denied, { verdict: 'DROPPED', ingressDeniedBy: [{ name: 'api' }], Summary: /denied by ingress HTTP rules of api/ });
  t.match(deniedRes, { l7: { http: { code: 403 } } });
  const line = await cli(['observe', '--type', 'l7', '--http-method', 'DELETE', '--http-path', `^${marker}`, '--last', '10']);
  t.match(
    line.out,
    /http-request DROPPED \(HTTP\/1\.1 DELETE http:\/\/[^ ]+-denied/,
    `membrane observe --type l7 --http-method: ${line.out.trim()}`,
  );
  const status = await cli([
    'observe',
    '--type',
    'l7',
    '--http-status',
    '403',
    '--http-path',
    `^${marker}`,
    '--last',
    '10',
    '-o',
    'json',
  ]);
  t.equal(status.out.trim().split('\n').length, 1, '--http-status 403: the one denied response');
  const metricsAddr = ((await agent.client.status()) as { metrics: { address: string } }).metrics.address;
  const text = await (await fetch(`http://${metricsAddr}/metrics`)).text();
  t.match(text, /membrane_l7_requests_total\{method="DELETE",status="403",verdict="denied"\} [1-9]/);
  t.match(text, /membrane_l7_request_duration_seconds_count\{endpoint="[^"]+"\} [1-9]/);
});
