// Incremental compile across policies: a label set selected by many policies is recompiled from the
// policies that changed (the others keep what they gave it), and still equals a compile from scratch,
// including when a new prefix falls inside another, unchanged policy's wider CIDR or world rule.
import t from 'tap';
import { buildDesired, type CompileCache, type DesiredInput } from '../src/policy/desired.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { decodePolicyKey } from '../src/policy/map-codec.ts';
import { records, webDbClient } from './lib/policy.ts';
import type { PolicyRecord } from '../src/policy/types.ts';
import { seeded } from './lib/seeded.ts';

const { labels, endpoints } = webDbClient();

const input = (recs: PolicyRecord[], cidrs: CidrIdentities): DesiredInput => ({
  records: recs,
  endpoints,
  labelsOf: (id) => labels.get(id),
  hostAddresses: [],
  cidrs,
});

/** Entries with CIDR identities replaced by their prefixes (numbers differ between two tables). */
function named(d: ReturnType<typeof buildDesired>) {
  const prefixOf = new Map([...d.ipcache].map(([p, id]) => [id, p]));
  return [...d.policy.values()]
    .flatMap((e) => [...e.entries])
    .map(([k, e]) => {
      const key = decodePolicyKey(Buffer.from(k, 'hex'));
      return JSON.stringify({ ...key, peer: prefixOf.get(key.peer) ?? key.peer, action: e.action, ruleId: e.ruleId, l7: e.l7 });
    })
    .sort();
}

const rnd = seeded(23);

function randomPolicy(name: string): string {
  const rule = () =>
    [
      () => `{fromCIDR: [198.18.${rnd(4)}.${rnd(8)}/32]}`,
      () => `{fromCIDR: [198.18.${rnd(4)}.0/24], toPorts: [{ports: [{port: "${80 + rnd(2)}", protocol: TCP}]}]}`,
      () => `{fromCIDRSet: [{cidr: 198.18.0.0/16, except: [198.18.${rnd(4)}.0/24]}]}`,
      () => `{fromEntities: [${['world', 'cluster', 'host'][rnd(3)]}]}`,
      () =>
        `{fromEndpoints: [{matchLabels: {app: ${['db', 'client'][rnd(2)]}}}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}`,
    ][rnd(5)]();
  const n = 1 + rnd(4);
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: ${rnd(4) ? 'web' : 'db'}}}
  ingress: [${Array.from({ length: n }, rule).join(', ')}]
  ingressDeny: [${rnd(3) ? '' : rule()}]
`;
}

t.test('policies replaced one at a time: every incremental table equals a compile from scratch', async (t) => {
  const recs: PolicyRecord[] = Array.from({ length: 8 }, (_, i) => ({ ...records(randomPolicy(`p${i}`))[0], number: i + 1 }));
  const cache: { current?: CompileCache } = {};
  const cidrs = new CidrIdentities();
  buildDesired(input([...recs], cidrs), cache);
  let differs: number | undefined;
  let patched = 0;
  for (let step = 0; step < 60 && differs === undefined; step++) {
    const i = rnd(recs.length);
    recs[i] = { ...records(randomPolicy(`p${i}`))[0], number: i + 1 };
    const set = [...recs];
    const inc = buildDesired(input(set, cidrs), cache);
    patched += cache.current!.compiler.patched;
    const fresh = buildDesired(input(set, new CidrIdentities()));
    if (JSON.stringify(named(inc)) !== JSON.stringify(named(fresh))) {
      differs = step;
      t.same(named(inc), named(fresh), `step ${step}: incremental = from scratch`);
    }
  }
  t.equal(differs, undefined, '60 policy replacements: every incremental table equals a compile from scratch');
  t.ok(patched > 10, `many were patched from the previous compile (${patched})`);
});

t.test('a new host prefix inside an unchanged policy wider CIDR reaches that policy rule', async (t) => {
  const wide = { ...records(randomPolicyFixed('wide', '{fromCIDR: [198.18.0.0/16]}'))[0], number: 1 };
  const host = (addr: string) => ({ ...records(randomPolicyFixed('host', `{fromCIDR: [${addr}/32]}`))[0], number: 2 });
  const cache: { current?: CompileCache } = {};
  const cidrs = new CidrIdentities();
  buildDesired(input([wide, host('198.19.0.1')], cidrs), cache);
  const inc = buildDesired(input([wide, host('198.18.3.4')], cidrs), cache);
  const fresh = buildDesired(input([wide, host('198.18.3.4')], new CidrIdentities()));
  t.same(named(inc), named(fresh));
  const rulesFor = named(inc).filter((e) => e.includes('"peer":"198.18.3.4/32"'));
  t.same(
    rulesFor.map((e) => JSON.parse(e).ruleId).sort(),
    named(fresh)
      .filter((e) => e.includes('"peer":"198.18.3.4/32"'))
      .map((e) => JSON.parse(e).ruleId)
      .sort(),
  );
  t.ok(rulesFor.length >= 1, 'the new prefix has an entry');
});

function randomPolicyFixed(name: string, rule: string): string {
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [${rule}]
`;
}
