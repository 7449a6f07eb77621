// toFQDNs and DNS rules in pure logic: Cilium's name and pattern semantics, the name cache (sharing,
// TTLs, the minimum TTL, the cap per name), FQDN identities (selector sets, policy prefixes), and the
// engine over in-memory maps: a learned address enters the ipcache with an identity the policy
// entries already allow; expiry and restarts.
import t from 'tap';
import {
  canonicalName,
  canonicalPattern,
  dnsRuleMatches,
  nameProblem,
  patternProblem,
  patternRegex,
  selectorMatcher,
} from '../src/fqdn/selector.ts';
import { MAX_IPS_PER_NAME, NameCache } from '../src/fqdn/cache.ts';
import { FqdnIdentities, fqdnLabels } from '../src/fqdn/identities.ts';
import { FqdnState, RESTORED_NAME } from '../src/fqdn/state.ts';
import { FIRST_FQDN_IDENTITY, identityKind } from '../src/identity/reserved.ts';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';
import { parsePortArg } from '../src/policy/ports.ts';

const pat = (p: string) => selectorMatcher({ matchPattern: canonicalPattern(p) });

t.test('matchPattern: Cilium semantics', async (t) => {
  const cases: [string, string, boolean][] = [
    ['*.cilium.io', 'www.cilium.io', true],
    ['*.cilium.io', 'cilium.io', false],
    ['*.cilium.io', 'a.b.cilium.io', false],
    ['*cilium.io', 'cilium.io', true],
    ['*cilium.io', 'www.cilium.io', false],
    ['*cilium.io', 'xcilium.io', true],
    ['sub*.cilium.io', 'subway.cilium.io', true],
    ['sub*.cilium.io', 'sub.cilium.io', true],
    ['sub*.cilium.io', 'www.cilium.io', false],
    ['special*service.api.cilium.io', 'special-x-service.api.cilium.io', true],
    ['**.cilium.io', 'a.cilium.io', true],
    ['**.cilium.io', 'a.b.c.cilium.io', true],
    ['**.cilium.io', 'cilium.io', false],
    ['*', 'anything.at.all', true],
    ['*', '.', true],
    ['**', 'x.y', true],
    ['*.*.cilium.io', 'a.b.cilium.io', true],
    ['*.*.cilium.io', 'a.cilium.io', false],
    ['API.Example.COM', 'api.example.com', true],
    ['*.example.com', 'x.example.com.evil.org', false],
  ];
  for (const [p, name, want] of cases)
    t.equal(pat(p)(canonicalName(name)), want, `${p} ${want ? 'matches' : 'does not match'} ${name}`);
  t.equal(patternRegex('*.a.'), '^[-a-z0-9_]*\\.a\\.$');
});

t.test('matchName and validation', async (t) => {
  t.ok(
    selectorMatcher({ matchName: canonicalName('Api.Example.com') })('api.example.com.'),
    'case-insensitive, trailing dot optional',
  );
  t.notOk(selectorMatcher({ matchName: 'api.example.com.' })('x.api.example.com.'));
  t.match(nameProblem('a*b.com'), /characters a DNS name cannot have/);
  t.match(nameProblem('a..b'), /empty label/);
  t.match(patternProblem('a[b].com'), /characters a pattern cannot have/);
  t.equal(patternProblem('*.ok-name_1.com'), undefined);
  t.match(nameProblem('a'.repeat(256)), /at most 255/);
  t.ok(dnsRuleMatches({ matchName: 'a.com.', matchPattern: '*.b.com.' }, 'x.b.com.'), 'a DNS rule with both: either matches');
});

