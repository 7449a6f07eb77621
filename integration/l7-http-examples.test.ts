// L7 HTTP policy on real traffic, the example policies (examples/policies/l7-http): methods, paths,
// headers, hosts, additive rules, egress to the world by Host, and the CLI's validate, trace and
// endpoint get for them (the setup: lib/l7-http-file.ts).
import t from 'tap';
import path from 'node:path';
import { curl } from './lib/http.ts';
import { probe } from './lib/probe.ts';
import { FIXTURES, fixture, ip4, l7HttpForFile } from './lib/l7-http-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);

t.test('storefront-reads.yaml: GET /catalog from checkout only', async (t) => {
  const { eps, nsOf, importL7, reset, url } = f;
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
  const { nsOf, importL7, reset, url } = f;
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
  const { eps, nsOf, importL7, reset, url } = f;
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
  const { pc, nsOf, W1, importL7, reset, url } = f;
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

t.test('the CLI: the HTTP examples validate; trace answers for an HTTP request; endpoint get shows the L7 rules', async (t) => {
  const { eps, importL7, reset, cli } = f;
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
