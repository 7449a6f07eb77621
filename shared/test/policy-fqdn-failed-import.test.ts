// A refused import must leave the FQDN state as the maps have it. The sync hands the FQDN state the
// new policies' selectors and prefixes before the maps are written; when the write is refused (too
// many entries for the policy map, a failed map write) the maps and the CIDR table go back, and so
// must the FQDN identities: otherwise the next DNS answer is written to the ipcache with an identity
// the refused policies made, which has no policy entries, and traffic to that address skips the
// deny rules of the policies in force (found by policy-differential, DIFF_SEED=104).
import t from 'tap';
import { FqdnState } from '../src/fqdn/state.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { decodePolicyKey } from '../src/policy/map-codec.ts';
import { policyVerdict } from '../src/policy/verdict.ts';
import { MemoryStore } from '../src/store/index.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';

const doc = (name: string, spec: object) =>
  JSON.stringify({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name }, spec });

/** web may reach everything but 198.18.0.0/24 on 443/TCP; client's toFQDNs makes db.example.com's
 *  addresses FQDN identities (their ipcache entries carry the policy prefixes around them). */
const POLICIES = [
  doc('open', { endpointSelector: { matchLabels: { app: 'web' } }, egress: [{ toEntities: ['all'] }] }),
  doc('deny', {
    endpointSelector: { matchLabels: { app: 'web' } },
    egressDeny: [{ toCIDR: ['198.18.0.0/24'], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] }],
  }),
  doc('fq', { endpointSelector: { matchLabels: { app: 'client' } }, egress: [{ toFQDNs: [{ matchName: 'db.example.com' }] }] }),
].join('\n---\n');

/** The ipcache's identity for an IPv4 address (longest prefix). */
function identityOf(ipcache: Map<string, number>, ip: string): number {
  const n = (a: string) => a.split('.').reduce((x, o) => x * 256 + Number(o), 0);
  let best: [number, number] = [-1, 2];
  for (const [p, id] of ipcache) {
    const [addr, len] = p.split('/');
    if (addr.includes(':')) continue;
    const bits = Number(len);
    const mask = bits ? 2 ** 32 - 2 ** (32 - bits) : 0;
    const same = bits === 0 || Math.floor(n(addr) / 2 ** (32 - bits)) === Math.floor(n(ip) / 2 ** (32 - bits));
    if (same && mask >= 0 && bits > best[0]) best = [bits, id];
  }
  return best[1]; // 2: world
}

t.test('a refused import leaves no FQDN identity without policy entries behind', async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const fqdn = new FqdnState(0);
  const engine = await PolicyEngine.open({ store: new MemoryStore(), ops, hostAddresses: () => ['192.0.2.1'], fqdn });
  const web = testEndpoint(1, { app: 'web' }, await engine.identityFor({ app: 'web' }), '10.0.0.2');
  const client = testEndpoint(2, { app: 'client' }, await engine.identityFor({ app: 'client' }), '10.0.0.3');
  for (const ep of [web, client]) {
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  await engine.start();
  await engine.importText(POLICIES);
  const dns = async (ip: string) => {
    const r = fqdn.learn(2, ['db.example.com.'], [{ ip, ttl: 3600 }], 0);
    if (r.changed.length || r.newIdentity) await engine.fqdnChanged(r.changed, r.newIdentity);
  };
  const webTo = (ip: string) =>
    policyVerdict(ops, {
      endpointId: web.id,
      flags: ops.flags.get(web.hostIfIndex)!,
      direction: 'egress',
      peer: identityOf(ops.ipcache, ip),
      proto: 6,
      port: 443,
      globalAudit: false,
    }).pass;

  await dns('198.18.0.2');
  t.equal(webTo('198.18.0.2'), false, 'web -> 198.18.0.2:443 (db.example.com) is denied');
  t.equal(webTo('198.18.0.3'), false, 'web -> 198.18.0.3:443 is denied');

  // An import that names a wider prefix (the FQDN identity of 198.18.0.2 would change), refused:
  // the policy map is too small for it.
  const before = {
    policy: new Map(ops.policy),
    ipcache: new Map(ops.ipcache),
    fqdnIdentities: fqdn.identities.list(),
    fqdnEntries: new Map(fqdn.ipcacheEntries()),
    identities: engine.identityList(),
  };
  ops.policyCapacity = ops.policy.size;
  const wide = doc('wide', {
    endpointSelector: { matchLabels: { app: 'client' } },
    egress: [{ toCIDR: ['198.18.0.0/16'], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }],
  });
  await t.rejects(engine.importText(wide), /policy map entries/, 'the import is refused');
  ops.policyCapacity = 100_000;
  t.same(ops.policy, before.policy, 'the policy map is as it was');
  t.same(ops.ipcache, before.ipcache, 'the ipcache is as it was');
  // The FQDN state too, at once, not at the next successful sync: `identity list` and `policy trace`
  // show no identity of the refused policy.
  t.same(fqdn.identities.list(), before.fqdnIdentities, 'the FQDN identities are as they were');
  t.same(fqdn.ipcacheEntries(), before.fqdnEntries, "the FQDN state's ipcache entries are as they were");
  t.same(engine.identityList(), before.identities, 'the identity listing is as it was');

  // db.example.com gets another address inside the denied /24.
  await dns('198.18.0.3');
  t.equal(webTo('198.18.0.3'), false, 'web -> 198.18.0.3:443 (db.example.com now) is still denied');
  t.equal(webTo('198.18.0.2'), false, 'web -> 198.18.0.2:443 is still denied');
  const id3 = identityOf(ops.ipcache, '198.18.0.3');
  t.ok(
    [...ops.policy.keys()].some((k) => decodePolicyKey(Buffer.from(k, 'hex')).peer === id3),
    "198.18.0.3's identity has policy entries",
  );
  await engine.close();
});
