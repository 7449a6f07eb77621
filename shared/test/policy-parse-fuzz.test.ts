// The policy parser under a fuzz run: random and mutated documents (lib/policy-docs.ts) give clear
// issues, never a crash, and what is accepted compiles.
import t from 'tap';
import { stringify } from 'yaml';
import { parsePolicies } from '../src/policy/parse.ts';
import { CidrIdentities } from '../src/identity/cidr.ts';
import { PolicyCompiler } from '../src/policy/compile.ts';
import { prefixesOf } from '../src/policy/desired.ts';
import { toRecords } from './lib/policy.ts';
import { CNP, mutate, mutateTree, randomValue } from './lib/policy-docs.ts';
import { seeded } from './lib/seeded.ts';

t.test('fuzz: random and mutated documents give issues, never a crash', async (t) => {
  const valid = parsePolicies(CNP).issues.length === 0 ? (await import('yaml')).parse(CNP) : null;
  const r = seeded(20240607);
  let accepted = 0,
    rejected = 0;
  const N = 3000;
  for (let i = 0; i < N; i++) {
    let text: string;
    const mode = r(5);
    if (mode === 4) text = r(2) ? stringify(mutateTree(valid, r)) : JSON.stringify(mutateTree(valid, r));
    else if (mode === 0)
      text = stringify({
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'f' },
        spec: randomValue(r, 1),
      });
    else if (mode === 1) text = JSON.stringify(randomValue(r, 0));
    else text = mutate(CNP, r);
    let res;
    try {
      res = parsePolicies(text);
    } catch (e) {
      t.fail(`threw on input ${JSON.stringify(text).slice(0, 400)}: ${(e as Error).stack}`);
      return;
    }
    if (res.issues.length) {
      rejected++;
      for (const issue of res.issues) {
        if (typeof issue.message !== 'string' || !issue.message || /internal error/.test(issue.message)) {
          t.fail(`unclear issue ${JSON.stringify(issue)} for ${JSON.stringify(text).slice(0, 400)}`);
          return;
        }
      }
      if (res.policies.length) {
        t.fail('policies returned alongside issues');
        return;
      }
    } else {
      accepted++;
      // Whatever is accepted must also compile.
      const recs = toRecords(res.policies);
      const cidrs = new CidrIdentities();
      cidrs.sync(prefixesOf(recs));
      try {
        const c = new PolicyCompiler(recs, { identities: [{ id: 300, labels: { app: 'web' } }], cidrs });
        c.forLabels({ app: 'web' });
      } catch (e) {
        t.fail(`accepted but does not compile: ${JSON.stringify(text).slice(0, 400)}: ${(e as Error).stack}`);
        return;
      }
    }
  }
  t.equal(accepted + rejected, N, `${N} documents: ${accepted} accepted, ${rejected} rejected with issues, none threw`);
  t.ok(rejected > 100 && accepted > 10, `the fuzz reaches both outcomes (${accepted} accepted)`);
});
