import t from 'tap';
import { resolveConfig, poolsToNetworks, DEFAULTS, helpText, parseFlags } from '../src/agent/config.ts';

const noFile = () => {
  throw new Error('ENOENT');
};

t.test('defaults', async (t) => {
  const c = resolveConfig([], {}, noFile);
  t.equal(c.stateDir, DEFAULTS.stateDir);
  t.equal(c.bpffsDir, '/sys/fs/bpf/membrane');
  t.equal(c.socket, '/run/membrane/agent.sock');
  t.same(c.networks, [{ name: 'default', subnets: ['10.200.0.0/16'] }]);
});

t.test('flags beat env, env beats file', async (t) => {
  const file = 'stateDir: /from/file\nsocket: /file.sock\nbpffsDir: /sys/fs/bpf/file\n';
  const c = resolveConfig(['--state-dir', '/from/flag', '--config', '/etc/m.yaml'], { MEMBRANE_SOCKET: '/env.sock' }, () => file);
  t.equal(c.stateDir, '/from/flag');
  t.equal(c.socket, '/env.sock');
  t.equal(c.bpffsDir, '/sys/fs/bpf/file');
});

t.test('--pool is repeatable and builds dual-stack and named networks', async (t) => {
  t.same(poolsToNetworks(['10.1.0.0/16', 'fd00::/64']), [{ name: 'default', subnets: ['10.1.0.0/16', 'fd00::/64'] }]);
  t.same(poolsToNetworks(['blue=10.2.0.0/24,fd00:2::/64']), [{ name: 'blue', subnets: ['10.2.0.0/24', 'fd00:2::/64'] }]);
  const c = resolveConfig(['--pool', '10.3.0.0/24', '--pool=red=10.4.0.0/24'], {}, noFile);
  t.same(
    c.networks.map((n) => n.name),
    ['default', 'red'],
  );
});

t.test('bad input names what was wrong', async (t) => {
  t.throws(() => resolveConfig(['--pool', '10.0.0.0/99'], {}, noFile), /--pool "10.0.0.0\/99".*longer than 32/);
  t.throws(() => resolveConfig(['--bogus'], {}, noFile), /unknown option '--bogus' \(see membrane-agent --help\)/);
  t.throws(() => resolveConfig(['--state-dir'], {}, noFile), /option '--state-dir <dir>' argument missing/);
  t.throws(() => resolveConfig(['stray'], {}, noFile), /too many arguments/);
  t.throws(() => resolveConfig(['--mtu', '99'], {}, noFile), /--mtu "99" is not a whole number from 576 to 65535/);
  t.throws(
    () => resolveConfig([], { MEMBRANE_FLOW_BUFFER: 'lots' }, noFile),
    /MEMBRANE_FLOW_BUFFER "lots" is not a whole number/,
  );
  t.throws(() => resolveConfig(['--flow-events', 'maybe'], {}, noFile), /--flow-events "maybe" is not on or off/);
  t.throws(() => resolveConfig(['--config', '/x.yaml'], {}, () => 'stateDir: 5\n'), /config file \/x.yaml: stateDir:/);
  t.throws(() => resolveConfig(['--config', '/x.yaml'], {}, () => 'socketz: /a\n'), /config file \/x.yaml/);
  t.throws(() => resolveConfig(['--config', '/missing.yaml'], {}, noFile), /cannot read config file \/missing.yaml/);
  t.throws(() => resolveConfig(['--host-device', 'this-name-is-too-long'], {}, noFile), /not a valid interface name/);
});

t.test('--docker-plugin takes an optional name', async (t) => {
  t.equal(resolveConfig(['--docker-plugin'], {}, noFile).dockerPlugin, 'membrane');
  t.equal(resolveConfig(['--docker-plugin', 'mbx'], {}, noFile).dockerPlugin, 'mbx');
  t.equal(resolveConfig(['--docker-plugin', '--state-dir', '/s'], {}, noFile).dockerPlugin, 'membrane');
});

t.test(
  'the Docker API: --docker-socket wins, then DOCKER_SOCKET, then DOCKER_HOST, then the file, then the default',
  async (t) => {
    const file = () => 'dockerSocket: /file.sock\n';
    t.same(
      resolveConfig(['--docker-socket', '/flag.sock'], { DOCKER_HOST: 'tcp://h:2375', DOCKER_SOCKET: '/env.sock' }, noFile)
        .dockerApi,
      { socketPath: '/flag.sock' },
    );
    t.same(resolveConfig([], { DOCKER_HOST: 'tcp://h:2375', DOCKER_SOCKET: '/env.sock' }, noFile).dockerApi, {
      socketPath: '/env.sock',
    });
    t.same(resolveConfig(['--config', '/c.yaml'], { DOCKER_HOST: 'unix:///run/user/1/docker.sock' }, file).dockerApi, {
      socketPath: '/run/user/1/docker.sock',
    });
    t.same(resolveConfig(['--config', '/c.yaml'], {}, file).dockerApi, { socketPath: '/file.sock' });
    t.same(resolveConfig([], { DOCKER_HOST: 'tcp://10.0.0.1:2376' }, noFile).dockerApi, { host: '10.0.0.1', port: 2376 });
    t.same(resolveConfig([], {}, noFile).dockerApi, { socketPath: '/var/run/docker.sock' });
    t.throws(
      () => resolveConfig(['--docker-plugin'], { DOCKER_HOST: 'ssh://me@h' }, noFile),
      /DOCKER_HOST "ssh:\/\/me@h": ssh:\/\/ is not supported/,
    );
    t.same(
      resolveConfig([], { DOCKER_HOST: 'ssh://me@h' }, noFile).dockerApi,
      { socketPath: '/var/run/docker.sock' },
      'an agent without the Docker plugin is not stopped by it',
    );
  },
);

