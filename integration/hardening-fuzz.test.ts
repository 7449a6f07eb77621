// Fuzzer of the agent's HTTP API (endpoint, network, label and policy bodies), against a real agent
// in a node netns of ours (lib/fuzz-node.ts): every answer is a success or a 4xx with
// {error: {code, message}}; never a crash, a 5xx or a hang; a refused request changes nothing; at the
// end nothing is leaked (lib/leaks.ts). The other doors: hardening-fuzz-cni.test.ts and
// hardening-fuzz-libnetwork.test.ts (each its own agent, in parallel). FUZZ_SEED=random searches, FUZZ_SEED=<n> repeats a run.
import t from 'tap';
import { randomId, randomSubnet24 } from './lib/agent.ts';
import { fuzzBody, mutateDoc, mutateText } from './lib/fuzz-inputs.ts';
import { type Answer, ROUNDS, startFuzzNode } from './lib/fuzz-node.ts';

// The CI default (FUZZ_SEED=random searches for new failures; see lib/fuzz-inputs.ts).
const SEED = 1921115487;

t.test('API fuzzer: clear 4xx errors, no crash, no partial state, nothing leaked', async (t) => {
  const f = await startFuzzNode(t, SEED);
  const { node, api, r, view, newFailures, bad, problem, pods, anchor } = f;

  // ---- the HTTP API --------------------------------------------------------------------------------
  const policyYaml = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: fz\nspec:\n  endpointSelector:\n    matchLabels:\n      app: fz\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: web\n    toPorts:\n    - ports:\n      - port: "80"\n        protocol: TCP\n`;
  const policyJson = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'fzj' },
    spec: {
      endpointSelector: { matchLabels: { app: 'fz' } },
      egress: [{ toCIDR: ['198.18.0.0/16'], toPorts: [{ ports: [{ port: '53', protocol: 'UDP' }] }] }],
    },
  };
  const doors = [
    {
      method: 'POST',
      path: '/v1/endpoints',
      valid: () => ({
        containerId: `fz-${randomId()}`,
        ifName: 'eth1',
        netns: pods[1].path,
        labels: { app: 'fz' },
        metadata: { k: 'v' },
      }),
    },
    { method: 'POST', path: '/v1/networks', valid: () => ({ name: `fz${randomId(3)}`, subnets: [randomSubnet24()], mtu: 1400 }) },
    {
      method: 'PUT',
      path: `/v1/endpoints/${anchor.containerId}/eth0/labels`,
      valid: () => ({ labels: { app: 'anchor', tier: 'x' } }),
    },
  ];
  let refused = 0,
    accepted = 0;
  for (let i = 0; i < ROUNDS.api; i++) {
    const before = await view();
    let a: Answer;
    let input: string;
    let door: string;
    if (r.chance(0.2)) {
      door = 'POST /v1/policy';
      input = r.chance(0.5) ? mutateText(r, policyYaml) : JSON.stringify(mutateDoc(r, policyJson));
      a = await api('POST', '/v1/policy', input);
    } else {
      const d = r.pick(doors);
      door = `${d.method} ${d.path}`;
      input = fuzzBody(r, d.valid());
      a = await api(d.method, d.path, input);
    }
    if (a.status >= 200 && a.status < 300) {
      accepted++;
      // A valid mutation: undo it so that the end state can be compared.
      if (door === 'POST /v1/endpoints') await node.agent.client.deleteEndpoint(a.body.containerId, a.body.ifName);
      if (door === 'POST /v1/networks' && a.status === 201) await node.agent.client.deleteNetwork(a.body.name);
      if (door === 'POST /v1/policy') await api('DELETE', '/v1/policy?all=true');
      continue;
    }
    refused++;
    const clear =
      a.status >= 400 &&
      a.status < 500 &&
      typeof a.body?.error?.code === 'string' &&
      typeof a.body.error.message === 'string' &&
      a.body.error.message.length > 0;
    const failures = newFailures();
    if (!clear || failures.length) problem(door, input, { status: a.status, text: `${a.text} ${failures.join(' ')}` });
    else if ((await view()) !== before) problem(`${door} changed state although refused`, input, a);
  }
  await api('PUT', `/v1/endpoints/${anchor.containerId}/eth0/labels`, JSON.stringify({ labels: { app: 'anchor' } }));
  t.same(bad, [], `API: ${refused} refused with a clear 4xx and nothing changed, ${accepted} valid mutations accepted`);
  bad.length = 0;
  t.ok(refused > ROUNDS.api / 2, 'most inputs were refused (the fuzz reaches the checks)');
  t.same((await api('GET', '/v1/healthz')).status, 200, 'the agent is alive');

  await f.finish(t);
});
