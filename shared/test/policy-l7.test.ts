// L7 rules in policies: validation with Cilium's rules and field spellings, compilation (additive
// rules, deny precedence, the closure over the datapath's probe order, checked against an oracle),
// and the datapath encoding of a proxied entry. The HTTP example policies (examples/policies/l7-http) are fixtures.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CidrIdentities } from '../src/identity/cidr.ts';
import {
  PolicyCompiler,
  closeDenies,
  closeL7,
  l4code,
  merge,
  probe,
  type DirectionPolicy,
  type Entry,
} from '../src/policy/compile.ts';
import { decodePolicyValue, encodePolicyValue } from '../src/policy/map-codec.ts';
import { formatIssue, parsePolicies } from '../src/policy/parse.ts';
import { RESERVED } from '../src/identity/reserved.ts';
import { MemoryPolicyOps, records, testEndpoint } from './lib/policy.ts';
import { seeded } from './lib/seeded.ts';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples/policies/l7-http');

const issues = (yaml: string) => parsePolicies(yaml).issues.map((i) => `${i.path}: ${i.message}`);

const STOREFRONT = { id: 300, labels: { app: 'storefront' } };
const LIVE = { id: 301, labels: { stage: 'live' } };
const CRAWLER = { id: 302, labels: { app: 'crawler' } };
const universe = () => ({ identities: [STOREFRONT, LIVE, CRAWLER], cidrs: new CidrIdentities() });

t.test('the HTTP example policies validate', async (t) => {
  const files = fs.readdirSync(FIXTURES).filter((f) => /\.(ya?ml|json)$/.test(f));
  t.ok(files.length >= 4, `fixtures: ${files.join(', ')}`);
  for (const f of files) {
    const r = parsePolicies(fs.readFileSync(path.join(FIXTURES, f), 'utf8'));
    t.same(
      r.issues.map((i) => formatIssue(i, f)),
      [],
      `${f} validates`,
    );
    t.ok(
      r.policies.some((p) => p.specs.some((s) => s.rules.some((rule) => rule.l7?.length))),
      `${f} has HTTP rules`,
    );
  }
});

t.test('storefront-additive: stage=live is allowed everything (L3 rule), others only GET /catalog on 80', async (t) => {
  const recs = records(fs.readFileSync(path.join(FIXTURES, 'storefront-additive.yaml'), 'utf8'));
  const svc = new PolicyCompiler(recs, universe()).forLabels(STOREFRONT.labels);
  t.match(probe(svc.ingress, LIVE.id, 6, 80)?.entry, { action: 'allow' });
  t.notOk(probe(svc.ingress, LIVE.id, 6, 80)?.entry.l7, 'live: plain allow (rules are additive), not proxied');
  const other = probe(svc.ingress, CRAWLER.id, 6, 80)?.entry;
  t.match(other, {
    action: 'allow',
    l7: {
      kind: 'http',
      rules: [{ path: 'spec.ingress[1].toPorts[0].rules.http[0]', http: { method: 'GET', path: '/catalog' } }],
    },
  });
  t.equal(probe(svc.ingress, CRAWLER.id, 6, 81), undefined, 'crawler -> 81: default deny');
  t.match(
    probe(svc.ingress, RESERVED.host, 6, 80)?.entry,
    { action: 'allow', l7: undefined },
    'the host allowance is never proxied',
  );
});