t.test('labels: --label-filter, --label-timeout, --cri-socket', async (t) => {
  const d = resolveConfig([], {}, noFile);
  t.same([d.criSocket, d.labelTimeoutMs], ['/run/containerd/containerd.sock', 10_000]);
  t.match(d.labelFilter, /pod-template-hash/);
  const c = resolveConfig(['--label-filter', 'k8s:app !.*', '--label-timeout', '3', '--cri-socket', '/x.sock'], {}, noFile);
  t.same([c.labelFilter, c.labelTimeoutMs, c.criSocket], ['k8s:app !.*', 3000, '/x.sock']);
  t.throws(
    () => resolveConfig(['--label-filter', '!('], {}, noFile),
    /--label-filter: label filter pattern "!\(" is not a valid regular expression/,
  );
});

t.test('every setting has a flag, and the environment and the file can set it too', async (t) => {
  const c = resolveConfig(['--events-per-second', '0', '--conntrack-gc-interval', '30', '--policy-audit-mode'], {}, noFile);
  t.equal(c.eventsPerSecond, 0, '0 = unlimited');
  t.equal(c.conntrackGcIntervalSeconds, 30);
  t.equal(c.policyAuditMode, true);
  const e = resolveConfig(
    [],
    {
      MEMBRANE_EVENTS_PER_SECOND: '500',
      MEMBRANE_CONNTRACK_GC_INTERVAL: '5',
      MEMBRANE_POLICY_AUDIT_MODE: 'on',
      MEMBRANE_FLOW_EVENTS: 'off',
    },
    noFile,
  );
  t.same([e.eventsPerSecond, e.conntrackGcIntervalSeconds, e.policyAuditMode, e.flowEvents], [500, 5, true, false]);
  const f = resolveConfig(
    ['--config', '/c.yaml'],
    {},
    () => 'eventsPerSecond: 7\nconntrackGcIntervalSeconds: 60\nflowBufferSize: 9\n',
  );
  t.same([f.eventsPerSecond, f.conntrackGcIntervalSeconds, f.flowBufferSize], [7, 60, 9]);
  const d = resolveConfig([], {}, noFile);
  t.same(
    [d.eventsPerSecond, d.conntrackGcIntervalSeconds, d.flowEvents, d.policyAuditMode],
    [250_000, 15, true, false],
    'defaults',
  );
});

t.test('conntrack size and per-endpoint share: flag, environment, file, defaults, ranges', async (t) => {
  const d = resolveConfig([], {}, noFile);
  t.same([d.ctMax, d.ctMaxPerEndpoint], [131072, 32768], 'default: a quarter of the table per endpoint');
  const c = resolveConfig(['--ct-max', '200000'], {}, noFile);
  t.same([c.ctMax, c.ctMaxPerEndpoint], [200000, 50000], 'the share follows the size');
  t.same(resolveConfig(['--ct-max-per-endpoint', '0'], {}, noFile).ctMaxPerEndpoint, 0, '0 = no per-endpoint limit');
  const e = resolveConfig([], { MEMBRANE_CT_MAX: '4096', MEMBRANE_CT_MAX_PER_ENDPOINT: '100' }, noFile);
  t.same([e.ctMax, e.ctMaxPerEndpoint], [4096, 100]);
  const f = resolveConfig(['--config', '/c.yaml'], {}, () => 'ctMax: 8192\nctMaxPerEndpoint: 512\n');
  t.same([f.ctMax, f.ctMaxPerEndpoint], [8192, 512]);
  t.throws(() => resolveConfig(['--ct-max', '100'], {}, noFile), /--ct-max "100" is not a whole number from 1024 to 16777216/);
  t.throws(() => resolveConfig([], { MEMBRANE_CT_MAX_PER_ENDPOINT: 'lots' }, noFile), /MEMBRANE_CT_MAX_PER_ENDPOINT "lots"/);
  t.throws(() => resolveConfig(['--config', '/c.yaml'], {}, () => 'ctMax: -1\n'), /config file \/c.yaml: ctMax/);
  t.match(helpText(), /--ct-max <n>.*MEMBRANE_CT_MAX/s);
});

