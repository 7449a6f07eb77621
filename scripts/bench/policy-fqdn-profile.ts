// Not a test: the engine over in-memory maps (no agent), a policy of 10,000 /24 rules for one pod and
// a toFQDNs rule for another, then DNS answers for that name, each with an address in another of the
// /24s: every answer makes a new FQDN identity (its selector and the /24 holding it), and only the rule
// naming that /24 and the toFQDNs rule should resolve again (policy/fqdn-moves.ts). Prints the median
// time from the answer to the maps written (engine.fqdnChanged).
//   node --import tsx scripts/bench/policy-fqdn-profile.ts
import { MemoryStore } from '../../shared/src/store/index.ts';
import { PolicyEngine } from '../../shared/src/policy/engine.ts';
import { FqdnState } from '../../shared/src/fqdn/state.ts';
import { MemoryPolicyOps, testEndpoint } from '../../shared/test/lib/policy.ts';
import { median } from './lib.ts';

async function main(): Promise<void> {
  const N = 10000;
  const doc = (name: string, app: string, spec: object) =>
    JSON.stringify({
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name },
      spec: { endpointSelector: { matchLabels: { app } }, ...spec },
    });
  const wide = doc('wide', 'web', {
    egress: Array.from({ length: N }, (_, i) => ({
      toCIDR: [`10.${(i >> 8) & 255}.${i & 255}.0/24`],
      toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }],
    })),
  });
  const fq = doc('fq', 'db', { egress: [{ toFQDNs: [{ matchName: 'api.example.com' }] }] });
  const ops = new MemoryPolicyOps(1 << 20, 1 << 20);
  const fqdn = new FqdnState(0);
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    fqdn,
    parseOffloadBytes: 1 << 30,
  });
  for (const [i, app] of ['web', 'db'].entries()) {
    const labels = { app };
    const ep = testEndpoint(i + 1, labels, await engine.identityFor(labels), `10.99.0.${i + 2}`);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  await engine.start();
  await engine.importText(`${wide}\n---\n${fq}`);
  const rows: number[] = [];
  for (let k = 0; k < 22; k++) {
    const ip = `10.0.${k}.7`;
    const r = fqdn.learn(2, ['api.example.com.'], [{ ip, ttl: 3600 }], 0);
    if (!r.newIdentity) throw new Error(`${ip}: no new identity`);
    const t0 = performance.now();
    await engine.fqdnChanged(r.changed, r.newIdentity);
    rows.push(performance.now() - t0);
  }
  rows.splice(0, 2);
  rows.sort((a, b) => a - b);
  console.log(
    `a DNS answer making a new FQDN identity inside one of ${N} /24 rules: median ${median(rows).toFixed(1)} ms ` +
      `(min ${rows[0].toFixed(1)}, max ${rows[rows.length - 1].toFixed(1)})`,
  );
  await engine.close();
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
