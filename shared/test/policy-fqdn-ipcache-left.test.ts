// An address a DNS answer wrote on the ipcache-only path (a known FQDN identity: writeFqdnIpcache)
// leaves the ipcache when a later policy change retires its identity, as with a full sync: the next
// build edits the ipcache at the prefixes whose sources changed, so it must know that DNS entry
// (found by policy-differential, DIFF_SEED=132 DIFF_STEPS=300).
import t from 'tap';
import { FqdnState } from '../src/fqdn/state.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { MemoryStore } from '../src/store/index.ts';
import { MemoryPolicyOps, testEndpoint } from './lib/policy.ts';

const doc = (name: string, spec: object) =>
  JSON.stringify({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name }, spec });

t.test('a DNS-taught address goes with its FQDN identity', async (t) => {
  const ops = new MemoryPolicyOps(100_000, 100_000);
  const fqdn = new FqdnState(0);
  const engine = await PolicyEngine.open({ store: new MemoryStore(), ops, hostAddresses: () => ['192.0.2.1'], fqdn });
  const client = testEndpoint(1, { app: 'client' }, await engine.identityFor({ app: 'client' }), '10.0.0.2');
  ops.flags.set(client.hostIfIndex, 0);
  await engine.endpointAttached(client);
  await engine.start();
  await engine.importText(
    [
      doc('fq', {
        endpointSelector: { matchLabels: { app: 'client' } },
        egress: [{ toFQDNs: [{ matchName: 'db.example.com' }] }],
      }),
      doc('web', { endpointSelector: { matchLabels: { app: 'web' } }, ingress: [{ fromCIDR: ['198.18.0.0/16'] }] }),
    ].join('\n---\n'),
  );
  const dns = async (ip: string) => {
    const r = fqdn.learn(1, ['db.example.com.'], [{ ip, ttl: 3600 }], 0);
    if (r.changed.length || r.newIdentity) await engine.fqdnChanged(r.changed, r.newIdentity);
    return r;
  };
  t.ok((await dns('198.18.0.2')).newIdentity, 'the first address makes an identity (full sync)');
  t.notOk((await dns('198.18.0.3')).newIdentity, 'the second has it already (the ipcache alone)');
  const id = ops.ipcache.get('198.18.0.3/32');
  t.ok(id !== undefined && id === ops.ipcache.get('198.18.0.2/32'), 'both addresses have the FQDN identity');
  await engine.delete(['fq']);
  t.notOk(fqdn.identities.get(id!), 'without its toFQDNs selector the identity is gone');
  t.notOk(ops.ipcache.has('198.18.0.2/32'), 'the first address left the ipcache');
  t.notOk(ops.ipcache.has('198.18.0.3/32'), 'and so did the second (198.18.0.0/16 decides for both)');
  await engine.close();
});
