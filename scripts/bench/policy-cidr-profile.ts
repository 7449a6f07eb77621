// Not a test: the engine over in-memory maps (no agent), a policy of 10,000 /24 rules for one pod,
// then a 1-rule policy of another pod whose /32 falls inside one of them, changed back and forth:
// the CIDR identities change each time, and only the rule holding the /32 should resolve again
// (policy/cidr-moves.ts). Prints the median sync time.
//   node --import tsx scripts/bench/policy-cidr-profile.ts
import { MemoryStore } from '../../shared/src/store/index.ts';
import { PolicyEngine } from '../../shared/src/policy/engine.ts';
import { FqdnState } from '../../shared/src/fqdn/state.ts';
import { MemoryPolicyOps, testEndpoint } from '../../shared/test/lib/policy.ts';
import { median } from './lib.ts';
async function main(): Promise<void> {
  const N = 10000;
  const wide = JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'wide' },
    spec: {
      endpointSelector: { matchLabels: { app: 'web' } },
      ingress: Array.from({ length: N }, (_, i) => ({
        fromCIDR: [`10.${(i >> 8) & 255}.${i & 255}.0/24`],
        toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }],
      })),
    },
  });
  const other = (k: number) =>
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'other' },
      spec: { endpointSelector: { matchLabels: { app: 'db' } }, egress: [{ toCIDR: [`10.0.${k}.7/32`] }] },
    });
  const ops = new MemoryPolicyOps(1 << 20, 1 << 20);
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    fqdn: new FqdnState(0),
    parseOffloadBytes: 1 << 30,
  });
  for (const [i, app] of ['web', 'db'].entries()) {
    const labels = { app };
    const ep = testEndpoint(i + 1, labels, await engine.identityFor(labels), `10.99.0.${i + 2}`);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  await engine.start();
  await engine.importText(wide);
  const rows: number[] = [];
  for (let k = 0; k < 22; k++) {
    const r = await engine.importText(other(k % 2));
    rows.push(r.timings.syncMs);
    if (k < 2) console.log(JSON.stringify(r.stats));
  }
  rows.splice(0, 2);
  rows.sort((a, b) => a - b);
  console.log(
    `another pod's 1-rule policy whose /32 falls inside one of ${N} /24 rules: sync median ${median(rows).toFixed(1)} ms`,
  );
  await engine.close();
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
