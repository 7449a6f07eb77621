// Container and daemon lifecycles through the Docker plugin: run/stop/start/restart/rm, network
// connect/disconnect, agent restart (SIGTERM and kill -9) with traffic flowing, `--restart always`
// containers across an agent restart, and a dockerd restart. After each step: the right endpoints
// exist in membrane, traffic flows, and nothing of a removed endpoint is left on the host.
import t from 'tap';
import { linkGone } from './lib/netns.ts';
import { dockerFixture, dockerSubnet, eventually, sleep, startDockerd, type DockerTestEnv } from './lib/docker-env.ts';

// Real dockerd + containers: minutes under load, more than tap's default per-file timeout.
t.setTimeout(15 * 60_000);

const { env } = dockerFixture(t);

/** Endpoints of a membrane agent keyed by Docker container name (once labelled). */
async function byContainer(e: DockerTestEnv): Promise<Map<string, { hostIfName: string; ip: string }>> {
  const out = new Map<string, { hostIfName: string; ip: string }>();
  for (const ep of await e.agent.client.listEndpoints()) {
    out.set(ep.docker?.containerName ?? ep.containerId, { hostIfName: ep.hostIfName, ip: ep.ips[0].address.split('/')[0] });
  }
  return out;
}

async function restartCount(e: DockerTestEnv, container: string): Promise<number> {
  return Number((await e.docker(['inspect', '-f', '{{.RestartCount}}', container])).trim());
}

/** Waits until dockerd has `container` running again. Not `.State.Running`: dockerd sets it (and counts
 *  the restart) as soon as the restart policy schedules a restart, while the container still waits out
 *  its back-off with its network released and no address ("restarting"). An address read then is
 *  empty, and a ping to it fails however long it is tried. */
async function runningAgain(e: DockerTestEnv, container: string, ms: number): Promise<boolean> {
  return eventually(async () => (await e.docker(['inspect', '-f', '{{.State.Status}}', container])).trim() === 'running', ms);
}

/** Runs a ping train inside `container` and returns the loss in percent. */
/** A ping every 100 ms; the percentage lost. After the last one busybox ping waits -W seconds for
 *  the replies still out: generous (5 s), so that a ping process not scheduled for a while on a
 *  loaded machine reads replies that came; a dropped packet stays lost however long it waits. */
async function pingTrain(e: DockerTestEnv, container: string, ip: string, count: number): Promise<{ loss: number; out: string }> {
  const r = await e.exec(container, ['ping', '-q', '-c', String(count), '-i', '0.1', '-W', '5', ip], 60_000);
  const m = /(\d+)% packet loss/.exec(r.stdout);
  return { loss: m ? Number(m[1]) : 100, out: r.stdout.trim().split('\n').slice(-2).join('; ') };
}

t.test('docker stop / start / restart / rm keep membrane in step', async (t) => {
  const e = await env(t);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const srv = await e.run(['--network', net]);
  const cli = await e.run(['--network', net]);
  t.ok(await e.pingEventually(cli, (await e.addressOf(srv, net)).ip), 'running: cli -> srv');
  t.ok(await eventually(async () => (await byContainer(e)).has(srv)), 'srv endpoint labelled');
  const first = (await byContainer(e)).get(srv)!;

  await e.docker(['stop', '-t', '0', srv]);
  t.equal((await e.agent.client.listEndpoints()).length, 1, 'stop: its endpoint is deleted');
  t.ok(await linkGone(first.hostIfName), 'stop: its host veth is gone');

  await e.docker(['start', srv]);
  t.ok(await e.pingEventually(cli, (await e.addressOf(srv, net)).ip), 'start: reachable again');
  t.equal((await e.agent.client.listEndpoints()).length, 2, 'start: a new endpoint');
  t.ok(await eventually(async () => (await byContainer(e)).has(srv)), 'start: labelled again');

  await e.docker(['restart', '-t', '0', srv]);
  t.ok(await e.pingEventually(cli, (await e.addressOf(srv, net)).ip), 'restart: reachable again');
  t.ok(await e.ping(srv, s.gateway), 'restart: srv reaches its gateway');
  t.equal((await e.agent.client.listEndpoints()).length, 2, 'restart: still two endpoints');
  const restarted = (await byContainer(e)).get(srv);

  await e.docker(['rm', '-f', srv]);
  e.containers.delete(srv);
  const left = await e.agent.client.listEndpoints();
  t.equal(left.length, 1, 'rm: one endpoint left');
  if (restarted) t.ok(await linkGone(restarted.hostIfName), 'rm: host veth gone');
  t.ok(left[0].docker?.containerName === cli, 'the one left is the client');
});

