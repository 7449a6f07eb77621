// Container identity against a fake Docker Engine API on a unix socket: events, inspect, list; labels
// reach the core endpoint; a slow or absent Docker API never delays a plugin call.
import t from 'tap';
import http from 'node:http';
import path from 'node:path';
import { harness, hex64, createNetworkBody, createEndpointBody, joinBody, call } from './helpers.ts';
import { tempIfName } from '../src/network-driver.ts';
import { endpointLabels } from '../src/identity.ts';
import { startDockerPlugin } from '../src/index.ts';
import pino from 'pino';

interface FakeContainer { Id: string; Name: string; Image: string; Labels: Record<string, string>; nets: Record<string, { NetworkID: string; EndpointID: string }> }

function fakeDocker(socketPath: string, opts: { inspectDelayMs?: number } = {}) {
  const containers = new Map<string, FakeContainer>();
  const eventStreams = new Set<http.ServerResponse>();
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    seen.push(url.pathname);
    const json = (code: number, body: unknown) => { res.writeHead(code, { 'Content-Type': 'application/json' }); res.end(JSON.stringify(body)); };
    if (url.pathname === '/events') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
      eventStreams.add(res);
      req.on('close', () => eventStreams.delete(res));
      return;
    }
    if (url.pathname === '/containers/json') {
      const f = JSON.parse(url.searchParams.get('filters') ?? '{}') as { network?: string[] };
      const list = [...containers.values()].filter((c) => !f.network || Object.values(c.nets).some((n) => f.network!.includes(n.NetworkID)));
      json(200, list.map((c) => ({ Id: c.Id, Names: [c.Name], NetworkSettings: { Networks: c.nets } })));
      return;
    }
    const m = /^\/containers\/([^/]+)\/json$/.exec(url.pathname);
    if (m) {
      const c = containers.get(m[1]);
      setTimeout(() => {
        if (!c) { json(404, { message: 'No such container' }); return; }
        json(200, { Id: c.Id, Name: c.Name, Image: c.Image, Config: { Labels: c.Labels }, NetworkSettings: { Networks: c.nets } });
      }, opts.inspectDelayMs ?? 0);
      return;
    }
    const im = /^\/images\/([^/]+)\/json$/.exec(url.pathname);
    if (im) { json(200, { Id: im[1], Config: { Labels: { 'org.image': 'img', team: 'from-image' } } }); return; }
    json(404, { message: `fake docker: ${url.pathname}` });
  });
  return {
    containers, seen,
    listen: () => new Promise<void>((r) => server.listen(socketPath, () => r())),
    emit(ev: unknown) { for (const s of eventStreams) s.write(JSON.stringify(ev) + '\n'); },
    streams: () => eventStreams.size,
    close: () => new Promise<void>((r) => { for (const s of eventStreams) s.end(); server.close(() => r()); server.closeAllConnections(); }),
  };
}

async function until(cond: () => boolean, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (cond()) return true; await new Promise((r) => setTimeout(r, 20)); }
  return cond();
}

t.test('endpointLabels: image labels under container labels, plus docker:* keys', async (t) => {
  t.same(endpointLabels({ id: 'abc', name: '/web', labels: { team: 'a' }, imageLabels: { team: 'img', v: '1' } }, 'net1'),
    { team: 'a', v: '1', 'docker:container-id': 'abc', 'docker:container-name': 'web', 'docker:network-name': 'net1' });
  t.same(endpointLabels({ id: 'x', name: 'n', labels: null, imageLabels: { ['k'.repeat(300)]: 'too long key' } }, ''),
    { 'docker:container-id': 'x', 'docker:container-name': 'n' }, 'oversized labels are skipped');
});