t.test('HTTP rules of several rules on the same traffic are unioned; deny still wins', async (t) => {
  const recs = records(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a}
spec:
  endpointSelector: {matchLabels: {app: storefront}}
  ingress:
  - fromEndpoints: [{matchLabels: {stage: live}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: PUT, path: /upload}]}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: crawler}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`);
  const svc = new PolicyCompiler(recs, universe()).forLabels(STOREFRONT.labels);
  const prod = probe(svc.ingress, LIVE.id, 6, 80)?.entry;
  t.same(
    prod?.l7?.rules.map((r) => r.http.method),
    ['GET', 'PUT'],
    'live gets both rule sets',
  );
  t.same(
    probe(svc.ingress, 999, 6, 80)?.entry.l7?.rules.map((r) => r.http.method),
    ['PUT'],
    'anyone else only the any-peer one',
  );
  t.equal(probe(svc.ingress, CRAWLER.id, 6, 80)?.entry.action, 'deny', 'deny wins over L7 allow');
});

// ---- oracle: what the table must answer under the probe order ------------------------------------

interface R {
  peer: number;
  proto: number;
  dport: number;
  action: 'allow' | 'deny';
  l7?: string;
}

function oracle(rules: R[], peer: number, proto: number, dport: number): string | undefined {
  const hit = rules.filter(
    (r) =>
      (r.peer === 0 || r.peer === peer) &&
      (r.proto === 0 || r.proto === proto) &&
      (r.dport === 0 || (r.proto !== 0 && r.dport === dport)),
  );
  if (hit.some((r) => r.action === 'deny')) return 'deny';
  if (!hit.length) return undefined;
  if (hit.some((r) => !r.l7)) return 'allow';
  return `l7:${[...new Set(hit.map((r) => r.l7))].sort().join(',')}`;
}

function verdict(e: Entry | undefined): string | undefined {
  if (!e) return undefined;
  if (e.action === 'deny' || !e.l7) return e.action;
  return `l7:${[...new Set(e.l7.rules.map((r) => r.path))].sort().join(',')}`;
}

t.test('L7 closure matches the oracle on random rule sets', async (t) => {
  const rnd = seeded(4242);
  const peers = [0, 300, 301];
  let checked = 0;
  for (let round = 0; round < 600; round++) {
    const rules: R[] = [];
    for (let i = 0, n = 1 + rnd(7); i < n; i++) {
      const l7 = rnd(2) === 0;
      const proto = l7 ? 6 : [0, 6, 17][rnd(3)];
      const action = !l7 && rnd(4) === 0 ? 'deny' : 'allow';
      rules.push({
        peer: peers[rnd(3)],
        proto,
        dport: l7 ? [80, 443][rnd(2)] : proto ? [0, 80, 443][rnd(3)] : 0,
        action,
        ...(l7 ? { l7: `r${i}` } : {}),
      });
    }
    const dp: DirectionPolicy = { defaultDeny: true, columns: new Map() };
    rules.forEach((r, i) => {
      let col = dp.columns.get(r.peer);
      if (!col) dp.columns.set(r.peer, (col = new Map()));
      const e: Entry = {
        action: r.action,
        ruleId: i + 1,
        ...(r.l7
          ? { l7: { kind: 'http', rules: [{ ruleId: i + 1, path: r.l7, http: { headers: [], headerMatches: [] } }] } }
          : {}),
      };
      merge(col, l4code(r.proto, r.proto ? r.dport : 0), e);
    });
    closeDenies(dp);
    closeL7(dp);
    for (const peer of [300, 301, 999])
      for (const proto of [6, 17])
        for (const dport of [80, 443, 8080]) {
          const want = oracle(rules, peer, proto, dport);
          const got = verdict(probe(dp, peer, proto, dport)?.entry);
          checked++;
          if (want !== got) {
            t.fail(`rules ${JSON.stringify(rules)} packet ${peer} ${proto}/${dport}: want ${want} got ${got}`);
            return;
          }
        }
  }
  t.ok(checked > 10_000, `${checked} packets agree with the oracle`);
});

t.test('validation: Cilium constraints, clear errors', async (t) => {
  const doc = (toPorts: string, list = 'ingress') => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x}
spec:
  endpointSelector: {}
  ${list}:
  - toPorts: [${toPorts}]
`;
  t.match(issues(doc('{ports: [{port: "80"}], rules: {http: [{method: GET}]}}')), [
    /protocol: L7 rules apply to TCP only: set protocol: TCP \(not ANY\)/,
  ]);
  t.match(issues(doc('{ports: [{port: "0", protocol: TCP}], rules: {http: [{}]}}')), [/cannot be used on port 0/]);
  t.match(issues(doc('{rules: {http: [{}]}}')), [/L7 rules need ports/]);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "/a(b"}]}}')), [
    /rules\.http\[0\]\.path: "\/a\(b" is not a valid regular expression/,
  ]);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "(a)\\\\1"}]}}')), [/needs backtracking/]);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: X, mismatch: ADD}]}]}}')), [
    /mismatch ADD needs a value/,
  ]);
  t.match(
    issues(
      doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: X, mismatch: DROP, value: a}]}]}}'),
    ),
    [/mismatch must be one of LOG, ADD, DELETE, REPLACE/],
  );
  t.match(
    issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{headerMatches: [{name: X, secret: {name: s}}]}]}}')),
    [/secrets are not supported/],
  );
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{headers: ["Bad Name: x"]}]}}')), []);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{headers: ["Bad(: x"]}]}}')), [
    /not a valid header name/,
  ]);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {kafka: [{topic: t}]}}')), [
    /Kafka rules \(rules\.kafka\) is not supported by Membrane/,
  ]);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{methd: GET}]}}')), [
    /unknown field "methd" \(did you mean "method"\?\)/,
  ]);
  t.match(issues(doc('{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}', 'ingressDeny')), [/L7 rules cannot deny/]);
  const ok = records(doc('{ports: [{port: "80", protocol: TCP}], rules: {HTTP: [{Method: GET, PATH: "/x"}]}}'));
  t.match(
    ok[0].policy.specs[0].rules[0].l7,
    [{ http: [{ method: 'GET', path: '/x' }] }],
    'field names are matched case-insensitively, as Cilium reads them',
  );
});

