// The Docker label source against a fake Docker Engine API on a unix socket (events and the container
// list only: the source never inspects a starting container): which endpoint is whose container, and
// its labels and name; a late event never claims another container's endpoint.
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { DockerLabels } from '../src/labels/docker.ts';
import type { LabelSink, RuntimeLabels } from '../src/labels/resolver.ts';
import type { Endpoint } from '../src/types.ts';
import { pollUntil } from './lib/poll.ts';

interface FakeContainer {
  Id: string;
  Names: string[];
  Labels: Record<string, string>;
  nets: Record<string, { NetworkID: string; EndpointID: string }>;
}

function fakeDocker(socketPath: string) {
  const containers = new Map<string, FakeContainer>();
  const streams = new Set<http.ServerResponse>();
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    seen.push(url.pathname);
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (url.pathname.endsWith('/events')) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.flushHeaders();
      streams.add(res);
      req.on('close', () => streams.delete(res));
      return;
    }
    if (url.pathname.endsWith('/containers/json')) {
      const f = JSON.parse(url.searchParams.get('filters') ?? '{}') as { network?: string[]; id?: string[] };
      const list = [...containers.values()]
        .filter((c) => !f.network || Object.values(c.nets).some((n) => f.network!.includes(n.NetworkID)))
        .filter((c) => !f.id || f.id.some((id) => c.Id.startsWith(id)));
      json(
        200,
        list.map((c) => ({ Id: c.Id, Names: c.Names, Labels: c.Labels, NetworkSettings: { Networks: c.nets } })),
      );
      return;
    }
    if (url.pathname.endsWith('/networks')) {
      json(200, [{ Id: 'n1', Name: 'blue' }]);
      return;
    }
    json(404, { message: `fake docker: ${url.pathname}` });
  });
  return {
    containers,
    seen,
    listen: () => new Promise<void>((r) => server.listen(socketPath, () => r())),
    emit(ev: unknown) {
      for (const s of streams) s.write(`${JSON.stringify(ev)}\n`);
    },
    streams: () => streams.size,
    close: () =>
      new Promise<void>((r) => {
        for (const s of streams) s.end();
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

const hex = () => [...crypto.getRandomValues(new Uint8Array(32))].map((b) => b.toString(16).padStart(2, '0')).join('');
const log = { info: () => undefined, warn: () => undefined, debug: () => undefined };

function dockerEndpoint(networkId: string, containerId = ''): Endpoint {
  const endpointId = hex();
  return {
    containerId,
    docker: { endpointId, networkId },
    ifName: `mbd${endpointId.slice(0, 11)}`,
    labels: {},
    metadata: {},
  } as unknown as Endpoint;
}

async function setup(t: { teardown(fn: () => unknown): void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-labels-docker-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const docker = fakeDocker(path.join(dir, 'docker.sock'));
  await docker.listen();
  t.teardown(() => docker.close());
  const names = new Map<string, string>();
  const src = new DockerLabels({
    target: { socketPath: path.join(dir, 'docker.sock') },
    log,
    syncMs: 100,
    onNetworkName: (id, name) => names.set(id, name),
  });
  t.teardown(() => src.close());
  const found: RuntimeLabels[] = [];
  const sink: LabelSink = {
    found: async (u) => {
      found.push(u);
    },
    expired: async () => undefined,
  };
  return { docker, src, sink, found, names };
}

t.test("the only waiting endpoint of a network is the connected container's", async (t) => {
  const { docker, src, sink, found, names } = await setup(t);
  const ep = dockerEndpoint('n1');
  src.watch(ep, sink);
  t.ok(await pollUntil(() => docker.streams() > 0), 'subscribed to events');
  t.ok(await pollUntil(() => names.get('n1') === 'blue'), 'network names from the list');
  const cid = hex();
  // Created, not started: the list knows its labels (image labels merged) but not its endpoint yet.
  docker.containers.set(cid, {
    Id: cid,
    Names: ['/web-1'],
    Labels: { app: 'web', 'io.kubernetes.pod.namespace': 'prod' },
    nets: { blue: { NetworkID: '', EndpointID: '' } },
  });
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'n1', Attributes: { container: cid, name: 'blue' } } });
  t.ok(await pollUntil(() => found.length === 1), 'labels reported');
  t.same(
    found[0],
    {
      attachment: ep.docker!.endpointId,
      ifName: ep.ifName,
      source: 'container',
      labels: { 'container:app': 'web' },
      container: { id: cid, name: 'web-1' },
    },
    'container labels (a namespace claim dropped), id and name',
  );
  t.notOk(
    docker.seen.some((p) => /\/containers\/[^/]+\/json$/.test(p)),
    'never an inspect (it would wait for the container start)',
  );

  docker.containers.get(cid)!.Names = ['/web-renamed'];
  docker.emit({ Type: 'container', Action: 'rename', Actor: { ID: cid, Attributes: { name: 'web-renamed' } } });
  t.ok(await pollUntil(() => found.at(-1)?.container?.name === 'web-renamed'), 'a rename is reported');

  // A late connect event for the known container must not claim a new waiting endpoint.
  const ep2 = dockerEndpoint('n1');
  src.watch(ep2, sink);
  const before = found.length;
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'n1', Attributes: { container: cid } } });
  await new Promise((r) => setTimeout(r, 300));
  t.notOk(
    found.slice(before).some((u) => u.attachment === ep2.docker!.endpointId),
    'the second endpoint stays waiting',
  );
});