t.test('a connect event labels the endpoint; rename relabels; sync at start catches up', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const sock = path.join(h.dir, 'docker.sock');
  const docker = fakeDocker(sock);
  await docker.listen();
  t.teardown(() => docker.close());
  // A second plugin instance on the same core with the watcher on (the harness one has it off).
  const name = `${h.name}w`;
  const plugin = await startDockerPlugin({ core: h.core, name, pluginDir: h.dir, stateDir: path.join(h.dir, 's2'), log: pino({ level: 'silent' }), dockerSocket: sock });
  t.teardown(() => plugin.close());
  const c = (p: string, b?: unknown) => call(plugin.socketPath, p, b);
  const nid = hex64(), eid = hex64(), cid = hex64();
  await c('/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool: '10.85.0.0/24', gateway: '10.85.0.1' }));
  await c('/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, '10.85.0.2/24'));
  await c('/NetworkDriver.Join', joinBody(nid, eid));
  docker.containers.set(cid, { Id: cid, Name: '/web-1', Image: 'sha256:img1', Labels: { team: 'blue', app: 'web' }, nets: { mynet: { NetworkID: nid, EndpointID: eid } } });
  t.ok(await until(() => docker.streams() > 0), 'watcher subscribed to events');
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: nid, Attributes: { container: cid, name: 'mynet', type: name } } });
  const labelled = () => h.core.endpoints.get(eid, tempIfName(eid))?.labels ?? {};
  t.ok(await until(() => labelled()['docker:container-name'] === 'web-1'), 'labelled after the event');
  t.same(labelled(), { 'org.image': 'img', team: 'blue', app: 'web', 'docker:container-id': cid, 'docker:container-name': 'web-1', 'docker:network-name': 'mynet' });
  const core = h.core.endpoints.get(eid, tempIfName(eid))!;
  t.same([core.containerId, core.docker], [cid, { endpointId: eid, networkId: nid, containerName: 'web-1' }], 'the container id and name next to the Docker endpoint id');
  t.same(h.core.endpoints.list({ containerId: cid }).map((e) => e.docker?.endpointId), [eid], 'found by its container id');
  const info = await c('/NetworkDriver.EndpointOperInfo', { NetworkID: nid, EndpointID: eid });
  t.equal(info.body.Value['membrane.container'], 'web-1');

  docker.containers.get(cid)!.Name = '/web-renamed';
  docker.emit({ Type: 'container', Action: 'rename', Actor: { ID: cid, Attributes: { name: 'web-renamed' } } });
  t.ok(await until(() => labelled()['docker:container-name'] === 'web-renamed'), 'relabelled after a rename');
  // A repeated connect (labels unchanged) is looked at but writes nothing; a rename after it writes once.
  const updates = () => h.core.calls.filter((x) => x.op === 'endpoints.updateLabels').length;
  const inspects = () => docker.seen.filter((p) => p === `/containers/${cid}/json`).length;
  const [updatesBefore, inspectsBefore] = [updates(), inspects()];
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: nid, Attributes: { container: cid } } });
  t.ok(await until(() => inspects() > inspectsBefore), 'the repeated connect was inspected');
  docker.containers.get(cid)!.Name = '/web-final';
  docker.emit({ Type: 'container', Action: 'rename', Actor: { ID: cid, Attributes: { name: 'web-final' } } });
  t.ok(await until(() => labelled()['docker:container-name'] === 'web-final'), 'relabelled after the second rename');
  t.equal(updates(), updatesBefore + 1, 'only the rename wrote labels: unchanged labels are not rewritten');

  // Restart: an endpoint joined while we were down is found by the sync at start.
  await plugin.close();
  const eid2 = hex64(), cid2 = hex64();
  const again = await startDockerPlugin({ core: h.core, name, pluginDir: h.dir, stateDir: path.join(h.dir, 's2'), log: pino({ level: 'silent' }), dockerSocket: sock });
  t.teardown(() => again.close());
  await call(again.socketPath, '/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid2, '10.85.0.3/24'));
  docker.containers.set(cid2, { Id: cid2, Name: '/db', Image: 'sha256:img2', Labels: { app: 'db' }, nets: { mynet: { NetworkID: nid, EndpointID: eid2 } } });
  await call(again.socketPath, '/NetworkDriver.Join', joinBody(nid, eid2));
  t.ok(await until(() => h.core.endpoints.get(eid2, tempIfName(eid2))?.labels['docker:container-name'] === 'db', 4000), 'no event: the post-Join sync labels it');
});

t.test('plugin calls never wait on the Docker API (slow or absent)', async (t) => {
  const h = await harness();
  t.teardown(() => h.close());
  const sock = path.join(h.dir, 'slow-docker.sock');
  const docker = fakeDocker(sock, { inspectDelayMs: 3000 });
  await docker.listen();
  t.teardown(() => docker.close());
  for (const dockerSocket of [sock, path.join(h.dir, 'absent.sock')]) {
    const name = `${h.name}${dockerSocket === sock ? 's' : 'a'}`;
    const plugin = await startDockerPlugin({ core: h.core, name, pluginDir: h.dir, stateDir: path.join(h.dir, name), log: pino({ level: 'silent' }), dockerSocket });
    t.teardown(() => plugin.close());
    const nid = hex64(), eid = hex64(), cid = hex64();
    const pool = dockerSocket === sock ? '10.84.0.0/24' : '10.83.0.0/24';
    await call(plugin.socketPath, '/NetworkDriver.CreateNetwork', createNetworkBody(nid, { pool, gateway: pool.replace('0/24', '1') }));
    docker.containers.set(cid, { Id: cid, Name: '/slow', Image: 'i', Labels: {}, nets: { n: { NetworkID: nid, EndpointID: eid } } });
    const started = Date.now();
    await call(plugin.socketPath, '/NetworkDriver.CreateEndpoint', createEndpointBody(nid, eid, pool.replace('0/24', '2/24')));
    const j = await call(plugin.socketPath, '/NetworkDriver.Join', joinBody(nid, eid));
    docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: nid, Attributes: { container: cid } } });
    await call(plugin.socketPath, '/NetworkDriver.EndpointOperInfo', { NetworkID: nid, EndpointID: eid });
    t.equal(j.status, 200);
    t.ok(Date.now() - started < 1000, `create+join+info took ${Date.now() - started} ms with ${dockerSocket === sock ? 'a slow' : 'no'} Docker API`);
    const closing = Date.now();
    await plugin.close();
    t.ok(Date.now() - closing < 5000, 'close does not hang on the Docker API');
  }
});
