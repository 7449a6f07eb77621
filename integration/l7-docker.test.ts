// L7 HTTP policy on Docker containers (a private dockerd, the agent hosting the Membrane network
// plugin): busybox httpd in one container, nc speaking HTTP/1.0 in others; the HTTP rules hold on container traffic,
// L3 selection still comes first, and each request is an L7 flow naming the containers. Everything
// is removed.
import t from 'tap';
import { dockerFixture, dockerSubnet, eventually, type DockerTestEnv } from './lib/docker-env.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { ObserverClient } from '../shared/src/flows/client.ts';
import { randomId } from './lib/agent.ts';
import { l7WorkersConnected } from './lib/l7-workers.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}
t.setTimeout(15 * 60_000);

const { env } = dockerFixture(t);

/** One HTTP/1.0 request from a container with busybox nc (its wget needs NSS the image lacks): the
 *  status line and body, or what went wrong. */
async function httpGet(e: DockerTestEnv, from: string, ip: string, path: string): Promise<string> {
  const r = await e.exec(from, ['sh', '-c', `printf 'GET ${path} HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n' | nc -w 3 ${ip} 80`]);
  return r.stdout || `no answer (exit ${r.code}) ${r.stderr.trim()}`;
}

t.test('Docker containers: HTTP rules on container traffic, L7 flows name the containers', async (t) => {
  const e = await env(t);
  const pc = new PolicyClient(e.agent.client);
  const net = await e.network(['--subnet', dockerSubnet().cidr]);
  const web = await e.run(
    ['--network', net, '--label', 'app=web'],
    [
      'sh',
      '-c',
      'mkdir -p /www/public && echo hello-public > /www/public/index.html && echo the-secret > /www/private.html && exec busybox httpd -f -p 80 -h /www',
    ],
  );
  const client = await e.run(['--network', net, '--label', 'app=client']);
  const other = await e.run(['--network', net, '--label', 'app=other']);
  const ip = (await e.addressOf(web, net)).ip;
  let last = '';
  t.ok(
    await eventually(async () => (last = await httpGet(e, client, ip, `/private.html`)).includes('the-secret'), 30_000),
    `no policy: everything is served (${last})`,
  );
  t.ok(
    await eventually(async () => (await e.agent.client.listEndpoints()).every((x) => x.labels['container:app']), 30_000),
    'labels learnt from Docker',
  );

  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: docker-web-l7}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}]}}]
`);
  await l7WorkersConnected(e.agent.client);
  const marker = `/public/index.html?m=${randomId()}`;
  t.match(await httpGet(e, client, ip, `${marker}`), /^HTTP\/1\.[01] 200 [\s\S]*hello-public/, 'client GET /public/...: served');
  t.match(
    await httpGet(e, client, ip, `/private.html`),
    /^HTTP\/1\.[01] 403 Forbidden[\s\S]*Access denied$/,
    'client GET /private.html: 403 from the proxy',
  );
  t.match(
    await httpGet(e, client, ip, `/public/../private.html`),
    /^HTTP\/1\.[01] 403 /,
    'a dot-segment path is matched as the server resolves it',
  );
  t.match(await httpGet(e, other, ip, `/public/index.html`), /^no answer/, 'other: not allowed at L3, never reaches the proxy');
  t.notMatch(await httpGet(e, other, ip, `/public/index.html`), /hello-public/);

  const observer = new ObserverClient(e.agent.observerSocket);
  t.teardown(() => observer.close());
  const flows = async () =>
    (await observer.collect({ number: 100, whitelist: [{ eventType: [{ type: 129 }] }] })).map((r) => r.flow!);
  t.ok(
    await eventually(async () => (await flows()).some((f) => f.l7?.http?.url?.endsWith(marker)), 30_000),
    'the request is an L7 flow',
  );
  const all = await flows();
  const req = all.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.url?.endsWith(marker));
  t.match(req, { verdict: 'FORWARDED', l7: { http: { method: 'GET' } }, ingressAllowedBy: [{ name: 'docker-web-l7' }] });
  t.match(JSON.stringify(req?.source?.labels), /app=client/, 'the source is the client container');
  t.match(JSON.stringify(req?.destination?.labels), /app=web/, 'the destination is the web container');
  const denied = all.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.url?.endsWith('/private.html'));
  t.match(denied, { verdict: 'DROPPED', ingressDeniedBy: [{ name: 'docker-web-l7' }] }, 'the denied request too');
  await pc.delete('all');
  t.ok(
    await eventually(async () => (await httpGet(e, client, ip, `/private.html`)).includes('the-secret'), 30_000),
    'policy deleted: served again',
  );
});
