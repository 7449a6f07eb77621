// With real packets: an import the policy map cannot hold is refused, and the deny rules in force
// still hold for the addresses DNS teaches afterwards. The refused import names a wider prefix
// around the world's addresses, so the FQDN identities it would make differ from those the maps
// have; a DNS answer after it must not put an address under such an identity (no policy entries:
// the allow-all next to the deny would let it through). The unit view: policy-fqdn-failed-import.
import t from 'tap';
import { probe } from './lib/probe.ts';
import { resolveAndConnect } from './lib/dns.ts';
import { dnsFqdnForFile } from './lib/dns-fqdn-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = dnsFqdnForFile(t);

t.test('a DNS answer after a refused import meets the deny rules in force', async (t) => {
  const { pc, W, nsOf, dnsmasq, hosts } = f;
  const net = W.api.split('.').slice(0, 3).join('.');
  // client: everything on 80 is allowed, but the world's /24 on 80 is denied (deny wins).
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: refused-open}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [all]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: refused-deny}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egressDeny:
  - toCIDR: [${net}.0/24]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`);
  t.teardown(() => pc.delete(['refused-open', 'refused-deny']).catch(() => undefined));
  const before = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80);
  t.same([before.ips, before.connect], [[W.api], 'timeout'], 'api.test.internal:80 is denied');

  // Too many entries for the policy map (24,576 ports for each world identity), and prefixes around
  // the world's addresses.
  const ranges = [0, 1, 2].map((i) => `{port: "${1 + i * 8192}", endPort: ${(i + 1) * 8192}, protocol: UDP}`);
  await t.rejects(
    pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: refused-big}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [${net}.0/23, 198.18.0.0/15]
  - toEntities: [world]
    toPorts: [{ports: [${ranges.join(', ')}]}]
`),
    /policy map entries/,
    'an import too big for the policy map is refused',
  );

  // api.test.internal moves to another address of the same /24.
  await dnsmasq.setHosts(hosts(W.alt));
  t.teardown(() => dnsmasq.setHosts(hosts()));
  // (A lookup that times out on a loaded machine is asked again.)
  let after = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80);
  for (let i = 0; i < 3 && after.error === 'ETIMEOUT'; i++)
    after = await resolveAndConnect(nsOf.client, W.dns, 'api.test.internal', 80);
  t.same(after.ips, [W.alt], 'the new address is learned');
  t.equal(after.connect, 'timeout', 'api.test.internal:80 (the new address) is still denied');
  t.equal(await probe(nsOf.client, W.alt, 80), 'timeout', 'and stays denied');
  t.equal(await probe(nsOf.client, W.api, 80), 'timeout', 'as the old address is');
});