t.test('datapath encoding: an L7 entry is an allow with the proxy port', async (t) => {
  const v = encodePolicyValue({ action: 'allow', ruleId: 0x10002, proxyPort: 15001 });
  t.equal(v.readUInt16BE(2), 15001);
  t.match(decodePolicyValue(v), { action: 'allow', ruleId: 0x10002, proxyPort: 15001 });
  t.notOk('proxyPort' in decodePolicyValue(encodePolicyValue({ action: 'allow', ruleId: 1 })));
  t.equal(encodePolicyValue({ action: 'deny', ruleId: 1, proxyPort: 15001 }).readUInt16BE(2), 0, 'a deny is never redirected');
});

// ---- engine: L7 entries in the maps, endpoint view, trace ----------------------------------------

import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';

async function engineWith(proxyPorts?: { http: number }) {
  const ops = new MemoryPolicyOps();
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    ...(proxyPorts ? { proxyPorts: () => proxyPorts } : {}),
  });
  await engine.start();
  const add = async (id: number, labels: Record<string, string>, ip: string) => {
    const ep = testEndpoint(id, labels, await engine.identityFor(labels), ip);
    ops.flags.set(ep.hostIfIndex, 0); // the endpoint manager wrote the config before beforeAttach
    await engine.endpointAttached(ep);
    return ep;
  };
  return { engine, ops, add };
}

const STOREFRONT_READS = () => fs.readFileSync(path.join(FIXTURES, 'storefront-reads.yaml'), 'utf8');

t.test('without an L7 proxy, L7 policies are refused and nothing changes', async (t) => {
  const { engine, ops, add } = await engineWith();
  await add(1, { app: 'storefront' }, '10.0.0.2');
  await add(2, { app: 'checkout' }, '10.0.0.3');
  const before = new Map(ops.policy);
  await t.rejects(engine.importText(STOREFRONT_READS()), /HTTP rules but the L7 proxy is not enabled/);
  t.same(ops.policy, before);
  t.equal(engine.list().length, 0);
});