t.test('name cache: shared entries, TTLs, the minimum TTL, a cap per name', async (t) => {
  const c = new NameCache();
  t.same(c.learn(1, ['api.x.'], [{ ip: '198.18.0.1', ttl: 5 }], 1000, 0), ['198.18.0.1']);
  t.same(
    c.learn(2, ['api.x.'], [{ ip: '198.18.0.1', ttl: 60 }], 2000, 0),
    [],
    'the same name and address from another endpoint: no new entry',
  );
  const [e] = c.ipsOf('api.x.');
  t.same([...e.endpoints.keys()].sort(), [1, 2], 'both endpoints use the entry');
  t.equal(e.expiresAt, 62_000, 'expiry follows the longest TTL seen');
  t.same(c.expired(61_999), []);
  c.learn(1, ['b.x.'], [{ ip: '198.18.0.2', ttl: 1 }], 0, 30);
  t.equal(c.ipsOf('b.x.')[0].expiresAt, 30_000, 'minimum TTL');
  const many = Array.from({ length: MAX_IPS_PER_NAME + 5 }, (_, i) => ({ ip: `198.19.${i >> 8}.${i & 255}`, ttl: 10 + i }));
  c.learn(3, ['big.x.'], many, 0, 0);
  t.equal(c.ipsOf('big.x.').length, MAX_IPS_PER_NAME, 'at most MAX_IPS_PER_NAME addresses per name');
  t.notOk(
    c.ipsOf('big.x.').some((x) => x.ip === '198.19.0.0'),
    'the earliest expiring went',
  );
});

t.test('FQDN identities: one per selector set and prefix set', async (t) => {
  const ids = new FqdnIdentities();
  const a = ids.ensure(['matchName:a.com.'], []);
  t.ok(a.created);
  t.equal(identityKind(a.identity.id), 'fqdn');
  t.equal(ids.ensure(['matchName:a.com.'], []).identity.id, a.identity.id, 'same sets, same identity');
  const b = ids.ensure(['matchName:a.com.'], ['198.18.0.0/15']);
  t.not(b.identity.id, a.identity.id);
  t.same(ids.select('matchName:a.com.').sort(), [a.identity.id, b.identity.id].sort());
  t.same(ids.within('198.18.0.0/15', []), [b.identity.id]);
  t.same(ids.within('198.18.0.0/15', ['198.18.0.0/15']), []);
  t.same(fqdnLabels(b.identity), { 'fqdn:a.com': '', 'cidr:198.18.0.0/15': '', 'reserved:world': '' });
  ids.retain(new Set([b.identity.id]));
  t.same(ids.all(), [b.identity.id], 'unused identities go');
});

t.test('FQDN state: selectors decide which addresses get identities', async (t) => {
  const s = new FqdnState(0);
  s.setPolicy([{ matchName: 'api.x.' }, { matchPattern: '*.x.' }], ['198.18.0.0/24']);
  const r = s.learn(
    1,
    ['api.x.'],
    [
      { ip: '198.18.0.5', ttl: 30 },
      { ip: '198.19.0.5', ttl: 30 },
    ],
    0,
  );
  t.same(r.changed.sort(), ['198.18.0.5/32', '198.19.0.5/32']);
  t.ok(r.newIdentity);
  const in24 = s.entryOf('198.18.0.5/32')!;
  const out24 = s.entryOf('198.19.0.5/32')!;
  t.not(in24, out24, 'inside a policy prefix: another identity');
  const again = s.learn(2, ['other.x.'], [{ ip: '198.19.0.6', ttl: 30 }], 0);
  t.ok(again.newIdentity, 'a name only the pattern selects: a new selector set, so a new identity');
  t.ok(s.entryOf('198.19.0.6/32'));
  t.same(s.learn(3, ['unrelated.y.'], [{ ip: '198.19.0.7', ttl: 30 }], 0).changed, [], 'no selector selects it: no entry');
  t.same(s.expire(10_000, () => false).changed, [], 'not expired yet');
  const ex = s.expire(40_000, (ip) => ip === '198.18.0.5');
  t.same(ex.changed.sort(), ['198.19.0.5/32', '198.19.0.6/32'], 'expired and unused: removed; in use: kept');
  t.ok(s.entryOf('198.18.0.5/32'));
});

