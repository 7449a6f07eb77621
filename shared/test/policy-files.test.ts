// Policy files as Cilium users bring them: cilium-dbg's JSON rule arrays, descriptions, port-less
// toPorts entries, documents without a namespace (-n, the default namespace, Docker containers in
// it), Cilium's derived labels (known, rewritten, or an error naming the field), and "did you mean".
import t from 'tap';
import { closestField } from '../src/policy/fields.ts';
import { formatIssue, parsePolicies } from '../src/policy/parse.ts';
import { matches, type Selector } from '../src/policy/selector.ts';
import type { Peer, Policy } from '../src/policy/types.ts';

const NS = 'k8s:io.kubernetes.pod.namespace';
const subject = (p: Policy) => p.specs[0].subject;
const peerSelector = (p: Policy, rule = 0) => ((p.specs[0].rules[rule].peers as Peer[])[0] as { selector: Selector }).selector;
const errors = (text: string, opts = {}) =>
  parsePolicies(text, opts)
    .issues.map((i) => formatIssue(i, 'f'))
    .join('\n');
const ok = (text: string, opts = {}) => {
  const r = parsePolicies(text, opts);
  if (r.issues.length) throw new Error(r.issues.map((i) => formatIssue(i)).join('\n'));
  return r.policies;
};

const RULES = JSON.stringify(
  [
    {
      labels: [{ key: 'name', value: 'l3-rule', source: 'unspec' }],
      description: 'backend accepts the frontend',
      endpointSelector: { matchLabels: { role: 'backend' } },
      ingress: [{ fromEndpoints: [{ matchLabels: { role: 'frontend' } }] }],
    },
    {
      labels: ['k8s:io.cilium.k8s.policy.name=dns-out', 'k8s:io.cilium.k8s.policy.namespace=shop'],
      endpointSelector: {},
      egress: [{ toPorts: [{ ports: [{ port: '53', protocol: 'UDP' }] }] }],
    },
  ],
  null,
  2,
);

t.test("cilium-dbg's JSON rule arrays import: named by their labels, cluster-wide unless namespaced", async (t) => {
  const [l3, dns] = ok(RULES);
  t.same(
    [l3.name, l3.kind, l3.namespace, l3.description],
    ['l3-rule', 'CiliumClusterwideNetworkPolicy', undefined, 'backend accepts the frontend'],
  );
  t.ok(matches(subject(l3), { 'k8s:role': 'backend', [NS]: 'shop' }), 'like cilium-dbg import: every namespace');
  t.equal(l3.specs[0].rules[0].path, 'ingress[0]', 'paths start at the rule');
  t.same(
    [dns.name, dns.kind, dns.namespace],
    ['shop/dns-out', 'CiliumNetworkPolicy', 'shop'],
    'io.cilium.k8s.policy.namespace puts it in its namespace',
  );
  t.notOk(matches(subject(dns), { app: 'x' }), 'confined to shop');
  const [inNs] = ok(RULES, { namespace: 'team' });
  t.same([inNs.name, inNs.namespace], ['team/l3-rule', 'team'], '-n namespaces unnamespaced rules');
  t.match(
    errors('[{"endpointSelector": {}, "ingress": [{}]}]'),
    /^f:1:2: \[0\]\.labels: a rule needs a name: add labels: \[\{key: name, value: NAME\}\]/,
  );
  t.match(
    errors('[{"labels": [{"key": "name", "value": "Bad_Name"}], "endpointSelector": {}}]'),
    /labels: the name label "Bad_Name" is not a policy name/,
  );
  t.match(
    errors('[{"labels": [{"key": "name", "value": "a"}], "endpointSelector": {}, "ingres": []}]'),
    /unknown field "ingres" \(did you mean "ingress"\?\)/,
  );
  t.match(
    errors(
      '[{"labels": [{"key": "name", "value": "a"}], "endpointSelector": {}}, {"labels": ["name=a"], "endpointSelector": {}}]',
    ),
    /appears twice/,
  );
  t.match(errors('[{"metadata": {"name": "x"}}]'), /kind is required/, 'not a rule: kind is still required');
});

t.test('descriptions, and "did you mean" never suggests the word that was written', async (t) => {
  const [p] = ok(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d}
description: "at the top, as Cilium's own examples have it"
spec: {endpointSelector: {}}
`);
  t.equal(p.description, "at the top, as Cilium's own examples have it");
  const misplaced = errors(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d}
spec: {endpointSelector: {}, ingress: [{description: x}]}
`);
  t.match(misplaced, /spec\.ingress\[0\]\.description: field "description" is not allowed here \(it belongs in spec/);
  t.notMatch(misplaced, /did you mean/);
  t.match(
    errors(
      'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d}\nspec: {endpointSelector: {}, toPorts: []}\n',
    ),
    /field "toPorts" is not allowed here \(it belongs in an ingress\/egress rule\)/,
  );
  t.equal(closestField('description'), undefined);
  t.equal(closestField('Description'), 'description');
  t.equal(closestField('endpointselector'), 'endpointSelector');
  t.equal(closestField('fromEndpoint'), 'fromEndpoints');
});

