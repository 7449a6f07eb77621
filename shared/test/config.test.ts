import t from 'tap';
import { resolveConfig, poolsToNetworks, DEFAULTS } from '../src/agent/config.ts';

const noFile = () => { throw new Error('ENOENT'); };

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
  t.same(c.networks.map((n) => n.name), ['default', 'red']);
});

t.test('bad input names what was wrong', async (t) => {
  t.throws(() => resolveConfig(['--pool', '10.0.0.0/99'], {}, noFile), /--pool "10.0.0.0\/99".*longer than 32/);
  t.throws(() => resolveConfig(['--bogus'], {}, noFile), /unknown option --bogus/);
  t.throws(() => resolveConfig(['--state-dir'], {}, noFile), /--state-dir needs a value/);
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
