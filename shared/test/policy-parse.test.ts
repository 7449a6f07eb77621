// Policy documents: what is accepted and how it is normalized, errors that name the field and line,
// the examples, hostile inputs. The fuzz run: policy-parse-fuzz.test.ts.
import t from 'tap';
import fs from 'node:fs';
import { stringify } from 'yaml';
import { formatIssue, parsePolicies } from '../src/policy/parse.ts';
import { CNP } from './lib/policy-docs.ts';

t.test('a CiliumNetworkPolicy is normalized', async (t) => {
  const r = parsePolicies(CNP);
  t.same(r.issues, []);
  const p = r.policies[0];
  t.equal(p.name, 'shop/web', 'namespaced name');
  const spec = p.specs[0];
  t.same(spec.subject.matchLabels, { app: 'web', 'io.kubernetes.pod.namespace': 'shop' }, 'subject confined to the namespace');
  t.same(spec.defaultDeny, { ingress: true, egress: true });
  const [r0, r1, d0, e0] = [
    spec.rules[0],
    spec.rules[1],
    spec.rules.find((r) => r.action === 'deny')!,
    spec.rules.find((r) => r.direction === 'egress' && r.action === 'allow')!,
  ];
  t.same(r0.ports, [
    { proto: 'TCP', port: 80 },
    { proto: 'ANY', port: 8000, endPort: 8010 },
  ]);
  t.same((r0.peers as { selector: { matchLabels: object } }[])[0].selector.matchLabels, {
    app: 'client',
    'io.kubernetes.pod.namespace': 'shop',
  });
  t.equal(r1.peers, 'all', 'a rule with only L4 applies to every peer');
  t.same(r1.ports, [
    { proto: 'ICMP', type: 8 },
    { proto: 'ICMPv6', type: 128 },
  ]);
  t.same(d0.peers, [{ kind: 'cidr', cidr: '198.18.0.0/15', except: ['198.18.5.0/24'] }]);
  t.equal(d0.path, 'spec.egressDeny[0]');
  t.same(e0.peers, [{ kind: 'entity', entity: 'world' }]);
});

t.test('Cilium idioms: `- {}` allows nothing; enableDefaultDeny; multi-doc; JSON; List', async (t) => {
  const r = parsePolicies(`apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-all}
spec:
  endpointSelector: {}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-only}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false}
  egressDeny: [{toEntities: [host]}]
---
`);
  t.same(r.issues, []);
  t.same(r.policies[0].specs[0].rules[0].peers, [], 'empty rule selects nobody');
  t.same(r.policies[1].specs[0].defaultDeny, { ingress: false, egress: false });
  const json = parsePolicies(
    JSON.stringify([
      { apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: 'a' }, spec: { endpointSelector: {} } },
    ]),
  );
  t.same(json.issues, []);
  t.equal(json.policies[0].name, 'a');
  const list = parsePolicies(
    stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: [{ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'x' }, spec: { podSelector: {} } }],
    }),
  );
  t.same(list.issues, []);
  t.equal(list.policies[0].name, 'x', 'NetworkPolicy defaults to namespace "default", named without it');
  t.equal(list.policies[0].namespace, 'default');
});