t.test('--help is generated from the same table: every flag with its environment variable', async (t) => {
  t.same(parseFlags(['--help']).help, true);
  t.same(parseFlags(['-h']).help, true);
  const help = helpText();
  for (const flag of [
    '--state-dir',
    '--bpffs-dir',
    '--socket',
    '--pool',
    '--host-device',
    '--mtu',
    '--node-name',
    '--bpf-object',
    '--docker-plugin',
    '--docker-plugin-dir',
    '--docker-socket',
    '--metrics-address',
    '--observer-socket',
    '--observer-address',
    '--flow-buffer',
    '--flow-events',
    '--events-per-second',
    '--policy-audit-mode',
    '--conntrack-gc-interval',
    '--log-level',
    '--config',
  ]) {
    t.match(help, new RegExp(`\\s${flag}\\b`), flag);
  }
  for (const env of [
    'MEMBRANE_STATE_DIR',
    'MEMBRANE_POOLS',
    'MEMBRANE_EVENTS_PER_SECOND',
    'MEMBRANE_CONNTRACK_GC_INTERVAL',
    'DOCKER_SOCKET',
    'MEMBRANE_CONFIG',
  ]) {
    t.match(help, env, env);
  }
});

t.test('DNS proxy TCP limits: flag, environment, file, defaults, ranges, --help', async (t) => {
  t.same(resolveConfig([], {}, noFile).dnsProxyTcp, { max: 1024, perClient: 64, idleMs: 30_000 }, 'defaults');
  const c = resolveConfig(
    ['--dns-proxy-tcp-max', '100', '--dns-proxy-tcp-max-per-client', '10', '--dns-proxy-tcp-idle-timeout', '5'],
    {},
    noFile,
  );
  t.same(c.dnsProxyTcp, { max: 100, perClient: 10, idleMs: 5000 }, 'flags (the idle timeout in seconds)');
  const e = resolveConfig(
    [],
    { MEMBRANE_DNS_PROXY_TCP_MAX: '200', MEMBRANE_DNS_PROXY_TCP_MAX_PER_CLIENT: '20', MEMBRANE_DNS_PROXY_TCP_IDLE_TIMEOUT: '60' },
    noFile,
  );
  t.same(e.dnsProxyTcp, { max: 200, perClient: 20, idleMs: 60_000 }, 'environment');
  const f = resolveConfig(
    ['--config', '/c.yaml'],
    {},
    () => 'dnsProxyTcpMax: 300\ndnsProxyTcpMaxPerClient: 30\ndnsProxyTcpIdleTimeout: 90\n',
  );
  t.same(f.dnsProxyTcp, { max: 300, perClient: 30, idleMs: 90_000 }, 'file');
  t.same(
    resolveConfig(['--dns-proxy-tcp-max', '16'], {}, noFile).dnsProxyTcp.perClient,
    16,
    'a total below 64: one pod may use it all',
  );
  t.same(
    resolveConfig(['--dns-proxy-tcp-max', '16', '--dns-proxy-tcp-max-per-client', '16'], {}, noFile).dnsProxyTcp.perClient,
    16,
  );
  t.throws(
    () => resolveConfig(['--dns-proxy-tcp-max', '16', '--dns-proxy-tcp-max-per-client', '17'], {}, noFile),
    /--dns-proxy-tcp-max-per-client 17 is more than the 16 TCP connections the DNS proxy keeps in all \(--dns-proxy-tcp-max\)/,
  );
  t.throws(
    () => resolveConfig(['--config', '/c.yaml'], {}, () => 'dnsProxyTcpMaxPerClient: 2000\n'),
    /the config file's dnsProxyTcpMaxPerClient 2000 is more than the 1024/,
  );
  t.throws(
    () => resolveConfig(['--dns-proxy-tcp-max', '0'], {}, noFile),
    /--dns-proxy-tcp-max "0" is not a whole number from 1 to 65536/,
  );
  t.throws(
    () => resolveConfig([], { MEMBRANE_DNS_PROXY_TCP_MAX_PER_CLIENT: 'many' }, noFile),
    /MEMBRANE_DNS_PROXY_TCP_MAX_PER_CLIENT "many" is not a whole number/,
  );
  t.throws(
    () => resolveConfig(['--dns-proxy-tcp-idle-timeout', '0.5'], {}, noFile),
    /--dns-proxy-tcp-idle-timeout "0.5" is not a whole number from 1 to 3600/,
  );
  t.throws(
    () => resolveConfig(['--config', '/c.yaml'], {}, () => 'dnsProxyTcpIdleTimeout: 0\n'),
    /config file \/c.yaml: dnsProxyTcpIdleTimeout/,
  );
  const help = helpText();
  t.match(help, /--dns-proxy-tcp-max <n>.*default 1024; env MEMBRANE_DNS_PROXY_TCP_MAX\)/s);
  t.match(help, /--dns-proxy-tcp-max-per-client <n>.*default 64; env MEMBRANE_DNS_PROXY_TCP_MAX_PER_CLIENT\)/s);
  t.match(help, /--dns-proxy-tcp-idle-timeout <seconds>.*default 30; env MEMBRANE_DNS_PROXY_TCP_IDLE_TIMEOUT\)/s);
});
