// Attempts to use the L7 proxy to get around L3/L4 policy (deny precedence, a Host naming another pod,
// the proxy's own port), and traffic from the world diverted on its way in (the setup: lib/l7-http-file.ts).
import t from 'tap';
import { curl } from './lib/http.ts';
import { probe } from './lib/probe.ts';
import { l7WorkersConnected } from './lib/l7-workers.ts';
import { API, ip4, l7HttpForFile } from './lib/l7-http-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);

// First in the file, while no worker runs: with 41d113d's bug the import's own change found no HTTP
// rule (the store had not committed it yet), the workers were never wanted ("needed": false) and only
// a later ADD would have brought them.
t.test('an HTTP policy after the pods: the workers start; pods added after it are enforced too', async (t) => {
  const { agent, nsOf, pc, pod, reset, url } = f;
  t.teardown(reset);
  await pc.import(API());
  // The snapshot the import's change handed over already had the HTTP rules (not a later change's).
  t.match((await agent.client.status()).l7, { needed: true }, 'the agent wants its workers once the import answers');
  await l7WorkersConnected(agent.client);
  t.equal((await curl(nsOf.good, url('web', 80, '/public/a'))).status, 200, 'good -> web GET /public/a: allowed');
  t.equal((await curl(nsOf.good, url('web', 80, '/private'))).body, 'Access denied', 'good -> web GET /private: 403');
  // A server and a client created under the policy: each ADD's snapshot names them.
  await pod('web2', { app: 'storefront-2', tier: 'web' }, [80]);
  await pod('late', { app: 'checkout-late', stage: 'live' });
  const ok = await curl(nsOf.late, url('web2', 80, '/public/b'));
  t.equal(ok.status, 200, 'late -> web2 GET /public/b: allowed');
  t.match(JSON.parse(ok.body), { server: 'web2' });
  t.equal((await curl(nsOf.late, url('web2', 80, '/private'))).body, 'Access denied', 'late -> web2 GET /private: 403');
  t.equal((await curl(nsOf.good, url('web2', 80, '/secret'))).body, 'Access denied', 'good -> web2 GET /secret: 403');
  t.equal((await curl(nsOf.bad, url('web2', 80, '/public/c'), [], { timeoutS: 2 })).status, 0, 'crawler -> web2: dropped at L3');
});

t.test('deny precedence and L3/L4 first: the proxy is no way around them', async (t) => {
  const { agent, eps, nsOf, importL7, reset, url } = f;
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
  t.not(await probe(nsOf.good, gw, port, 5000), 'ok', `pod -> node ${gw}:${port} (the proxy port) is not served`);
});

t.test('from the world to a pod: diverted on the way in (the hairpin through the host device)', async (t) => {
  const { eps, world, importL7, reset, url } = f;
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
