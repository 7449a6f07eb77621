// Benchmark (not a test): does a big policy import stall pod creation? CNI ADD latency through the
// real membrane-cni while the agent is idle, against the same while 10,000-rule policies are imported
// back to back, in interleaved blocks of one run (load drift hits both alike). Goal (issue 9): ADD p99
// during imports < 2x its idle p99. The agent runs in a node netns of ours. Every import changes the
// one policy: one rule of the 10,000 (--change one, the common update) or every rule (--change all:
// every entry rewritten, the worst case).
//   node --import tsx scripts/bench/import-latency.ts [--adds 30] [--blocks 4] [--rules 10000] [--change one|all]
import os from 'node:os';
import { randomId } from '../../integration/lib/agent.ts';
import { startNode } from '../../integration/lib/node-netns.ts';
import { createNetns } from '../../integration/lib/netns.ts';
import { ensureCniBinary, invokeCni } from '../../cni/test/lib/exec.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { markdownTable, numberArg, percentile, stringArg } from './lib.ts';
import { fake, membranePolicy } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
delete process.env.NODE_OPTIONS;
const ADDS = numberArg('adds', 30);
const BLOCKS = numberArg('blocks', 4);
const RULES = numberArg('rules', 10_000);
const CHANGE = stringArg('change') === 'all' ? 'all' : 'one';
const log = (s: string) => process.stderr.write(`bench-import-latency: ${s}\n`);

async function main(): Promise<void> {
  ensureCniBinary();
  const node = await startNode();
  const ns = createNetns('mbil');
  const conf = { cniVersion: '1.0.0', name: `il-${node.agent.id}`, type: 'membrane-cni', agentSocket: node.agent.socket };
  const pc = new PolicyClient(node.agent.client);
  const series: Record<'idle' | 'import', number[]> = { idle: [], import: [] };
  const importMs: number[] = [];
  try {
    // The same policy in two versions, so that every import changes the maps.
    const base = membranePolicy(RULES);
    const docs = [
      base,
      CHANGE === 'all' ? base.replaceAll('"443"', '"8443"') : base.replace(`"${fake(1)}/32"`, `"${fake(RULES + 1)}/32"`),
    ];
    await pc.import(docs[1]);
    const addDel = async (into: number[]) => {
      const id = `il-${randomId(5)}`;
      const add = await invokeCni('ADD', conf, { containerId: id, netns: ns.path });
      if (add.code !== 0) throw new Error(`ADD failed: ${add.stdout}`);
      into.push(add.ms);
      await invokeCni('DEL', conf, { containerId: id, netns: ns.path });
    };
    for (let b = 0; b < BLOCKS; b++) {
      for (let i = 0; i < ADDS; i++) await addDel(series.idle);
      let stop = false;
      const importer = (async () => {
        for (let k = 0; !stop; k++) {
          const t0 = performance.now();
          await pc.import(docs[k % 2]);
          importMs.push(performance.now() - t0);
        }
      })();
      for (let i = 0; i < ADDS; i++) await addDel(series.import);
      stop = true;
      await importer;
      log(`block ${b + 1}/${BLOCKS} done`);
    }
  } finally {
    ns.remove();
    await node.cleanup();
  }
  const p = (xs: number[], q: number) => percentile(xs, q).toFixed(0);
  const ratio = percentile(series.import, 0.99) / percentile(series.idle, 0.99);
  process.stdout.write(
    `${markdownTable(
      ['CNI ADD (ms)', 'p50', 'p99', 'n'],
      [
        ['agent idle', p(series.idle, 0.5), p(series.idle, 0.99), String(series.idle.length)],
        [
          `during ${RULES}-rule imports changing ${CHANGE === 'all' ? 'every rule' : 'one rule'} (each ${p(importMs, 0.5)} ms median)`,
          p(series.import, 0.5),
          p(series.import, 0.99),
          String(series.import.length),
        ],
      ],
    )}\n\nADD p99 during imports / idle: ${ratio.toFixed(2)}x (goal < 2x: ${ratio < 2 ? 'met' : 'NOT met'}); load average ${os
      .loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}\n`,
  );
}

main().catch((e) => {
  log(`failed: ${(e as Error).stack ?? e}`);
  process.exit(1);
});
