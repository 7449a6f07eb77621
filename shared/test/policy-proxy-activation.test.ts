// The proxies' datapath (routing rule, socket lookup: shared/src/l7/activation.ts) is set up by the
// policy engine's activateProxies before any entry that diverts a flow to a proxy is written, only for
// policies with L7 or DNS rules, and a failure to set it up fails the change with nothing diverting.
import t from 'tap';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import type { Entry } from '../src/policy/compile.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';

/** Records, for every policy write, whether the proxies were active when an entry with a port came. */
class WatchedOps extends MemoryPolicyOps {
  active = false;
  divertedBeforeActive = 0;
  override writePolicy(upsert: [string, Entry][], remove: string[]) {
    if (!this.active && upsert.some(([, e]) => e.proxyPort)) this.divertedBeforeActive++;
    super.writePolicy(upsert, remove);
  }
  diverting() {
    return [...this.policy.values()].filter((e) => e.proxyPort).length;
  }
}

const PLAIN = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: plain}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`;
const HTTP = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
`;
const DNS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
`;

async function setup(activate: () => void) {
  const ops = new WatchedOps();
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    proxyPorts: () => ({ http: 15001, dns: 15002 }),
    activateProxies: activate,
  });
  await engine.start();
  for (const [id, labels, ip] of [
    [11, { app: 'api' }, '10.0.0.11'],
    [12, { app: 'client' }, '10.0.0.12'],
  ] as const) {
    const ep = testEndpoint(id, labels, await engine.identityFor(labels), ip);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  return { ops, engine };
}

t.test('no proxy datapath for plain policy; set up before the first diverting entry', async (t) => {
  let calls = 0;
  const { ops, engine } = await setup(() => {
    calls++;
    ops.active = true;
  });
  await engine.importText(PLAIN);
  t.equal(calls, 0, 'a policy without L7 or DNS rules sets nothing up');
  await engine.importText(HTTP);
  t.equal(calls, 1, 'an HTTP rule does');
  t.ok(ops.diverting() > 0, 'and its entries divert to the proxy');
  t.equal(ops.divertedBeforeActive, 0, 'none of them was written before the proxy datapath was up');
  await engine.importText(DNS);
  await engine.delete('all');
  await engine.importText(HTTP);
  t.equal(calls, 1, 'once: never taken down, never set up twice');
});

t.test('a DNS rule sets it up too', async (t) => {
  let calls = 0;
  const { ops, engine } = await setup(() => {
    calls++;
    ops.active = true;
  });
  await engine.importText(DNS);
  t.equal(calls, 1);
  t.ok(ops.diverting() > 0, 'DNS entries divert');
  t.equal(ops.divertedBeforeActive, 0);
});

t.test('when it cannot be set up, the change fails and nothing diverts', async (t) => {
  let fail = true;
  const { ops, engine } = await setup(() => {
    if (fail) throw new Error('netlink: cannot add the rule');
    ops.active = true;
  });
  await engine.importText(PLAIN);
  await t.rejects(engine.importText(HTTP), /cannot add the rule/, 'the import fails');
  t.equal(ops.diverting(), 0, 'with no diverting entry written');
  t.ok(
    [...ops.policy.values()].some((e) => e.action === 'allow'),
    'and the policy before it still in force',
  );
  fail = false;
  await engine.importText(HTTP);
  t.ok(ops.diverting() > 0, 'once it can be set up, the import goes through');
  t.equal(ops.divertedBeforeActive, 0);
});
