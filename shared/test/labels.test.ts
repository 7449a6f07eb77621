// Label sources, the identity label filter, the resolver's rules (what a caller may set, where the
// namespace comes from, when an endpoint is pending) and DOCKER_HOST. Pure.
import t from 'tap';
import { callerLabels, protectedLabelProblem, runtimeLabels } from '../src/labels/sources.ts';
import { DEFAULT_LABEL_FILTER, identityLabels, parseLabelFilter } from '../src/labels/filter.ts';
import { LabelResolver, type RuntimeSource } from '../src/labels/resolver.ts';
import { dockerApiTarget, parseDockerHost } from '../src/labels/docker-host.ts';
import { kindOf } from '../src/errors.ts';
import type { Endpoint, EndpointRequest } from '../src/types.ts';

t.test('a caller sets labels of its own source only', async (t) => {
  const r = callerLabels(
    {
      app: 'web',
      'cni:tier': 'a',
      'k8s:app': 'x',
      'container:c': 'y',
      'reserved:host': '',
      'io.kubernetes.pod.namespace': 'prod',
    },
    'cni',
  );
  t.same(r.labels, { 'cni:app': 'web', 'cni:tier': 'a' });
  t.same(r.problems.map((p) => p.key).sort(), ['container:c', 'io.kubernetes.pod.namespace', 'k8s:app', 'reserved:host']);
  t.match(
    r.problems.find((p) => p.key === 'io.kubernetes.pod.namespace')?.message,
    /only from the runtime \(CNI_ARGS K8S_POD_NAMESPACE\)/,
  );
  for (const key of [
    'any:io.kubernetes.pod.namespace',
    'k8s:io.kubernetes.pod.namespace',
    'cni:io.kubernetes.pod.namespace',
    'io.cilium.k8s.policy.serviceaccount',
    'k8s:io.cilium.k8s.namespace.labels.team',
    'io.cilium.k8s.policy.cluster',
    'reserved:init',
  ]) {
    t.ok(protectedLabelProblem(key), `${key} is refused`);
  }
  t.notOk(protectedLabelProblem('example.com/namespace'), 'other keys mentioning namespaces are fine');
  t.same(
    runtimeLabels(
      { app: 'web', 'io.kubernetes.pod.namespace': 'prod', 'io.cilium.k8s.policy.serviceaccount': 'admin' },
      'container',
    ),
    { labels: { 'container:app': 'web' }, dropped: ['io.kubernetes.pod.namespace', 'io.cilium.k8s.policy.serviceaccount'] },
    "a runtime's free-form labels lose protected keys",
  );
});

t.test('label filter: replicas share an identity, custom filters are tried in order', async (t) => {
  const replica = (n: number) => ({
    'k8s:app': 'web',
    'k8s:io.kubernetes.pod.namespace': 'shop',
    'k8s:io.kubernetes.pod.name': `web-${n}`,
    'k8s:io.kubernetes.pod.uid': `u${n}`,
    'k8s:pod-template-hash': `h${n}`,
    'k8s:app.kubernetes.io/name': 'web',
    'k8s:statefulset.kubernetes.io/pod-name': `web-${n}`,
    'container:com.docker.compose.container-number': String(n),
    'container:com.docker.compose.service': 'web',
  });
  t.same(identityLabels(replica(1)), identityLabels(replica(2)), 'per-replica labels are left out');
  t.same(identityLabels(replica(1)), {
    'k8s:app': 'web',
    'k8s:io.kubernetes.pod.namespace': 'shop',
    'k8s:app.kubernetes.io/name': 'web',
    'container:com.docker.compose.service': 'web',
  });
  t.same(
    identityLabels({ 'docker:container-name': 'x', 'docker:container-id': 'y', 'docker:network-name': 'n', 'docker:app': 'a' }),
    { 'docker:app': 'a' },
    "older endpoints' per-container labels too",
  );
  const f = parseLabelFilter('k8s:app !.*');
  t.same(
    identityLabels(
      { 'k8s:app': 'a', 'container:app': 'b', 'k8s:tier': 'c', 'reserved:host': '', 'k8s:io.kubernetes.pod.namespace': 'ns' },
      f,
    ),
    { 'k8s:app': 'a', 'reserved:host': '', 'k8s:io.kubernetes.pod.namespace': 'ns' },
    'only k8s:app, plus what is always kept',
  );
  t.throws(() => parseLabelFilter('!('), /not a valid regular expression/);
  t.ok(DEFAULT_LABEL_FILTER.length > 0);
});

