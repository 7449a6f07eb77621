// Endpoint lookup by every name a user sees: ids, container ids and unique prefixes, names, pods,
// ctr's "<namespace>-<id>"; exact names win over prefixes; ambiguity is reported with the candidates.
import t from 'tap';
import { describeCandidate, findEndpoint, matchEndpoints } from '../src/endpoint/lookup.ts';
import type { Endpoint } from '../src/types.ts';

const hex = (c: string) => c.repeat(64).slice(0, 64);
function ep(id: number, over: Partial<Endpoint>): Endpoint {
  return { id, containerId: '', ifName: 'eth0', network: 'default', labels: {}, metadata: {}, ...over } as Endpoint;
}

const docker = ep(1, {
  containerId: `3f2a${hex('1')}`.slice(0, 64),
  docker: { endpointId: hex('a'), networkId: hex('n'), containerName: 'web' },
  ifName: 'mbdaaaaaaaaaaa',
  network: 'docker-nnnnnnnnnnnn',
});
const docker2 = ep(2, {
  containerId: `3f2b${hex('2')}`.slice(0, 64),
  docker: { endpointId: hex('b'), networkId: hex('n'), containerName: 'db' },
  ifName: 'mbdbbbbbbbbbbb',
});
const pod = ep(3, {
  containerId: hex('c'),
  metadata: { 'k8s:io.kubernetes.pod.namespace': 'shop', 'k8s:io.kubernetes.pod.name': 'cart-0' },
});
const twoNets = [
  ep(4, { containerId: hex('d'), ifName: 'eth0' }),
  ep(5, { containerId: hex('d'), ifName: 'eth1', network: 'blue' }),
];
const ctr = ep(6, { containerId: 'default-mybox' });
const all = [docker, docker2, pod, ...twoNets, ctr];

t.test('every name finds its endpoint', async (t) => {
  const id = (ref: string, ifName?: string) => {
    const r = findEndpoint(all, ref, ifName);
    return r.kind === 'found' ? r.endpoint.id : r.kind;
  };
  t.equal(id('3'), 3, 'numeric endpoint id');
  t.equal(id(docker.containerId), 1, 'full Docker container id');
  t.equal(id(docker.containerId.slice(0, 12)), 1, 'the 12-character id docker ps shows');
  t.equal(id('web'), 1, 'container name');
  t.equal(id(hex('a')), 1, 'libnetwork endpoint id');
  t.equal(id('aaaaaaaa'), 1, 'its prefix');
  t.equal(id(hex('c').slice(0, 10)), 3, 'CNI container id prefix');
  t.equal(id('shop/cart-0'), 3, 'namespace/pod');
  t.equal(id(`container-id:${hex('c')}`), 3, 'container-id: prefix form');
  t.equal(id('mybox'), 6, "ctr's own id (CNI_CONTAINERID is <namespace>-<id>)");
  t.equal(id('dddd', 'eth1'), 5, "an interface picks one of a container's endpoints");
  t.equal(id('nothing'), 'none');
  t.equal(id('7'), 'none', 'an unknown endpoint id');
});

t.test('ambiguity is reported, never guessed', async (t) => {
  const r = findEndpoint(all, '3f2');
  t.equal(r.kind, 'ambiguous');
  if (r.kind === 'ambiguous') {
    t.same(
      r.candidates.map((e) => e.id),
      [1, 2],
    );
    t.match(
      describeCandidate(r.candidates[0]),
      /^1 \(container 3f2a11111111 web, mbdaaaaaaaaaaa, network docker-nnnnnnnnnnnn\)$/,
    );
  }
  t.same(
    matchEndpoints(all, 'dddd').map((e) => e.id),
    [4, 5],
    'a container on two networks',
  );
  const nameVsPrefix = [
    ep(8, { containerId: hex('e'), docker: { endpointId: hex('f'), networkId: 'n', containerName: 'eeee' } }),
    ep(9, { containerId: `eeee${hex('9')}`.slice(0, 64) }),
  ];
  t.same(
    matchEndpoints(nameVsPrefix, 'eeee').map((e) => e.id),
    [8],
    'an exact name wins over id prefixes',
  );
});
