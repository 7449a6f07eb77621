import t from 'tap';
import type { Endpoint } from '../../shared/src/types.ts';
import { appendResult, endpointToResult, formatResult, parseResult } from '../src/result.ts';
import { endpointRequest, readRuntimeOptions, K } from '../src/request.ts';
import { parseNetConf } from '../src/config.ts';
import type { CniEnv } from '../src/env.ts';

const ep: Endpoint = {
  id: 7,
  containerId: 'c1',
  ifName: 'eth0',
  network: 'default',
  netns: '/run/netns/x',
  hostIfName: 'mbr0123456789a',
  hostIfIndex: 42,
  hostMac: '02:00:00:00:00:01',
  mac: '02:aa:00:00:00:07',
  mtu: 1450,
  ips: [
    { address: '10.1.0.5/32', gateway: '10.1.0.1', family: 4, subnet: '10.1.0.0/24' },
    { address: 'fd00::5/128', gateway: 'fd00::1', family: 6, subnet: 'fd00::/64' },
  ],
  routes: [{ dst: '10.1.0.1/32' }, { dst: '0.0.0.0/0', gw: '10.1.0.1' }, { dst: '::/0', gw: 'fd00::1' }],
  labels: {},
  metadata: {},
  identity: 1,
  externalIpam: false,
  createdAt: '',
};

t.test('result shapes per version', async (t) => {
  const r = endpointToResult(ep, '/run/netns/x', { nameservers: ['10.1.0.1'] });
  const v11 = formatResult(r, '1.1.0') as any;
  t.same(v11.interfaces, [
    { name: 'mbr0123456789a', mac: '02:00:00:00:00:01' },
    { name: 'eth0', mac: '02:aa:00:00:00:07', sandbox: '/run/netns/x', mtu: 1450 },
  ]);
  t.same(v11.ips[0], { address: '10.1.0.5/32', gateway: '10.1.0.1', interface: 1 });
  t.same(v11.routes[0], { dst: '10.1.0.1/32' });
  t.same(v11.dns, { nameservers: ['10.1.0.1'] });
  const v10 = formatResult(r, '1.0.0') as any;
  t.notOk('mtu' in v10.interfaces[1], '1.0.0 has no interface mtu');
  t.notOk('version' in v10.ips[0]);
  for (const v of ['0.3.0', '0.3.1', '0.4.0']) {
    const old = formatResult(r, v) as any;
    t.equal(old.cniVersion, v);
    t.same(
      old.ips.map((i: any) => i.version),
      ['4', '6'],
      `${v} ips carry version`,
    );
    t.notOk('mtu' in old.interfaces[1]);
  }
});

t.test('parse results of any version; chaining after another plugin', async (t) => {
  const old = {
    cniVersion: '0.3.1',
    interfaces: [{ name: 'x0' }],
    ips: [{ version: '4', address: '10.9.0.2/24', gateway: '10.9.0.1', interface: 0 }],
    routes: [{ dst: '0.0.0.0/0' }],
  };
  const p = parseResult(old, 'prevResult');
  t.same(p.ips, [{ address: '10.9.0.2/24', gateway: '10.9.0.1', interface: 0 }]);
  const merged = appendResult(p, endpointToResult(ep, '/run/netns/x'));
  t.equal(merged.interfaces.length, 3);
  t.same(
    merged.ips.map((i) => i.interface),
    [0, 2, 2],
    'our ips point at our container interface',
  );
  t.throws(() => parseResult({ ip4: {} }, 'prevResult'), { code: 1 });
  t.throws(() => parseResult({ ips: [{ address: '10.0.0.1' }] }, 'ipam'), { code: 6 });
  const ipamOnly = parseResult({ cniVersion: '1.0.0', ips: [{ address: '10.9.0.7/24', gateway: '10.9.0.1' }], dns: {} }, 'ipam');
  t.same(ipamOnly, { interfaces: [], ips: [{ address: '10.9.0.7/24', gateway: '10.9.0.1' }], routes: [] });
});