t.test('FQDN state: restart restores entries and addresses learned after the last save', async (t) => {
  const s = new FqdnState(0);
  s.setPolicy([{ matchPattern: '*.x.' }], []);
  s.learn(1, ['a.x.'], [{ ip: '198.18.0.1', ttl: 300 }], 0);
  const saved = s.persisted();
  s.learn(1, ['b.x.'], [{ ip: '198.18.0.2', ttl: 300 }], 0);
  const pinned = new Map(s.ipcacheEntries());
  const r = new FqdnState(0);
  t.same(
    r.restore(saved, pinned, (id) => id >= FIRST_FQDN_IDENTITY, 1000, 60_000),
    { entries: 2, orphans: 1 },
  );
  r.setPolicy([{ matchPattern: '*.x.' }], []);
  t.same(new Map(r.ipcacheEntries()), pinned, 'the same addresses with the same identities');
  t.same(r.cache.namesOf('198.18.0.2'), [RESTORED_NAME], 'the unsaved one under a placeholder name');
  t.same(r.expire(1000 + 60_001, () => false).changed, ['198.18.0.2/32'], 'it goes after the grace period');
});

const DNS_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.test.internal"}]
  - toFQDNs: [{matchName: api.test.internal}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`;

t.test('engine: a learned address is allowed by the toFQDNs rule before the answer is released', async (t) => {
  const ops = new MemoryPolicyOps();
  const fqdn = new FqdnState(0);
  const store = new MemoryStore();
  const engine = await PolicyEngine.open({
    store,
    ops,
    hostAddresses: () => ['192.0.2.1'],
    fqdn,
    proxyPorts: () => ({ http: 10001, dns: 10002 }),
  });
  await engine.start();
  const labels = { app: 'client' };
  const ep = testEndpoint(1, labels, await engine.identityFor(labels), '10.0.0.2');
  ops.flags.set(ep.hostIfIndex, 0);
  await engine.endpointAttached(ep);
  const dnsLabels = { app: 'dns' };
  const dnsEp = testEndpoint(2, dnsLabels, await engine.identityFor(dnsLabels), '10.0.0.3');
  ops.flags.set(dnsEp.hostIfIndex, 0);
  await engine.endpointAttached(dnsEp);
  await engine.importText(DNS_POLICY);
  const dnsEntries = ops.entriesOf(ep.id).filter((e) => e.peer === dnsEp.identity && e.dport === 53);
  t.ok(
    dnsEntries.length >= 2 && dnsEntries.every((e) => e.proxyPort === 10002),
    'DNS to the server goes to the DNS proxy (UDP and TCP)',
  );
  const tr0 = engine.trace({ src: { labels }, dst: { fqdn: 'api.test.internal' }, ...parsePortArg('80/tcp') });
  t.equal(tr0.verdict, 'allow', 'trace --dst-fqdn: a name not looked up yet is traced by its selectors');
  t.match(tr0.fqdn?.note, /has not been looked up/);

  const r = fqdn.learn(ep.id, ['api.test.internal.'], [{ ip: '198.18.7.7', ttl: 30 }], Date.now());
  await engine.fqdnChanged(r.changed, r.newIdentity);
  const id = ops.ipcache.get('198.18.7.7/32');
  t.ok(id !== undefined && identityKind(id) === 'fqdn', 'the address has an FQDN identity in the ipcache');
  t.ok(
    ops
      .entriesOf(ep.id)
      .some((e) => e.direction === 'egress' && e.peer === id && e.dport === 80 && e.action === 'allow' && !e.proxyPort),
    'and an allow entry for port 80',
  );
  const tr = engine.trace({ src: { labels }, dst: { fqdn: 'api.test.internal' }, ...parsePortArg('80/tcp') });
  t.equal(tr.verdict, 'allow');
  t.same(tr.fqdn?.addresses, ['198.18.7.7']);
  t.equal(
    engine.trace({ src: { labels }, dst: { ip: '198.18.7.8' }, ...parsePortArg('80/tcp') }).verdict,
    'deny',
    'another address of the same world: denied',
  );
  const q = (name: string) =>
    engine.trace({ src: { labels }, dst: { labels: dnsLabels }, ...parsePortArg('53/udp'), dnsQuery: name });
  t.equal(q('api.test.internal').verdict, 'allow', 'trace --dns-query: allowed name');
  t.equal(q('evil.example.com').verdict, 'deny', 'trace --dns-query: refused name');

  // A second address of a known identity: only the ipcache changes.
  const before = ops.writes;
  const r2 = fqdn.learn(ep.id, ['api.test.internal.'], [{ ip: '198.18.7.9', ttl: 30 }], Date.now());
  t.notOk(r2.newIdentity);
  await engine.fqdnChanged(r2.changed, r2.newIdentity);
  t.equal(ops.ipcache.get('198.18.7.9/32'), id, 'same identity');
  t.equal(ops.writes, before, 'no policy map write');
  t.match(engine.labelsOf(id!), { 'fqdn:api.test.internal': '' });
  t.ok(engine.identityList().some((i) => i.id === id && i.kind === 'fqdn'));
  const view = engine.endpointPolicy(ep.containerId, ep.ifName)!;
  t.ok(
    view.l7.some((l) => l.kind === 'dns' && l.dns?.some((d) => d.dns.matchPattern === '*.test.internal.')),
    'endpoint get shows the DNS rules',
  );

  // What the increments built equals a full recompute: a restarted engine over the same maps and
  // name cache finds nothing to change.
  const restarted = await PolicyEngine.open({
    store,
    ops,
    hostAddresses: () => ['192.0.2.1'],
    fqdn,
    proxyPorts: () => ({ http: 10001, dns: 10002 }),
  });
  for (const e of [ep, dnsEp]) await restarted.endpointAttached(e);
  t.same(
    await restarted.start(),
    { policyUpserts: 0, policyRemovals: 0, ipcacheUpserts: 0, ipcacheRemovals: 0, flagChanges: 0 },
    'incremental = from scratch',
  );

  // Expiry removes the entry.
  const ex = fqdn.expire(Date.now() + 31_000, () => false);
  await engine.fqdnChanged(ex.changed, false);
  t.equal(ops.ipcache.get('198.18.7.7/32'), undefined, 'expired: gone from the ipcache');
});

t.test('policy errors name the field', async (t) => {
  const engine = await PolicyEngine.open({ store: new MemoryStore(), ops: new MemoryPolicyOps(), hostAddresses: () => [] });
  const bad = (spec: string) =>
    engine
      .validate(
        `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec:\n  endpointSelector: {}\n${spec}`,
      )
      .issues.map((i) => i.message)
      .join('\n');
  t.match(
    bad('  egress: [{toFQDNs: [{matchName: "a.com", matchPattern: "*.a.com"}]}]'),
    /one of matchName or matchPattern, not both/,
  );
  t.match(bad('  egress: [{toFQDNs: [{matchName: "a b.com"}]}]'), /characters a DNS name cannot have/);
  t.match(bad('  egress: [{toFQDNs: [{matchName: a.com}], toCIDR: [198.18.0.0/16]}]'), /combining toFQDNs and toCIDR/);
  t.match(
    bad('  ingress: [{toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: "*"}]}}]}]'),
    /DNS rules are not allowed on ingress/,
  );
  t.match(bad('  egress: [{toPorts: [{ports: [{port: "0", protocol: UDP}], rules: {dns: [{matchPattern: "*"}]}}]}]'), /port 0/);
  t.match(
    bad('  egress: [{toPorts: [{ports: [{port: "53", endPort: 60, protocol: UDP}], rules: {dns: [{matchPattern: "*"}]}}]}]'),
    /port ranges/,
  );
  t.match(
    bad('  egress: [{toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: "*"}], http: [{}]}}]}]'),
    /http or dns, not both/,
  );
  t.match(bad('  ingress: [{toFQDNs: [{matchName: a.com}]}]'), /toFQDNs/);
  t.equal(bad('  egress: [{toFQDNs: [{matchPattern: "**.a.com"}]}]'), '', 'a valid one has no issue');
});