t.test('docker network connect / disconnect', async (t) => {
  const e = await env(t);
  const sa = dockerSubnet(),
    sb = dockerSubnet();
  const na = await e.network(['--subnet', sa.cidr]);
  const nb = await e.network(['--subnet', sb.cidr]);
  const c = await e.run(['--network', na]);
  const peer = await e.run(['--network', nb]);
  const peerIp = (await e.addressOf(peer, nb)).ip;
  await e.docker(['network', 'connect', nb, c]);
  t.ok(await e.pingEventually(c, peerIp), 'connected: reaches the peer on the second network');
  t.match((await e.exec(c, ['ip', '-o', 'link'])).stdout, /eth1/, 'eth1 appeared');
  t.equal((await e.agent.client.listEndpoints()).length, 3);
  await e.docker(['network', 'disconnect', nb, c]);
  t.notMatch((await e.exec(c, ['ip', '-o', 'link'])).stdout, /eth1/, 'eth1 is gone');
  t.equal((await e.agent.client.listEndpoints()).length, 2, 'disconnect deleted the endpoint');
  await e.docker(['network', 'connect', nb, c]);
  t.ok(await e.pingEventually(c, peerIp), 'reconnected');
  t.ok(await e.ping(c, sa.gateway), 'still on the first network too');
});

t.test('agent restart (SIGTERM, then kill -9): containers keep talking; endpoints restored', async (t) => {
  const e = await env(t);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const a = await e.run(['--network', net]),
    b = await e.run(['--network', net]);
  const ipB = (await e.addressOf(b, net)).ip;
  t.ok(await e.pingEventually(a, ipB));
  t.ok(
    await eventually(
      async () => (await byContainer(e)).size === 2 && [...(await byContainer(e)).keys()].every((k) => k === a || k === b),
    ),
  );
  const before = (await e.agent.client.listEndpoints()).map((x) => x.containerId).sort();

  for (const how of ['stop', 'kill9'] as const) {
    // 5 s of pings: across the restart even when docker exec starts the train late (a loaded runner).
    const train = pingTrain(e, a, ipB, 50);
    await sleep(500);
    if (how === 'stop') await e.agent.stop();
    else await e.agent.kill9();
    await sleep(1000);
    await e.agent.restart();
    const { loss, out } = await train;
    t.ok(loss <= 10, `${how}: a ping train across the agent restart lost ${loss}% (${out})`);
    const after = await e.agent.client.listEndpoints();
    t.same(after.map((x) => x.containerId).sort(), before, `${how}: the same endpoints after the restart`);
    t.ok(
      after.every((x) => x.docker?.containerName && x.labels['container:org.membrane.test.image']),
      `${how}: container and labels kept`,
    );
  }
  // The restarted plugin serves new and old endpoints.
  const c = await e.run(['--network', net]);
  t.ok(await e.pingEventually(c, ipB), 'a container started after the restarts talks to an old one');
  await e.docker(['restart', '-t', '0', b]);
  t.ok(await e.pingEventually(a, (await e.addressOf(b, net)).ip), 'an old container restarts through the new plugin');
  t.equal((await e.agent.client.listEndpoints()).length, 3, 'no stale endpoint');
});

/** A --restart always container that exits (status 1) when /tmp/stop appears, so dockerd's restart
 *  policy starts it again. */
const restartAlwaysService = (e: DockerTestEnv, net: string) =>
  e.run(
    ['--network', net, '--restart', 'always'],
    ['sh', '-c', 'rm -f /tmp/stop; while [ ! -f /tmp/stop ]; do usleep 100000; done; exit 1'],
  );