t.test('with the proxy: L7 entries carry its port; endpoint view and trace explain them', async (t) => {
  const { engine, ops, add } = await engineWith({ http: 15001 });
  const web = await add(1, { app: 'storefront' }, '10.0.0.2');
  const good = await add(2, { app: 'checkout' }, '10.0.0.3');
  await engine.importText(STOREFRONT_READS());
  const entries = ops.entriesOf(web.id);
  t.match(
    entries.find((e) => e.peer === good.identity && e.dport === 8080),
    { action: 'allow', proxyPort: 15001 },
  );
  t.notOk(entries.find((e) => e.peer === 1)?.proxyPort, 'the host allowance is not proxied');
  const view = engine.endpointPolicy('c1', 'eth0')!;
  t.match(view.l7, [
    { direction: 'ingress', port: '8080/tcp', peers: [good.identity], rules: [{ http: { method: 'GET', path: '/catalog' } }] },
  ]);
  const q = { src: { labels: { app: 'checkout' } }, dst: { labels: { app: 'storefront' } }, proto: 6, dport: 8080 };
  const plain = engine.trace(q);
  const ingress = (r: typeof plain) => r.steps.find((x) => x.direction === 'ingress')!;
  t.equal(plain.verdict, 'allow');
  t.match(ingress(plain), {
    direction: 'ingress',
    reason: /through the HTTP proxy \(storefront-reads\): each request must match one of 1 HTTP rule/,
    l7: { rules: [{ policy: 'storefront-reads', path: 'spec.ingress[0].toPorts[0].rules.http[0]' }] },
  });
  t.match(ingress(engine.trace({ ...q, http: { method: 'GET', path: '/catalog' } })), {
    verdict: 'allow',
    reason: /GET \/catalog allowed by storefront-reads spec\.ingress\[0\]\.toPorts\[0\]\.rules\.http\[0\]/,
  });
  const denied = engine.trace({ ...q, http: { method: 'POST', path: '/catalog' } });
  t.equal(denied.verdict, 'deny');
  t.match(
    ingress(denied).reason,
    /denied by the HTTP proxy \(403\): POST \/catalog matches none of the 1 HTTP rule of storefront-reads/,
  );
  const readOtherwise = engine.trace({ ...q, http: { method: 'GET', path: '/orders/x%2Fy/../../catalog' } });
  t.equal(readOtherwise.verdict, 'deny', 'a path that is /catalog as written, /orders/catalog to nginx');
  t.match(ingress(readOtherwise).reason, /is \/orders\/catalog to servers that decode %2F, merge slashes or drop ;parameters/);
  t.equal(engine.trace({ ...q, src: { labels: { app: 'crawler' } } }).verdict, 'deny', 'L3 still applies first');
});

t.test('the L7 side, reacting to each map change, sees HTTP rules as soon as their entries are written', async (t) => {
  // As agent/l7.ts does: onChange schedules the snapshot for the next turn of the loop, which runs
  // before the import's records are committed to the store.
  const seen: { http: boolean; policies: number }[] = [];
  let engine: PolicyEngine | undefined;
  const ops = new MemoryPolicyOps();
  engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    proxyPorts: () => ({ http: 15001 }),
    onChange: () =>
      setImmediate(() => seen.push({ http: engine!.hasHttpRules(), policies: engine!.proxySnapshot().policies.length })),
  });
  await engine.start();
  const add = async (id: number, labels: Record<string, string>, ip: string) => {
    const ep = testEndpoint(id, labels, await engine!.identityFor(labels), ip);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine!.endpointAttached(ep);
  };
  const settle = () => new Promise((r) => setImmediate(r));
  await add(1, { app: 'storefront' }, '10.0.0.2');
  await add(2, { app: 'checkout' }, '10.0.0.3');
  await settle();
  t.same(seen.at(-1), { http: false, policies: 0 }, 'no policy: nothing for the proxy');
  await engine.importText(STOREFRONT_READS());
  await settle();
  t.same(seen.at(-1), { http: true, policies: 1 }, 'the import: HTTP rules known at the change that wrote them');
  await add(3, { app: 'storefront' }, '10.0.0.4');
  await settle();
  t.same(seen.at(-1), { http: true, policies: 1 }, 'an ADD after the HTTP policy: still proxied');
  await engine.delete('all');
  await settle();
  t.same(seen.at(-1), { http: false, policies: 0 }, 'deleted: no HTTP rules');
  t.ok(
    seen.every((s) => s.http || s.policies === 0),
    'whenever no HTTP rule is known, the full snapshot has no policy either (the empty one says the same)',
  );
});
