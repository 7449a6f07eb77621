import t from 'tap';
import { parseCniArgs, readEnv } from '../src/env.ts';
import { ifNameProblem } from '../../shared/src/net/index.ts';
import { cmpVersion, parseNetConf, requireVersionFor } from '../src/config.ts';
import type { CniError } from '../src/errors.ts';

const codeOf = (fn: () => unknown): number | undefined => {
  try {
    fn();
  } catch (e) {
    return (e as CniError).code;
  }
  return undefined;
};

t.test('CNI_ARGS: order independent, first "=" splits, malformed pairs skipped', async (t) => {
  const a = parseCniArgs('IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;X=a=b;;bad');
  const b = parseCniArgs('K8S_POD_NAME=p;bad;X=a=b;K8S_POD_NAMESPACE=ns;IgnoreUnknown=1');
  t.same(a, { IgnoreUnknown: '1', K8S_POD_NAMESPACE: 'ns', K8S_POD_NAME: 'p', X: 'a=b' });
  t.same(a, b);
});

t.test('environment per verb', async (t) => {
  const base = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/x', CNI_IFNAME: 'eth0' };
  t.equal(readEnv(base, 'ADD').ifName, 'eth0');
  t.equal(
    codeOf(() => readEnv({ ...base, CNI_NETNS: '' }, 'ADD')),
    4,
    'ADD needs CNI_NETNS',
  );
  t.equal(readEnv({ ...base, CNI_NETNS: '' }, 'DEL').netns, '', 'DEL tolerates an empty CNI_NETNS');
  t.equal(
    codeOf(() => readEnv({ ...base, CNI_CONTAINERID: undefined }, 'DEL')),
    4,
  );
  t.equal(
    codeOf(() => readEnv({ ...base, CNI_CONTAINERID: '-bad' }, 'ADD')),
    4,
    'container id syntax',
  );
  t.equal(
    codeOf(() => readEnv({ ...base, CNI_IFNAME: 'a-very-long-ifname0' }, 'ADD')),
    4,
    'ifname length',
  );
  t.equal(readEnv({}, 'STATUS').containerId, '');
  try {
    readEnv({ CNI_COMMAND: 'ADD' }, 'ADD');
  } catch (e) {
    t.match((e as Error).message, /CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME/, 'names every missing variable');
  }
  t.equal(ifNameProblem('eth:0'), 'may not contain "/", ":" or whitespace');
  t.equal(ifNameProblem('..'), 'may not be "." or ".."');
});

t.test('network configuration', async (t) => {
  const ok = { cniVersion: '1.0.0', name: 'net1', type: 'membrane-cni' };
  t.equal(parseNetConf(JSON.stringify(ok)).name, 'net1');
  t.equal(
    codeOf(() => parseNetConf('{bad')),
    6,
    'malformed JSON -> 6',
  );
  t.equal(
    codeOf(() => parseNetConf('[]')),
    6,
    'not an object -> 6',
  );
  t.equal(
    codeOf(() => parseNetConf(JSON.stringify({ ...ok, cniVersion: '0.2.0' }))),
    1,
    'old version -> 1',
  );
  t.equal(
    codeOf(() => parseNetConf(JSON.stringify({ ...ok, cniVersion: '9.9.9' }))),
    1,
    'unknown version -> 1',
  );
  t.equal(
    codeOf(() => parseNetConf(JSON.stringify({ ...ok, cniVersion: undefined }))),
    1,
    'no version = 0.1.0 -> 1',
  );
  t.equal(
    codeOf(() => parseNetConf(JSON.stringify({ ...ok, mtu: 'big' }))),
    7,
    'bad field -> 7',
  );
  t.equal(
    codeOf(() => parseNetConf(JSON.stringify({ ...ok, ipMasq: true }))),
    2,
    'ipMasq=true -> 2',
  );
  // found by the CNI fuzzer: a relative socket put the DEL queue under the runtime's working directory
  t.equal(
    codeOf(() => parseNetConf(JSON.stringify({ ...ok, agentSocket: 'tmp/agent.sock' }))),
    7,
    'relative agentSocket -> 7',
  );
  try {
    parseNetConf(JSON.stringify({ ...ok, mtu: 10, name: 'bad name' }));
  } catch (e) {
    t.match((e as CniError).details, /name: must match/);
    t.match((e as CniError).details, /mtu: must be at least 68/);
  }
  t.ok(parseNetConf(JSON.stringify({ ...ok, capabilities: { portMappings: true }, bridge: 'x' })), 'unknown keys tolerated');
  t.equal(
    codeOf(() => requireVersionFor('CHECK', '0.3.1')),
    1,
    'CHECK needs 0.4.0',
  );
  t.equal(
    codeOf(() => requireVersionFor('GC', '1.0.0')),
    1,
    'GC needs 1.1.0',
  );
  t.equal(
    codeOf(() => requireVersionFor('STATUS', '1.1.0')),
    undefined,
  );
  t.ok(cmpVersion('0.4.0', '1.0.0') < 0 && cmpVersion('1.1.0', '1.0.0') > 0 && cmpVersion('0.3.1', '0.3.1') === 0);
});
