// The DNS and FQDN example policies (examples/policies/dns) validate, and compile to
// what they mean: DNS to the DNS server through the DNS proxy, toFQDNs peers that select the
// addresses DNS taught for matching names and nothing else.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatIssue, parsePolicies } from '../src/policy/parse.ts';
import { PolicyCompiler, probe } from '../src/policy/compile.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { FqdnState } from '../src/fqdn/state.ts';
import { fqdnSelectorsOf, l7KindsOf } from '../src/policy/desired.ts';
import type { PolicyRecord } from '../src/policy/types.ts';

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../examples/policies/dns');
const read = (f: string) => fs.readFileSync(path.join(FIXTURES, f), 'utf8');
const records = (text: string): PolicyRecord[] =>
  parsePolicies(text).policies.map((policy, i) => ({
    name: policy.name,
    revision: 1,
    number: i + 1,
    policy,
    source: null,
    updatedAt: '',
  }));

t.test('the DNS/FQDN example policies validate', async (t) => {
  const files = fs.readdirSync(FIXTURES).filter((f) => /\.(ya?ml|json)$/.test(f));
  t.equal(files.length, 10, files.join(', '));
  for (const f of files) {
    const r = parsePolicies(read(f));
    t.same(
      r.issues.map((i) => formatIssue(i, f)),
      [],
      `${f} validates`,
    );
    t.ok(
      r.policies.some((p) =>
        p.specs.some((s) => s.rules.some((rule) => rule.peers !== 'all' && rule.peers.some((p) => p.kind === 'fqdn'))),
      ),
      `${f} has toFQDNs`,
    );
  }
});

t.test('feed-reader-port: DNS through the proxy, *.feeds.example on 443 only once learned', async (t) => {
  const recs = records(read('feed-reader-port.yaml'));
  t.same([...l7KindsOf(recs)], ['dns']);
  const dns = { id: 300, labels: { 'k8s:io.kubernetes.pod.namespace': 'kube-system', 'k8s:k8s-app': 'kube-dns' } };
  const bot = { id: 301, labels: { 'k8s:io.kubernetes.pod.namespace': 'default', app: 'feed-reader', team: 'news' } };
  const fqdn = new FqdnState(0);
  fqdn.setPolicy(fqdnSelectorsOf(recs), []);
  const compile = () =>
    new PolicyCompiler(recs, { identities: [dns, bot], cidrs: new CidrIdentities(), fqdn: fqdn.identities }).forLabels(bot.labels)
      .egress;
  const e53 = probe(compile(), dns.id, 17, 53)?.entry;
  t.equal(e53?.l7?.kind, 'dns', 'UDP 53 to kube-dns goes to the DNS proxy');
  t.same(
    e53?.l7?.dns?.map((d) => d.dns.matchPattern),
    ['*'],
  );
  t.equal(probe(compile(), dns.id, 6, 53)?.entry.l7?.kind, 'dns', 'and TCP 53');
  fqdn.learn(1, ['api.feeds.example.'], [{ ip: '198.18.1.1', ttl: 60 }], 0);
  fqdn.learn(1, ['feeds.example.org.'], [{ ip: '198.18.1.2', ttl: 60 }], 0);
  const id = fqdn.entryOf('198.18.1.1/32')!;
  t.ok(id, 'api.feeds.example has an FQDN identity');
  t.equal(fqdn.entryOf('198.18.1.2/32'), undefined, 'feeds.example.org does not');
  const eg = compile();
  t.equal(probe(eg, id, 6, 443)?.entry.action, 'allow', 'api.feeds.example:443 allowed');
  t.equal(probe(eg, id, 6, 80), undefined, 'port 80 is not');
  t.equal(probe(eg, 2, 6, 443), undefined, 'the world is not');
});
