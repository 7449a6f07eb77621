// The parser worker's rule memo (rule-memo.ts): a document read again with one rule changed checks
// only that rule, and the result is exactly what a parse without the memo gives: the same policies,
// the same rule ids and paths, the same errors naming the same field and line.
import t from 'tap';
import { parsePolicies } from '../src/policy/parse.ts';
import { RuleMemo } from '../src/policy/rule-memo.ts';
import { fingerprint, fingerprintOf } from '../src/policy/fingerprint.ts';

const rule = (i: number, port = 443) => ({
  fromCIDR: [`198.18.${(i >> 8) & 255}.${i & 255}/32`],
  toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }],
});
/** Valid in every list: no peer field, one port. */
const portOnly = { toPorts: [{ ports: [{ port: '25', protocol: 'TCP' }] }] };
const doc = (ingress: unknown[], extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'big', ...extra },
    spec: { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [...ingress, portOnly], egressDeny: [portOnly] },
  });
const rules = (n: number) => Array.from({ length: n }, (_, i) => rule(i));

/** Parses with the memo (then turns it, as the worker does). */
function withMemo(memo: RuleMemo, text: string, opts: { namespace?: string } = {}) {
  const r = parsePolicies(text, { cluster: 'default', ...opts, memo });
  memo.turn();
  return r;
}

t.test('a one-rule change reuses every other rule and equals a parse without the memo', async (t) => {
  const memo = new RuleMemo();
  const first = withMemo(memo, doc(rules(200)));
  t.same(first.issues, []);
  const changed = rules(200);
  changed[5] = rule(5, 8443);
  const text = doc(changed);
  const again = withMemo(memo, text);
  t.same(again, parsePolicies(text, { cluster: 'default' }), 'same result as without the memo');
  const a = first.policies[0].specs[0].rules,
    b = again.policies[0].specs[0].rules;
  t.equal(b[4], a[4], 'an unchanged rule is the very object of the last parse');
  t.not(b[5], a[5], 'the changed rule is read again');
  t.same(b[5].ports, [{ proto: 'TCP', port: 8443 }]);
  t.equal(fingerprintOf(b[4]), fingerprint(b[4]), 'its fingerprint is that of its content');
});

t.test('a rule that moved gets its new index and path; the same text in another list is checked for that list', async (t) => {
  const memo = new RuleMemo();
  withMemo(memo, doc(rules(10)));
  const moved = rules(10).slice(1); // every rule one place up
  const text = doc(moved);
  const r = withMemo(memo, text);
  t.same(r, parsePolicies(text, { cluster: 'default' }));
  t.same(
    r.policies[0].specs[0].rules.slice(0, 2).map((x) => [x.index, x.path]),
    [
      [0, 'spec.ingress[0]'],
      [1, 'spec.ingress[1]'],
    ],
  );
  // The same text in the ingress and the egressDeny list: each read for its own list.
  const [allow, deny] = r.policies[0].specs[0].rules.slice(-2);
  t.same([allow.direction, allow.action, allow.path], ['ingress', 'allow', 'spec.ingress[9]']);
  t.same([deny.direction, deny.action, deny.path], ['egress', 'deny', 'spec.egressDeny[0]']);
});

t.test('a bad rule next to remembered ones is refused naming its field and line', async (t) => {
  const memo = new RuleMemo();
  withMemo(memo, doc(rules(50)));
  const bad = rules(50);
  bad[20] = { ...rule(20), toPorts: [{ ports: [{ port: '443', protocol: 'TCPX' }] }] };
  const text = JSON.stringify(JSON.parse(doc(bad)), null, 1);
  const r = withMemo(memo, text);
  t.same(r.policies, []);
  t.same(r, parsePolicies(text, { cluster: 'default' }), 'the same issues as without the memo');
  t.match(r.issues[0], { path: 'spec.ingress[20].toPorts[0].ports[0].protocol', line: Number });
  const unknown = rules(50);
  (unknown as unknown[])[3] = { ...rule(3), fromCIDRs: ['10.0.0.0/8'] };
  const u = withMemo(memo, doc(unknown));
  t.match(u.issues, [{ path: 'spec.ingress[3].fromCIDRs', message: /unknown field "fromCIDRs" \(did you mean "fromCIDR"\?\)/ }]);
  // The memo forgets nothing it needs: the good document again reads as before.
  t.same(withMemo(memo, doc(rules(50))), parsePolicies(doc(rules(50)), { cluster: 'default' }));
});

t.test('a remembered rule is not reused under another namespace', async (t) => {
  const memo = new RuleMemo();
  const sel = [{ fromEndpoints: [{ matchLabels: { app: 'client' } }] }];
  const a = withMemo(memo, doc(sel), { namespace: 'shop' });
  const b = withMemo(memo, doc(sel), { namespace: 'bank' });
  t.same(b, parsePolicies(doc(sel), { cluster: 'default', namespace: 'bank' }));
  t.not(JSON.stringify(a.policies[0].specs[0].rules[0]), JSON.stringify(b.policies[0].specs[0].rules[0]));
});