const env = (args: Record<string, string> = {}): CniEnv => ({
  command: 'ADD',
  containerId: 'c1',
  netns: '/n',
  ifName: 'eth0',
  args,
  path: [],
});

t.test('runtimeConfig: containerd PascalCase and podman camelCase read alike', async (t) => {
  const containerd = parseNetConf(
    JSON.stringify({
      cniVersion: '1.0.0',
      name: 'n',
      type: 't',
      runtimeConfig: {
        portMappings: [{ HostPort: 8080, ContainerPort: 80, Protocol: 'TCP', HostIP: '127.0.0.1' }],
        bandwidth: { IngressRate: 10000000, IngressBurst: 4294967295, EgressRate: 20000000, EgressBurst: 4294967295 },
      },
    }),
  );
  const podman = parseNetConf(
    JSON.stringify({
      cniVersion: '1.0.0',
      name: 'n',
      type: 't',
      runtimeConfig: {
        portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '127.0.0.1' }],
        bandwidth: { ingressRate: 10000000, ingressBurst: 4294967295, egressRate: 20000000, egressBurst: 4294967295 },
      },
    }),
  );
  const a = readRuntimeOptions(containerd, env());
  t.same(a, readRuntimeOptions(podman, env()));
  t.same(a.portMappings, [{ hostPort: 8080, containerPort: 80, protocol: 'tcp', hostIP: '127.0.0.1' }]);
  t.equal(a.bandwidth?.egressRate, 20000000);
});

t.test('requested addresses and MAC: runtimeConfig > args.cni > CNI_ARGS', async (t) => {
  const conf = (extra: object) => parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 't', ...extra }));
  t.same(readRuntimeOptions(conf({}), env({ IP: '10.1.0.9', MAC: '02:00:00:00:00:09' })), {
    ips: ['10.1.0.9'],
    mac: '02:00:00:00:00:09',
    portMappings: [],
  });
  t.same(readRuntimeOptions(conf({ args: { cni: { ips: ['10.1.0.8/24'] } } }), env({ IP: '10.1.0.9' })).ips, ['10.1.0.8']);
  t.same(
    readRuntimeOptions(
      conf({ runtimeConfig: { ips: ['10.1.0.7/24'], mac: '02:00:00:00:00:07' }, args: { cni: { ips: ['10.1.0.8'] } } }),
      env(),
    ),
    { ips: ['10.1.0.7'], mac: '02:00:00:00:00:07', portMappings: [] },
  );
});

t.test("CNI_ARGS become metadata, labels stay the caller's", async (t) => {
  const conf = parseNetConf(
    JSON.stringify({
      cniVersion: '1.0.0',
      name: 'k8s',
      type: 't',
      network: 'blue',
      mtu: 1400,
      labels: { tier: 'web' },
      args: { cni: { labels: [{ key: 'app', value: 'a' }] } },
    }),
  );
  const req = endpointRequest(
    conf,
    env({ K8S_POD_NAMESPACE: 'ns1', K8S_POD_NAME: 'p', K8S_POD_UID: 'u', K8S_POD_INFRA_CONTAINER_ID: 'c1', IgnoreUnknown: '1' }),
  );
  t.same(
    req.labels,
    { tier: 'web', app: 'a' },
    'caller labels only: the namespace travels as metadata (the agent makes it the k8s: label)',
  );
  t.same(req.metadata, {
    [K.network]: 'k8s',
    [K.plugin]: 'membrane-cni',
    [K.namespace]: 'ns1',
    [K.podName]: 'p',
    [K.podUid]: 'u',
    [K.infraId]: 'c1',
  });
  t.equal(req.network, 'blue');
  t.equal(req.mtu, 1400);
  t.notOk('ips' in req);
  const ext = endpointRequest(conf, env(), ['10.9.0.7']);
  t.same([ext.ips, ext.externalIpam], [['10.9.0.7'], true]);
});