t.test('a toPorts entry with a protocol and no port is every port of that protocol', async (t) => {
  const [p] = ok(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: udp-any}
spec:
  endpointSelector: {}
  egress:
  - toPorts: [{ports: [{protocol: UDP}, {port: "80"}]}]
`);
  t.same(p.specs[0].rules[0].ports, [
    { proto: 'UDP', port: 0 },
    { proto: 'ANY', port: 80 },
  ]);
  t.match(
    errors(
      'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{endPort: 90}]}]}]}\n',
    ),
    /endPort: endPort needs a non-zero port/,
  );
});

const CNP = (meta: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {${meta}}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
`;

t.test('documents without a namespace go to -n NS, else to "default", which holds namespace-less endpoints', async (t) => {
  const [dflt] = ok(CNP('name: web'));
  t.same([dflt.name, dflt.namespace], ['web', 'default'], 'the default namespace, named without it');
  t.ok(matches(subject(dflt), { 'docker:app': 'web' }), 'a Docker container (no namespace) is selectable');
  t.ok(matches(subject(dflt), { 'k8s:app': 'web', [NS]: 'default' }), 'a pod in "default"');
  t.notOk(matches(subject(dflt), { 'k8s:app': 'web', [NS]: 'shop' }), 'not a pod of another namespace');
  t.ok(matches(peerSelector(dflt), { app: 'client' }), 'peers: namespace-less clients too');
  t.notOk(matches(peerSelector(dflt), { app: 'client', [NS]: 'shop' }));
  const [shop] = ok(CNP('name: web'), { namespace: 'shop' });
  t.same([shop.name, shop.namespace], ['shop/web', 'shop']);
  t.ok(matches(subject(shop), { app: 'web', [NS]: 'shop' }));
  t.notOk(matches(subject(shop), { app: 'web' }), 'a namespace-less container is not in shop');
  const [own] = ok(CNP('name: web, namespace: prod'), { namespace: 'shop' });
  t.equal(own.name, 'prod/web', "a document's own namespace wins over -n");
  const [np] = ok('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {podSelector: {}}\n', {
    namespace: 'shop',
  });
  t.same([np.name, np.namespace], ['shop/np', 'shop']);
  t.match(
    errors(CNP('name: web'), { namespace: 'Not_A_Namespace' }),
    /namespace "Not_A_Namespace" is not a valid namespace name/,
  );
  const [ccnp] = ok(
    'apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: all}\nspec: {endpointSelector: {}}\n',
    { namespace: 'shop' },
  );
  t.same([ccnp.name, ccnp.namespace], ['all', undefined], 'a clusterwide policy ignores -n');
});

t.test("Cilium's derived labels: rewritten where Membrane knows them, an error where it cannot", async (t) => {
  const sel = (labels: string, opts = {}) =>
    peerSelector(ok(CNP('name: d').replace('{matchLabels: {app: client}}', `{matchLabels: {${labels}}}`), opts)[0]);
  t.same(
    sel('k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name: shop'),
    { matchLabels: {}, matchExpressions: [{ key: 'io.kubernetes.pod.namespace', operator: 'In', values: ['shop'] }] },
    "a namespace's name is the pod's namespace label",
  );
  const team = errors(
    CNP('name: d').replace('{matchLabels: {app: client}}', '{matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a}}'),
  );
  t.match(
    team,
    /f:6:\d+: spec\.ingress\[0\]\.fromEndpoints\[0\]\.matchLabels\.k8s:io\.cilium\.k8s\.namespace\.labels\.team: "k8s:io\.cilium\.k8s\.namespace\.labels\.team": Membrane cannot know the labels of namespaces/,
  );
  t.same(
    sel('app: c, io.cilium.k8s.policy.cluster: c1', { cluster: 'c1' }).matchLabels,
    { app: 'c' },
    "this node's cluster: always true, dropped",
  );
  t.match(
    errors(CNP('name: d').replace('{matchLabels: {app: client}}', '{matchLabels: {io.cilium.k8s.policy.cluster: c2}}'), {
      cluster: 'c1',
    }),
    /"io\.cilium\.k8s\.policy\.cluster": this node is in cluster "c1" and Membrane connects no other clusters, so this would match nothing/,
  );
  t.same(
    sel('io.cilium.k8s.policy.cluster: c2').matchLabels,
    { 'io.cilium.k8s.policy.cluster': 'c2' },
    'without an agent (policy validate) it cannot be checked yet',
  );
  t.same(
    sel('io.cilium.k8s.policy.serviceaccount: api').matchLabels,
    { 'io.cilium.k8s.policy.serviceaccount': 'api' },
    'service accounts come from the runtime: kept',
  );
  const np = (nsSel: string) => `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: shop}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: ${nsSel}}]}]
`;
  const peer = (nsSel: string) => peerSelector(ok(np(nsSel))[0]);
  t.same(peer('{}'), { matchLabels: {}, matchExpressions: [] }, 'every namespace, namespace-less endpoints included');
  t.ok(
    matches(peer('{matchLabels: {kubernetes.io/metadata.name: default}}'), { app: 'x' }),
    '"default" holds namespace-less endpoints',
  );
  t.notOk(
    matches(peer('{matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [default]}]}'), { app: 'x' }),
  );
  t.ok(
    matches(peer('{matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [default]}]}'), {
      [NS]: 'shop',
    }),
  );
  t.match(
    errors(np('{matchLabels: {team: a}}')),
    /namespaceSelector\.matchLabels\.team: namespace label "team": Membrane cannot know the labels of namespaces/,
  );
  t.match(
    errors(np('{matchExpressions: [{key: kubernetes.io/metadata.name, operator: DoesNotExist}]}')),
    /every namespace has a name, so this would match nothing/,
  );
});
