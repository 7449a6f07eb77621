// The policies' prefixes after a change, worked out from the set before it (prefixes.ts), and the
// CIDR table synced by that delta: the same prefixes as a full sync, and a prefix that stays (even
// when it moves from one policy to another) keeps its identity number.
import t from 'tap';
import { prefixesFrom, prefixesOf } from '../src/policy/prefixes.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { records } from './lib/policy.ts';
import type { PolicyRecord } from '../src/policy/types.ts';
import { seeded } from './lib/seeded.ts';

const cnp = (name: string, cidrs: string[]) =>
  records(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {}
  ingress: [${cidrs.map((c) => `{fromCIDRSet: [{cidr: ${c}${c.endsWith('/16') ? ', except: [198.18.7.0/24]' : ''}}]}`).join(', ')}]
`)[0];

const rnd = seeded(5);
const randomCidrs = () =>
  Array.from({ length: 1 + rnd(4) }, () => [`198.18.${rnd(6)}.${rnd(4)}/32`, `198.18.${rnd(6)}.0/24`, '198.18.0.0/16'][rnd(3)]);

t.test('random replacements: the delta-synced table equals a full sync; staying prefixes keep their number', async (t) => {
  let recs: PolicyRecord[] = Array.from({ length: 6 }, (_, i) => cnp(`p${i}`, randomCidrs()));
  const cidrs = new CidrIdentities();
  const first = prefixesFrom(recs);
  cidrs.sync(first.set, undefined, first.token);
  let deltas = 0;
  for (let step = 0; step < 80; step++) {
    const next = [...recs];
    next[rnd(next.length)] = cnp(`p${rnd(6)}`, randomCidrs());
    const numbers = new Map(cidrs.entries().map((e) => [e.text, e.id]));
    const p = prefixesFrom(next, recs);
    if (p.delta) deltas++;
    const was = cidrs.version;
    cidrs.sync(p.set, p.delta, p.token);
    if (p.delta && (p.delta.added.length || p.delta.removed.length)) t.not(cidrs.version, was, `step ${step}: the table moved`);
    const full = new CidrIdentities();
    full.sync(prefixesOf([...next]));
    const texts = (c: CidrIdentities) =>
      c
        .entries()
        .map((e) => e.text)
        .sort();
    t.same(texts(cidrs), texts(full), `step ${step}: the same prefixes as a full sync`);
    t.same([...p.set].sort(), texts(full), `step ${step}: the set is every prefix named`);
    for (const e of cidrs.entries()) if (numbers.has(e.text)) t.equal(e.id, numbers.get(e.text), `${e.text} keeps its number`);
    recs = next;
  }
  t.equal(deltas, 80, 'every step was synced by its delta');
});

t.test('a prefix moved from one policy to another is neither removed nor added', async (t) => {
  const a = [cnp('a', ['198.18.1.1/32']), cnp('b', [])];
  const b = [cnp('a', []), cnp('b', ['198.18.1.1/32'])];
  prefixesFrom(a);
  const p = prefixesFrom(b, a);
  t.same(p.delta && [p.delta.added, p.delta.removed], [[], []]);
});
