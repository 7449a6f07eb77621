// node --import tsx scripts/bench/crr-precision.ts — not a test. How precisely bench:cross-node's
// connection-rate cells compare, with an A/A run: two identical plain kernel VXLAN pairs (cross-node-
// peers.ts (a), no BPF, no agent), fresh pods for every measurement as the bench has, R rounds (10) of
//   apart    each pair measured alone for S seconds (4), one after the other (the bench's cells, before
//            BENCH_CRR_PAIRED): the per-round ratio of the two, from the whole runs ("full") and from
//            the median of their 100 ms slices ("median", crr.c prints them);
//   paired   the two measured against each other in the same window (lib.ts connectionRateAgainst:
//            SLICES (20, as the bench) short runs each, alternated ABBA), what bench:cross-node does
//            (BENCH_CRR_PAIRED, on by default).
// Identical pairs: any ratio other than 1.00 is the measurement's own noise (the machine's load coming
// and going, CPU placement, steal), and both methods meet the same load in the same run. Printed: each
// round's ratios, then per method the range and the median and mean of |ln ratio|. 10 rounds at load
// ~7 (8 slices): apart 0.89-1.54 (median 0.102), paired 0.84-1.14 (0.047); at load 11-17 (20 slices):
// apart 0.38-1.82 (0.233), paired 0.84-1.59 (0.085). Even paired, one pair of two identical ones may
// come out a few per cent apart over a whole run (8 of 10 rounds under 1.00 in the first).
// PIN=split|same|off (off): 'apart' runs with the client on CPU 0 and the server on CPU 1, both on
// CPU 0, or unpinned (pinned, a busy CPU stalls the run: an A/A range of 0.24-4.18 at load ~7).
import os from 'node:os';
import { plainVxlan } from './cross-node-peers.ts';
import { connectionRateAgainst, connectionRateSlices, median } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const R = Number(process.env.R ?? 10);
const S = Number(process.env.S ?? 4);
const SLICES = Number(process.env.SLICES ?? 20);
const PIN = process.env.PIN ?? 'off';
const pin = PIN === 'split' ? { client: 0, server: 1 } : PIN === 'same' ? { client: 0, server: 0 } : undefined;

const load0 = os.loadavg()[0].toFixed(2);
const cells = [await plainVxlan(), await plainVxlan()];
try {
  const ratios: Record<string, number[]> = { full: [], median: [], paired: [] };
  const push = (k: string, a: number, b: number) => {
    ratios[k].push(a / b);
    return `${k} ${Math.round(a)}/${Math.round(b)} ${(a / b).toFixed(2)}`;
  };
  for (let r = 0; r < R; r++) {
    const line: string[] = [];
    const first = r % 2; // which pair goes first, alternated by round in both methods
    const apart: { rate: number; slices: number[] }[] = [];
    for (const i of [first, 1 - first]) {
      const p = await cells[i].pods();
      try {
        apart[i] = await connectionRateSlices(p.a, p.b, p.ipB, S, pin);
      } finally {
        await p.cleanup();
      }
    }
    line.push(push('full', apart[0].rate, apart[1].rate));
    line.push(push('median', median(apart[0].slices), median(apart[1].slices)));
    const [p, q] = [await cells[first].pods(), await cells[1 - first].pods()];
    try {
      const res = await connectionRateAgainst(
        { client: p.a, server: p.b, ip: p.ipB },
        { client: q.a, server: q.b, ip: q.ipB },
        S,
        SLICES,
      );
      const [a, b] = first ? [res.ref, res.cell] : [res.cell, res.ref];
      line.push(push('paired', a, b));
    } finally {
      await p.cleanup();
      await q.cleanup();
    }
    console.log(`round ${r + 1}: ${line.join('; ')}; load ${os.loadavg()[0].toFixed(2)}`);
  }
  for (const [k, v] of Object.entries(ratios)) {
    const logs = v.map((x) => Math.abs(Math.log(x)));
    console.log(
      `${k}: A/A ratio ${Math.min(...v).toFixed(2)}-${Math.max(...v).toFixed(2)}, |ln ratio| median ${median(logs).toFixed(3)}, mean ${(logs.reduce((a, b) => a + b, 0) / logs.length).toFixed(3)}`,
    );
  }
  console.log(
    `R=${R} S=${S} SLICES=${SLICES} PIN=${PIN}; ${os.cpus().length} CPUs, load ${load0} -> ${os.loadavg()[0].toFixed(2)}`,
  );
} finally {
  for (const c of cells) await c.close();
}