function req(over: Partial<EndpointRequest>): EndpointRequest {
  return { containerId: 'c1', ifName: 'eth0', netns: '/run/netns/x', ...over };
}

t.test('resolver: caller labels, the namespace from CNI_ARGS only, pending runtime sources', async (t) => {
  const cri: RuntimeSource = {
    name: 'cri',
    owns: (ep) => !!ep.metadata?.['k8s:io.kubernetes.pod.name'],
    watch: () => undefined,
    forget: () => undefined,
    close: async () => undefined,
  };
  const r = new LabelResolver({ sources: [cri] });
  const cniMeta = { 'cni:plugin': 'membrane-cni', 'k8s:io.kubernetes.pod.namespace': 'dev' };
  t.same(
    r.initial(req({ labels: { app: 'a' }, metadata: cniMeta })),
    { labels: { 'cni:app': 'a', 'k8s:io.kubernetes.pod.namespace': 'dev' } },
    'CNI labels in cni:, the namespace from metadata',
  );
  t.same(r.initial(req({ labels: { app: 'a' } })), { labels: { 'api:app': 'a' } }, 'API labels in api:');
  t.same(
    r.initial(req({ metadata: { ...cniMeta, 'k8s:io.kubernetes.pod.name': 'p' } })).pending,
    'cri',
    'a kubelet pod waits for its runtime',
  );
  for (const key of ['io.kubernetes.pod.namespace', 'k8s:io.kubernetes.pod.namespace', 'reserved:host', 'k8s:app']) {
    try {
      r.initial(req({ labels: { [key]: 'prod' }, metadata: cniMeta }));
      t.fail(`${key} accepted`);
    } catch (e) {
      t.equal(kindOf(e), 'bad_request', `${key}: refused`);
      t.match((e as { field?: string }).field, `labels.${key}`);
    }
  }
  const ep = {
    labels: { 'cni:app': 'a', 'k8s:io.kubernetes.pod.namespace': 'dev', 'k8s:tier': 'old' },
    metadata: cniMeta,
  } as unknown as Endpoint;
  t.same(
    r.merge(ep, { attachment: 'c1', ifName: 'eth0', source: 'k8s', labels: { 'k8s:tier': 'new', 'k8s:role': 'db' } }),
    { 'cni:app': 'a', 'k8s:tier': 'new', 'k8s:role': 'db', 'k8s:io.kubernetes.pod.namespace': 'dev' },
    'a runtime replaces its own labels, the namespace stays',
  );
  t.same(
    r.withCallerLabels(ep, { x: '1' }),
    { 'k8s:tier': 'old', 'api:x': '1', 'k8s:io.kubernetes.pod.namespace': 'dev' },
    'a caller replaces the caller labels',
  );
  t.throws(() => r.withCallerLabels(ep, { 'reserved:world': '' }), /reserved labels are set by the agent only/);
});

t.test('DOCKER_HOST: unix and tcp; an explicit socket wins', async (t) => {
  t.same(parseDockerHost('unix:///run/user/docker.sock'), { socketPath: '/run/user/docker.sock' });
  t.same(parseDockerHost('tcp://127.0.0.1:2376'), { host: '127.0.0.1', port: 2376 });
  t.same(parseDockerHost('tcp://[::1]'), { host: '::1', port: 2375 });
  t.throws(() => parseDockerHost('ssh://me@host'), /ssh:\/\/ is not supported/);
  t.throws(() => parseDockerHost('unix://relative.sock'), /absolute path/);
  t.same(dockerApiTarget('/x.sock', { DOCKER_HOST: 'tcp://h:1' }), { socketPath: '/x.sock' });
  t.same(dockerApiTarget(undefined, { DOCKER_HOST: 'tcp://h:1' }), { host: 'h', port: 1 });
  t.same(dockerApiTarget(undefined, {}), { socketPath: '/var/run/docker.sock' });
});