t.test('--restart always container across an agent restart', async (t) => {
  const e = await env(t);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const svc = await restartAlwaysService(e, net);
  const cli = await e.run(['--network', net]);
  t.ok(await e.pingEventually(cli, (await e.addressOf(svc, net)).ip));
  await e.agent.restart();
  t.ok(await e.ping(cli, (await e.addressOf(svc, net)).ip), 'still reachable after the agent restart');
  const restartsBefore = await restartCount(e, svc);
  const stop = await e.exec(svc, ['sh', '-c', ': > /tmp/stop']);
  t.equal(stop.code, 0, `asked it to exit (${stop.stderr.trim()})`);
  t.ok(
    await eventually(async () => (await restartCount(e, svc)) > restartsBefore, 15_000),
    'dockerd restarted it (restart policy)',
  );
  t.ok(await runningAgain(e, svc, 15_000), 'running again');
  const ip = (await e.addressOf(svc, net)).ip;
  t.ok(ip, `its new address is known (${ip})`);
  t.ok(await e.pingEventually(cli, ip), 'reachable through its new endpoint');
  t.equal((await e.agent.client.listEndpoints()).length, 2, 'old endpoint deleted, new one created');
  // Told by the Docker API, not let up by the label timeout (a read of the old endpoint's labels in
  // flight across the restart once swallowed the new endpoint's: down 10 s, never named).
  t.ok(await eventually(async () => (await byContainer(e)).has(svc)), 'its new endpoint labelled');
});

t.test('a crash-looping --restart always container: reachable through each new endpoint, none left over', async (t) => {
  const e = await env(t);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const svc = await restartAlwaysService(e, net);
  const cli = await e.run(['--network', net]);
  t.ok(await e.pingEventually(cli, (await e.addressOf(svc, net)).ip));
  // Quick exits grow dockerd's back-off (100, 200, 400 ms ...): each restart spends longer "restarting"
  // with its network released; the endpoint goes with it and a new one comes with the next start.
  for (let round = 1; round <= 4; round++) {
    const before = await restartCount(e, svc);
    const old = (await byContainer(e)).get(svc);
    await e.exec(svc, ['sh', '-c', ': > /tmp/stop']);
    const back =
      (await eventually(async () => (await restartCount(e, svc)) > before, 15_000)) && (await runningAgain(e, svc, 15_000));
    const ip = (await e.addressOf(svc, net)).ip;
    t.ok(back && ip, `round ${round}: running again with an address (${ip})`);
    t.ok(await e.pingEventually(cli, ip), `round ${round}: reachable through its new endpoint`);
    t.equal((await e.agent.client.listEndpoints()).length, 2, `round ${round}: its old endpoint deleted`);
    if (old) t.ok(await linkGone(old.hostIfName), `round ${round}: the old host veth is gone`);
    t.ok(await eventually(async () => (await byContainer(e)).has(svc)), `round ${round}: the new endpoint labelled`);
  }
});

t.test('dockerd restart: restart-always containers come back, others release their endpoints', async (t) => {
  const own = await startDockerd();
  t.teardown(() => own.destroy());
  const e = await env(t, own);
  const s = dockerSubnet();
  const net = await e.network(['--subnet', s.cidr]);
  const always = await e.run(['--network', net, '--restart', 'always']);
  const plain = await e.run(['--network', net]);
  t.ok(await e.pingEventually(always, (await e.addressOf(plain, net)).ip));
  const old = await e.agent.client.listEndpoints();
  t.equal(old.length, 2);
  await own.restart();
  t.ok(await runningAgain(e, always, 30_000), 'restart-always container running again');
  t.equal((await e.docker(['inspect', '-f', '{{.State.Running}}', plain])).trim(), 'false', 'the plain one stays stopped');
  t.ok(await e.pingEventually(always, s.gateway), 'it reaches its gateway through a new endpoint');
  const now = await e.agent.client.listEndpoints();
  t.equal(now.length, 1, 'one endpoint: the restarted container');
  for (const ep of old) t.ok(await linkGone(ep.hostIfName), `old host veth ${ep.hostIfName} gone`);
  t.ok(
    await eventually(async () => (await e.agent.client.listEndpoints())[0]?.docker?.containerName === always, 30_000),
    'labelled after the dockerd restart (event stream reconnected)',
  );
  await e.docker(['start', plain]);
  t.ok(await e.pingEventually(plain, (await e.addressOf(always, net)).ip), 'the plain one starts and talks again');
});
