// Not a test: where a one-policy change's API round trip goes, on a real agent (bench:policy's
// updates without traffic). 10,000 rules as 100 policies, then one policy replaced by name and a
// one-rule policy of another pod changed, alternately; prints the client's round trip next to the
// agent's own parse / sync / store times (ChangeResult.timings) per step, medians.
//   node --import tsx scripts/bench/policy-api-profile.ts [--rules 10000] [--parts 100] [--edits 20]
// PROFILE_DIR=dir: the agent runs with --cpu-prof there (the profile is written when it stops).
import { startAgent } from '../../integration/lib/agent.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { median, numberArg } from './lib.ts';
import { fake, membranePolicyParts } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const RULES = numberArg('rules', 10_000);
const PARTS = numberArg('parts', 100);
const EDITS = numberArg('edits', 20);

const oneRule = (port: number) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'bench-other' },
    spec: {
      endpointSelector: { matchLabels: { bench: 'client' } },
      egress: [{ toPorts: [{ ports: [{ port: String(port), protocol: 'TCP' }] }] }],
    },
  });

async function main(): Promise<void> {
  const dir = process.env.PROFILE_DIR;
  const agent = await startAgent({ nodeArgs: dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : [] });
  const pc = new PolicyClient(agent.client);
  type Row = { rtt: number; total: number; parse: number; sync: number; store: number };
  const rows: Record<string, Row[]> = { 'one of the parts replaced': [], 'another pod (1 rule)': [] };
  try {
    await pc.import(membranePolicyParts(RULES, PARTS).all);
    for (let k = 0; k < EDITS; k++) {
      const steps: [string, string][] = [
        ['one of the parts replaced', membranePolicyParts(RULES, PARTS, k % 2 ? fake(1) : fake(RULES + 1)).part(0)],
        ['another pod (1 rule)', oneRule(1000 + (k % 2))],
      ];
      for (const [name, text] of steps) {
        const t0 = performance.now();
        const r = await pc.import(text);
        const t = r.timings;
        rows[name].push({ rtt: performance.now() - t0, total: r.totalMs, parse: t.parseMs, sync: t.syncMs, store: t.storeMs });
      }
    }
  } finally {
    await agent.cleanup();
  }
  for (const [name, rs] of Object.entries(rows)) {
    const m = (f: (x: Row) => number) => median(rs.slice(2).map(f)).toFixed(1);
    process.stdout.write(
      `${name} (${RULES} rules in ${PARTS} policies, medians of ${rs.length - 2}): round trip ${m((x) => x.rtt)} ms, ` +
        `agent total ${m((x) => x.total)} ms (parse ${m((x) => x.parse)}, sync ${m((x) => x.sync)}, store ${m((x) => x.store)})\n`,
    );
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
