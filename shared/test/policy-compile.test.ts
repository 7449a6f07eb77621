// The compiler's table answers exactly what the rules say under the datapath's probe order, deny
// winning: checked against a brute-force oracle on random rule sets, plus the named cases.
import t from 'tap';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { PolicyCompiler, probe, closeDenies, l4code, type DirectionPolicy, type Entry } from '../src/policy/compile.ts';
import { encodeRuleId, decodeRuleId } from '../src/policy/rule-id.ts';
import { records } from './lib/policy.ts';
import { seeded } from './lib/seeded.ts';

const cidrs = () => new CidrIdentities();
const WEB = { id: 300, labels: { app: 'web' } };
const CLIENT = { id: 301, labels: { app: 'client' } };
const OTHER = { id: 302, labels: { app: 'other' } };

t.test('rule ids round-trip', async (t) => {
  const id = encodeRuleId(7, 'egress', 'deny', 1234);
  t.same(decodeRuleId(id), { policyNumber: 7, direction: 'egress', action: 'deny', index: 1234 });
  t.equal(decodeRuleId(0), undefined, 'rule id 0 is "no rule"');
  t.throws(() => encodeRuleId(1, 'ingress', 'allow', 1 << 14));
});

t.test('allow by labels, default deny, host allowance, deny wins', async (t) => {
  const recs = records(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - toPorts: [{ports: [{port: "443"}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`);
  const c = new PolicyCompiler(recs, { identities: [WEB, CLIENT, OTHER], cidrs: cidrs() });
  const web = c.forLabels(WEB.labels);
  t.ok(web.ingress.defaultDeny, 'selected for ingress: default deny');
  t.notOk(web.egress.defaultDeny, 'egress untouched');
  t.equal(probe(web.ingress, CLIENT.id, 6, 80)?.entry.action, 'allow', 'client -> 80/tcp allowed');
  t.equal(probe(web.ingress, CLIENT.id, 6, 81), undefined, 'client -> 81/tcp: no entry (default deny)');
  t.equal(probe(web.ingress, OTHER.id, 6, 80), undefined, 'other -> 80 not allowed');
  t.equal(probe(web.ingress, OTHER.id, 17, 443)?.entry.action, 'allow', 'anyone -> 443/udp allowed (ANY protocol)');
  t.equal(
    probe(web.ingress, CLIENT.id, 6, 443)?.entry.action,
    'deny',
    'client -> 443/tcp denied: deny wins over the wildcard allow',
  );
  t.equal(probe(web.ingress, 1, 6, 22)?.entry.ruleId, 0, 'the host may reach its endpoints');
  const client = c.forLabels(CLIENT.labels);
  t.notOk(client.ingress.defaultDeny, 'unselected endpoint allows all');
  t.equal(client.ingress.columns.size, 0);
});

t.test('CIDR rules, except, entities', async (t) => {
  const recs = records(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: out}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 198.18.0.0/15, except: [198.18.5.0/24]}]
  - toCIDR: [198.18.7.7]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toEntities: [host]
`);
  const table = cidrs();
  table.sync(['198.18.0.0/15', '198.18.5.0/24', '198.18.7.7/32', '198.19.1.0/24']);
  const c = new PolicyCompiler(recs, { identities: [WEB], cidrs: table });
  const eg = c.forLabels(WEB.labels).egress;
  t.ok(eg.defaultDeny);
  t.equal(probe(eg, table.idOf('198.18.0.0/15')!, 6, 80)?.entry.action, 'allow', '/15 itself');
  t.equal(probe(eg, table.idOf('198.19.1.0/24')!, 6, 80)?.entry.action, 'allow', 'a prefix inside it');
  t.equal(probe(eg, table.idOf('198.18.5.0/24')!, 6, 80), undefined, 'the except prefix is not selected');
  t.equal(probe(eg, 2, 6, 80), undefined, 'world is not selected by a CIDR');
  t.equal(probe(eg, 1, 6, 80)?.entry.action, 'allow', 'host entity');
  t.equal(probe(eg, WEB.id, 6, 80), undefined, 'endpoints are not CIDR-selected');
});

// ---- oracle ----------------------------------------------------------------------------------------

interface R {
  peer: number;
  proto: number;
  dport: number;
  action: 'allow' | 'deny';
  ruleId: number;
}

/** Ground truth: deny if any rule matches, else allow if any matches, else none. */
function oracle(rules: R[], peer: number, proto: number, dport: number): 'allow' | 'deny' | undefined {
  const hit = rules.filter(
    (r) =>
      (r.peer === 0 || r.peer === peer) &&
      (r.proto === 0 || r.proto === proto) &&
      (r.dport === 0 || (r.proto !== 0 && r.dport === dport)),
  );
  if (hit.some((r) => r.action === 'deny')) return 'deny';
  return hit.length ? 'allow' : undefined;
}

function table(rules: R[]): DirectionPolicy {
  const dp: DirectionPolicy = { defaultDeny: true, columns: new Map() };
  for (const r of rules) {
    let col = dp.columns.get(r.peer);
    if (!col) dp.columns.set(r.peer, (col = new Map<number, Entry>()));
    const code = l4code(r.proto, r.proto ? r.dport : 0);
    const cur = col.get(code);
    if (!cur || (r.action === 'deny' && cur.action === 'allow')) col.set(code, { action: r.action, ruleId: r.ruleId });
  }
  closeDenies(dp);
  return dp;
}

t.test('deny closure matches the oracle on random rule sets', async (t) => {
  const rnd = seeded(12345);
  const peers = [0, 300, 301, 302];
  const protos = [0, 6, 17];
  const ports = [0, 80, 443];
  let checked = 0;
  for (let round = 0; round < 400; round++) {
    const rules: R[] = [];
    const n = 1 + rnd(8);
    for (let i = 0; i < n; i++) {
      const proto = protos[rnd(3)];
      rules.push({
        peer: peers[rnd(4)],
        proto,
        dport: proto ? ports[rnd(3)] : 0,
        action: rnd(3) === 0 ? 'deny' : 'allow',
        ruleId: i + 1,
      });
    }
    const dp = table(rules);
    for (const peer of [300, 301, 302, 999])
      for (const proto of [6, 17, 1])
        for (const dport of [80, 443, 8080]) {
          const want = oracle(rules, peer, proto, dport);
          const got = probe(dp, peer, proto, dport)?.entry.action;
          checked++;
          if (want !== got) {
            t.fail(`rules ${JSON.stringify(rules)} packet ${peer} ${proto}/${dport}: want ${want} got ${got}`);
            return;
          }
        }
  }
  t.equal(checked, 400 * 36, `${checked} packets agree with the oracle (a mismatch fails above)`);
});
