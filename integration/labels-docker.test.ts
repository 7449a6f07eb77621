// Labels before the first packet on a real dockerd: the README's `docker run --rm ... ping -c1
// <gateway>` works every time with a policy loaded; a container whose labels the Docker API has not
// told yet can neither send nor be reached (its link is down, its first packets wait in its own
// neighbour queue); a Docker API that never answers leaves it up in identity init, which the init
// policy keeps closed while any policy exists. The agent finds the Docker API through DOCKER_HOST
// here (a proxy in front of the test's dockerd that can hold the container list on demand).
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { dockerFixture, dockerSubnet, eventually, type DockerTestEnv } from './lib/docker-env.ts';
import { startDockerApiProxy, type DockerApiProxy } from './lib/docker-proxy.ts';
import { BB_IMAGE_LABEL } from './lib/bbimage.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Endpoint } from '../shared/src/types.ts';
import { REPO, randomId } from './lib/agent.ts';

function membraneCli(e: DockerTestEnv, args: string[]): string {
  return execFileSync(
    process.execPath,
    ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), '--socket', e.agent.socket, ...args],
    { encoding: 'utf8', cwd: REPO },
  );
}

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}
t.setTimeout(20 * 60_000);

const fixture = dockerFixture(t);

const OTHER_POLICY = (name: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`;

async function proxied(t: Test, agentArgs: string[] = []): Promise<{ e: DockerTestEnv; proxy: DockerApiProxy }> {
  const d = fixture.dockerd();
  const proxy = await startDockerApiProxy(path.join(d.root, `api-proxy-${randomId(3)}.sock`), d.socket);
  t.teardown(() => proxy.close());
  const e = await fixture.env(t, d, { dockerHost: `unix://${proxy.socket}`, agentArgs });
  return { e, proxy };
}

function linkUp(name: string): boolean {
  return /state UP|,UP[,>]/.test(execFileSync('ip', ['-o', 'link', 'show', 'dev', name], { encoding: 'utf8' }));
}

async function endpointOf(e: DockerTestEnv, container: string, net: string): Promise<Endpoint> {
  const { endpointId } = await e.addressOf(container, net);
  const ep = (await e.agent.client.listEndpoints()).find((x) => x.docker?.endpointId === endpointId);
  if (!ep) throw new Error(`no endpoint for ${container}`);
  return ep;
}

t.test('README: docker run --rm ... ping -c1 <gateway> succeeds 20 of 20 times with a policy loaded', async (t) => {
  const { e, proxy } = await proxied(t);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  await new PolicyClient(e.agent.client).import(OTHER_POLICY(`other-${randomId(2)}`));
  const results: { ok: boolean; ms: number }[] = [];
  for (let i = 0; i < 20; i++) {
    const t0 = Date.now();
    const r = await e.dockerTry(['run', '--rm', '--network', net, e.image, 'ping', '-c1', '-W', '5', s.gateway], 120_000);
    results.push({ ok: r.code === 0, ms: Date.now() - t0 });
    if (r.code !== 0) t.comment(`run ${i}: exit ${r.code}: ${r.stdout.trim()} ${r.stderr.trim()}`);
  }
  const ok = results.filter((r) => r.ok).length;
  t.equal(ok, 20, `${ok}/20 pings answered (docker run took ${results.map((r) => r.ms).join(', ')} ms)`);
  t.ok(proxy.listCalls() >= 20, 'labels came from the Docker API (through DOCKER_HOST)');
  t.ok(
    await eventually(async () => (await e.agent.client.listEndpoints()).length === 0, 30_000),
    '--rm containers left no endpoint',
  );
  const ids = (await new PolicyClient(e.agent.client).identities()).filter((i) => i.kind === 'endpoint');
  t.same(
    ids.map((i) => i.labels),
    [{ [`container:${BB_IMAGE_LABEL.key}`]: BB_IMAGE_LABEL.value }],
    '20 containers of one image, one identity (no container ids or names in it): identity list does not grow with churn',
  );
});