t.test('a Kubernetes NetworkPolicy is normalized', async (t) => {
  const r = parsePolicies(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}
      podSelector: {matchLabels: {role: api}}
    - ipBlock: {cidr: 198.18.0.0/16, except: [198.18.1.0/24]}
    ports: [{port: 5432}, {protocol: UDP, port: 9000, endPort: 9005}]
  - {}
`);
  t.same(r.issues, []);
  const spec = r.policies[0].specs[0];
  t.same(spec.defaultDeny, { ingress: true, egress: true }, 'policyTypes decide enforcement');
  t.same(
    spec.rules[0].ports,
    [
      { proto: 'TCP', port: 5432 },
      { proto: 'UDP', port: 9000, endPort: 9005 },
    ],
    'TCP is the default protocol',
  );
  t.same(
    (spec.rules[0].peers as { selector: object }[])[0].selector,
    {
      matchLabels: { role: 'api' },
      matchExpressions: [{ key: 'io.kubernetes.pod.namespace', operator: 'In', values: ['prod'] }],
    },
    'namespaceSelector by name',
  );
  t.equal(spec.rules[1].peers, 'all', '`- {}` allows everything in a NetworkPolicy');
  t.same(spec.rules[1].ports, []);
});

t.test('errors name the field and the line', async (t) => {
  const bad = CNP.replace('port: "80"', 'port: http')
    .replace('- fromEndpoints:', '- fromEndpoint:')
    .replace('except: [198.18.5.0/24]', 'except: [10.0.0.0/24]')
    .replace('type: 128', 'type: Bogus');
  const r = parsePolicies(bad);
  t.same(r.policies, [], 'nothing is accepted from an invalid input');
  const text = r.issues.map((i) => formatIssue(i, 'p.yaml'));
  t.match(
    text.join('\n'),
    /p\.yaml:11:5: spec\.ingress\[0\]\.fromEndpoint: unknown field "fromEndpoint" \(did you mean "fromEndpoints"\?\)/,
  );
  t.match(
    text.join('\n'),
    /p\.yaml:16:\d+: spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: named port "http" is not supported/,
  );
  t.match(text.join('\n'), /p\.yaml:24:\d+: .*fields\[1\]\.type: ICMP type "Bogus"/);
  t.match(
    text.join('\n'),
    /p\.yaml:29:\d+: spec\.egressDeny\[0\]\.toCIDRSet\[0\]\.except\[0\]: except 10\.0\.0\.0\/24 must be a smaller prefix inside 198\.18\.0\.0\/15/,
  );
  const more = [
    ['kind: Deployment', /kind "Deployment" is not/],
    [
      'kind: CiliumNetworkPolicy\napiVersion: v1\nmetadata: {name: x}\nspec: {endpointSelector: {}}',
      /apiVersion must be cilium\.io\/v2/,
    ],
    [
      'kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: X_Y}\nspec: {endpointSelector: {}}',
      /metadata\.name: a policy name is lower case/,
    ],
    ['kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {}', /endpointSelector is required/],
    [
      'kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {endpointSelector: {}, egress: [{toGroups: [{aws: {}}]}]}',
      /toGroups is not supported by Membrane/,
    ],
    [
      'kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: "1", endPort: 60000}]}]}]}',
      /covers 60000 ports; at most 8192/,
    ],
    [
      'kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{fromEntities: [mars]}]}',
      /entity "mars" is not one of/,
    ],
    [
      'kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {endpointSelector: {matchExpressions: [{key: a, operator: In}]}}',
      /operator In needs at least one value/,
    ],
    ['a: [unclosed', /not valid YAML\/JSON/],
    [
      '{"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", "metadata": {"name": "x"}, "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}}',
      /1:\d+: spec\.ingress\[0\]\.ports\[0\]\.port: port 70000 is out of range/,
    ],
  ] as const;
  for (const [doc, want] of more) {
    const res = parsePolicies(doc);
    t.match(res.issues.map((i) => formatIssue(i)).join('\n'), want, String(want));
  }
  const dup = parsePolicies(`${CNP}---\n${CNP}`);
  t.match(dup.issues[0].message, /appears twice/);
  t.equal(dup.issues[0].line, 36, 'the duplicate is located in the second document');
});

t.test('every example in examples/policies is valid', async (t) => {
  const dir = new URL('../../examples/policies/', import.meta.url);
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.yaml'));
  t.ok(files.length >= 5);
  for (const f of files) {
    const r = parsePolicies(fs.readFileSync(new URL(f, dir), 'utf8'));
    t.same(r.issues, [], f);
    t.ok(r.policies.length > 0, `${f}: ${r.policies.map((p) => p.name).join(', ')}`);
  }
});

t.test('hostile inputs stay bounded', async (t) => {
  const bomb =
    'a: &a [x, x, x, x, x, x, x, x, x]\n' +
    Array.from(
      { length: 12 },
      (_, i) =>
        `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}]`,
    ).join('\n');
  const t0 = Date.now();
  const res = parsePolicies(bomb);
  t.ok(res.issues.length > 0, 'alias bomb is rejected');
  t.ok(Date.now() - t0 < 5000, 'quickly');
  const deep = '['.repeat(5000) + ']'.repeat(5000);
  t.ok(parsePolicies(deep).issues.length > 0, 'deep nesting is rejected, not a stack overflow');
});
