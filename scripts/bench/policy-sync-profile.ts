// Not a test: the engine over in-memory maps (no agent, no netns), a 10,000-rule policy imported and
// then re-imported with one rule changed, alternately; prints each step's parse, sync and store times.
//   node --import tsx scripts/bench/policy-sync-profile.ts [--rules 10000] [--edits 20] [--parts 0]
import { FqdnState } from '../../shared/src/fqdn/state.ts';
import { MemoryStore } from '../../shared/src/store/index.ts';
import { PolicyEngine } from '../../shared/src/policy/engine.ts';
import { MemoryPolicyOps, testEndpoint } from '../../shared/test/lib/policy.ts';
import { median, numberArg } from './lib.ts';
import { fake, membranePolicy, membranePolicyParts } from './topologies.ts';

const RULES = numberArg('rules', 10_000);
const EDITS = numberArg('edits', 20);
const PARTS = numberArg('parts', 0);

async function main(): Promise<void> {
  const ops = new MemoryPolicyOps(1 << 20, 1 << 20);
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops,
    hostAddresses: () => ['192.0.2.1'],
    // As the agent with its DNS proxy (the default): the FQDN state follows every policy change.
    fqdn: new FqdnState(0),
  });
  for (const [i, bench] of ['server', 'client'].entries()) {
    const labels = { bench };
    const ep = testEndpoint(i + 1, labels, await engine.identityFor(labels), `10.0.0.${i + 2}`);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
  }
  await engine.start();
  const docs = PARTS
    ? [membranePolicyParts(RULES, PARTS, fake(RULES + 1)).part(0), membranePolicyParts(RULES, PARTS, fake(1)).part(0)]
    : [membranePolicy(RULES).replace(`"${fake(1)}/32"`, `"${fake(RULES + 1)}/32"`), membranePolicy(RULES)];
  await engine.importText(PARTS ? membranePolicyParts(RULES, PARTS).all : membranePolicy(RULES));
  const rows: { parse: number; sync: number; enforced: number; total: number }[] = [];
  for (let k = 0; k < EDITS; k++) {
    const r = await engine.importText(docs[k % 2]);
    const t = r.timings;
    rows.push({ parse: t.parseMs, sync: t.syncMs, enforced: r.enforcedMs, total: r.totalMs });
    if (r.stats.policyUpserts + r.stats.policyRemovals !== 2) throw new Error(`edit ${k}: ${JSON.stringify(r.stats)}`);
  }
  await engine.close();
  const m = (f: (x: (typeof rows)[number]) => number) => median(rows.slice(2).map(f)).toFixed(1);
  process.stdout.write(
    `${PARTS ? `one of ${PARTS} policies replaced` : 'whole policy re-imported'}, ${RULES} rules, ${EDITS} edits (medians from the 3rd): ` +
      `parse ${m((x) => x.parse)} ms, sync ${m((x) => x.sync)} ms, enforced ${m((x) => x.enforced)} ms, total ${m((x) => x.total)} ms; ` +
      `the first, right after the import: parse ${rows[0].parse.toFixed(1)} ms, enforced ${rows[0].enforced.toFixed(1)} ms\n`,
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