t.test('several containers joining at once: the list names each endpoint once they started', async (t) => {
  const { docker, src, sink, found } = await setup(t);
  const [a, b] = [dockerEndpoint('n2'), dockerEndpoint('n2')];
  src.watch(a, sink);
  src.watch(b, sink);
  t.ok(await pollUntil(() => docker.streams() > 0));
  const [ca, cb] = [hex(), hex()];
  docker.containers.set(ca, { Id: ca, Names: ['/a'], Labels: { app: 'a' }, nets: { n: { NetworkID: 'n2', EndpointID: '' } } });
  docker.containers.set(cb, { Id: cb, Names: ['/b'], Labels: { app: 'b' }, nets: { n: { NetworkID: 'n2', EndpointID: '' } } });
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'n2', Attributes: { container: ca } } });
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'n2', Attributes: { container: cb } } });
  await new Promise((r) => setTimeout(r, 300));
  t.equal(found.length, 0, 'ambiguous: nobody is guessed');
  docker.containers.get(ca)!.nets.n.EndpointID = a.docker!.endpointId;
  docker.containers.get(cb)!.nets.n.EndpointID = b.docker!.endpointId;
  docker.emit({ Type: 'container', Action: 'start', Actor: { ID: ca, Attributes: {} } });
  t.ok(await pollUntil(() => found.length === 2), 'both reported after the start');
  const by = new Map(found.map((u) => [u.attachment, u.container?.id]));
  t.same([by.get(a.docker!.endpointId), by.get(b.docker!.endpointId)], [ca, cb], 'each endpoint got its own container');
});

t.test('a restored endpoint with its container is read again at once', async (t) => {
  const { docker, src, sink, found } = await setup(t);
  const cid = hex();
  docker.containers.set(cid, { Id: cid, Names: ['/db'], Labels: { app: 'db' }, nets: {} });
  src.watch(dockerEndpoint('n3', cid), sink);
  t.ok(await pollUntil(() => found.length === 1 && found[0].labels['container:app'] === 'db'));
  t.match(src.status(), { endpoints: 1, waiting: 0, connected: true });
});

t.test("a container's new endpoint claimed while its old one's labels are being read is told too", async (t) => {
  // dockerd restarts a `--restart always` container right after an agent restart: the restored
  // endpoint's read is still in flight when the new endpoint is claimed for the same container.
  const { docker, src, found } = await setup(t);
  let release: () => void = () => undefined;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const cid = hex();
  const old = dockerEndpoint('n4', cid);
  const sink: LabelSink = {
    found: async (u) => {
      found.push(u);
      if (u.attachment === old.docker!.endpointId) await gate;
    },
    expired: async () => undefined,
  };
  docker.containers.set(cid, {
    Id: cid,
    Names: ['/svc'],
    Labels: { app: 'svc' },
    nets: { n: { NetworkID: 'n4', EndpointID: old.docker!.endpointId } },
  });
  src.watch(old, sink);
  t.ok(await pollUntil(() => found.length === 1 && docker.streams() > 0), "the restored endpoint's read is under way");
  src.forget(old);
  const next = dockerEndpoint('n4');
  src.watch(next, sink);
  docker.containers.get(cid)!.nets.n.EndpointID = next.docker!.endpointId;
  docker.emit({ Type: 'network', Action: 'connect', Actor: { ID: 'n4', Attributes: { container: cid } } });
  await new Promise((r) => setTimeout(r, 200));
  release();
  t.ok(
    await pollUntil(() => found.some((u) => u.attachment === next.docker!.endpointId && u.container?.id === cid)),
    'the new endpoint gets its labels (it would stay down until the label timeout)',
  );
});
