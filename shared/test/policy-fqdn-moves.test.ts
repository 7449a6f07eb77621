// When FQDN identities come or go (a DNS answer, an expiry), only the rules whose peers they can
// change resolve again (policy/fqdn-moves.ts, record-use.ts movedUse): the rules naming world, one of
// their toFQDNs selectors, or one of the policy prefixes they carry. policy-differential checks the
// maps against a full sync after every DNS answer; this checks which rules, and the identity log.
import t from 'tap';
import { FqdnIdentities } from '../src/fqdn/identities.ts';
import { rulesMovedByFqdn } from '../src/policy/fqdn-moves.ts';
import { parsePolicies } from '../src/policy/parse.ts';

const doc = JSON.stringify({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name: 'p' },
  spec: {
    endpointSelector: { matchLabels: { app: 'web' } },
    egress: [
      { toFQDNs: [{ matchName: 'api.example.com' }] },
      { toFQDNs: [{ matchPattern: '*.example.org' }] },
      { toCIDR: ['198.18.0.0/24'] },
      { toCIDRSet: [{ cidr: '198.18.0.0/16', except: ['198.18.9.0/24'] }] },
      { toEntities: ['world'], toPorts: [{ ports: [{ port: '8443', protocol: 'TCP' }] }] },
      { toEndpoints: [{ matchLabels: { app: 'db' } }] },
    ],
  },
});

t.test('the rules a changed FQDN identity can move: its selectors, its prefixes, world', async (t) => {
  const p = parsePolicies(doc).policies[0];
  const places = (ids: { selectors: string[]; prefixes: string[] }[]) =>
    rulesMovedByFqdn(
      p,
      ids.map((i, n) => ({ id: n, ...i })),
    )
      .map(([, j]) => j)
      .sort((a, b) => a - b);
  t.same(places([{ selectors: ['matchName:api.example.com.'], prefixes: [] }]), [0, 4], 'its toFQDNs rule and world');
  t.same(
    places([{ selectors: ['matchName:api.example.com.'], prefixes: ['198.18.0.0/16', '198.18.0.0/24'] }]),
    [0, 2, 3, 4],
    'and the CIDRs holding it',
  );
  t.same(
    places([{ selectors: ['matchPattern:*.example.org.'], prefixes: ['198.18.9.0/24'] }]),
    [1, 4],
    'a prefix no rule names: no CIDR rule',
  );
  t.same(places([{ selectors: ['matchName:other.example.'], prefixes: [] }]), [4], 'a selector of another policy: world only');
  t.same(places([]), [], 'nothing changed: nothing moves');
});

t.test('the identity log names what came and went between two versions, and nothing across an undo', async (t) => {
  const ids = new FqdnIdentities();
  const v0 = ids.version;
  const a = ids.ensure(['matchName:a.'], []).identity;
  const v1 = ids.version;
  const snap = ids.snapshot();
  const b = ids.ensure(['matchName:b.'], ['198.18.0.0/24']).identity;
  ids.retain(new Set([b.id]));
  const v2 = ids.version;
  t.same(ids.changesBetween(v0, v1), [a]);
  t.same(
    ids.changesBetween(v1, v2)?.map((i) => i.id),
    [b.id, a.id],
    'b came, a went',
  );
  t.same(ids.changesBetween(v2, v2), []);
  ids.restore(snap);
  t.equal(ids.changesBetween(v2, ids.version), undefined, 'across an undo: unknown (everything may have moved)');
  t.same(ids.changesBetween(ids.version, ids.version), []);
});