t.test('labels pending: neither sending nor reachable, then open once the Docker API answered', async (t) => {
  const { e, proxy } = await proxied(t);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const peer = await e.run(['--network', net, '--label', 'app=peer']);
  t.ok(await e.pingEventually(peer, s.gateway), 'a labelled peer talks');
  const peerIp = (await e.addressOf(peer, net)).ip;

  proxy.hold(true);
  const held = await e.run(['--network', net, '--label', 'app=held']);
  const ep = await endpointOf(e, held, net);
  t.match(ep, { identity: 5, labelsPending: { source: 'docker' } }, 'pending: identity init');
  t.notOk(linkUp(ep.hostIfName), 'its host link is down');
  t.notOk(await e.ping(held, s.gateway), 'it cannot send (the gateway does not answer)');
  t.notOk(await e.ping(peer, (await e.addressOf(held, net)).ip), 'it cannot be reached');

  proxy.hold(false);
  t.ok(await eventually(async () => !(await endpointOf(e, held, net)).labelsPending, 30_000), 'labels arrived');
  const after = await endpointOf(e, held, net);
  t.equal(after.labels['container:app'], 'held');
  t.ok(after.identity >= 256, `identity ${after.identity}`);
  t.equal(after.docker?.containerName, held, 'the container is known by name');
  t.ok(linkUp(after.hostIfName), 'its link is up');
  t.ok(await e.pingEventually(held, s.gateway), 'it sends');
  t.ok(await e.pingEventually(held, peerIp), 'and talks to its peer');
  // Docker's own IPAM handed both addresses out; `membrane ipam list` still counts them in the network's pool.
  const heldIp = (await e.addressOf(held, net)).ip;
  const pool = (await e.agent.client.ipam()).find((p) => p.subnets.some((x) => x.cidr === s.cidr));
  t.equal(
    pool?.subnets.find((x) => x.cidr === s.cidr)?.allocated,
    2,
    `ipam list: USED 2 in ${s.cidr} (Docker-IPAM addresses counted)`,
  );
  t.same(pool?.allocations.map((a) => a.ip).sort(), [peerIp, heldIp].sort(), 'and lists them');
  // `network list` names the network as Docker does (the agent's name is docker-<id prefix>).
  t.ok(
    await eventually(async () => (await e.agent.client.listNetworks()).some((n) => n.dockerName === net), 30_000),
    'the API knows the Docker name',
  );
  t.match(
    membraneCli(e, ['network', 'list']),
    new RegExp(`^docker-[0-9a-f]{12} \\(${net}\\) +${s.cidr.replace(/\./g, '\\.')}`, 'm'),
    `network list shows "${net}"`,
  );

  // Every name a Docker user sees finds it.
  const cid = (await e.docker(['inspect', '-f', '{{.Id}}', held])).trim();
  for (const ref of [held, cid, cid.slice(0, 12), after.docker!.endpointId, String(after.id)]) {
    t.equal((await e.agent.client.findEndpoint(ref)).id, after.id, `found by ${ref === held ? 'its name' : ref}`);
  }
  const get = membraneCli(e, ['endpoint', 'get', held]);
  t.match(get, new RegExp(`Container: +${cid} \\(${held}\\)`), '`membrane endpoint get <name>`');
  t.match(get, /Selected by: +- \(no policy selects it: allow all\)/, 'and says why it is open');
});

t.test('a Docker API that never answers: up in init after --label-timeout, closed while any policy exists', async (t) => {
  const { e, proxy } = await proxied(t, ['--label-timeout', '2']);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const peer = await e.run(['--network', net, '--label', 'app=peer']);
  const peerIp = (await e.addressOf(peer, net)).ip;
  t.ok(await e.pingEventually(peer, s.gateway));
  const pc = new PolicyClient(e.agent.client);
  await pc.import(OTHER_POLICY(`other-${randomId(2)}`));

  proxy.hold(true);
  const stuck = await e.run(['--network', net, '--label', 'app=stuck']);
  t.ok(
    await eventually(async () => (await endpointOf(e, stuck, net)).labelsPending?.expired === true, 30_000),
    'the timeout passed',
  );
  const ep = await endpointOf(e, stuck, net);
  t.equal(ep.identity, 5, 'still init');
  t.ok(linkUp(ep.hostIfName), 'its link is up');
  t.notOk(await e.ping(stuck, peerIp), 'init is closed while a policy exists');
  const view = await pc.endpoint(ep.docker!.endpointId, ep.ifName);
  t.match(
    view,
    { init: true, policies: [], enforcement: { ingress: 'default-deny', egress: 'default-deny' } },
    'endpoint get names the init policy',
  );
  await pc.delete('all');
  t.ok(await e.pingEventually(stuck, peerIp), 'no policy at all: init is open too');

  proxy.hold(false);
  t.ok(
    await eventually(async () => (await endpointOf(e, stuck, net)).labels['container:app'] === 'stuck', 15_000),
    'labels arrive late, and are taken',
  );
  t.ok((await endpointOf(e, stuck, net)).identity >= 256);
});
