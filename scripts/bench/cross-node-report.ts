// bench:cross-node's report (cross-node.ts runs the cells): the medians table with each row's ratio to
// its peer, the two goals of issue 12 with each round's ratio, the A/B rows of BENCH_BEFORE* and
// BENCH_NATIVE_RX_AB, and the programs' cost when BENCH_BPF_STATS was on. With BENCH_CRR_PAIRED the
// connection rate's ratios come from each cell's same-window ratios to its peer (cross-node.ts).
import os from 'node:os';
import { markdownTable, median } from './lib.ts';

export type Metric = 'tput1' | 'tput4' | 'rr' | 'crr';
export const METRICS: { key: Metric; label: string; higher: boolean; digits: number }[] = [
  { key: 'tput1', label: 'TCP 1 stream (Gbit/s)', higher: true, digits: 2 },
  { key: 'tput4', label: 'TCP 4 streams (Gbit/s)', higher: true, digits: 2 },
  { key: 'rr', label: 'RR latency p50 (µs)', higher: false, digits: 1 },
  { key: 'crr', label: 'connections/s', higher: true, digits: 0 },
];

type Samples = Map<string, Record<Metric, number[]>>;
export interface ReportInput {
  names: string[];
  load: string;
  samples: Samples;
  /** BENCH_CRR_PAIRED: per cell, each round's connection rate over its peer's in the same window. */
  crrPaired?: Map<string, number[]>;
  /** Membrane's programs per measurement (BENCH_BPF_STATS). */
  bpfSamples: Samples;
  rounds: number;
  seconds: number;
  rules: number;
  flowEvents: string;
}

/** Performance relative to a peer: >1 is better (latency inverted). */
function perfOf(samples: Samples, name: string, peer: string, m: (typeof METRICS)[number]): number {
  const v = median(samples.get(name)![m.key]),
    p = median(samples.get(peer)![m.key]);
  return m.higher ? v / p : p / v;
}

export function report(r: ReportInput): string {
  const { names, load, samples, bpfSamples, rounds: ROUNDS, seconds: SECONDS, rules: BIG, flowEvents: FLOW_EVENTS } = r;
  const [a, , , big, d, e] = names;
  const paired = r.crrPaired ?? new Map<string, number[]>();
  /** The peer a cell's connection rate was paired with (cross-node.ts crrPeer). */
  const pairPeer = (x: string) => (x.startsWith('(d)') ? e : x.startsWith('(b)') || x.startsWith('(c)') ? a : undefined);
  const perf = (name: string, peer: string, m: (typeof METRICS)[number]) => {
    const x = paired.get(name);
    if (m.key === 'crr' && x?.length) {
      // Against its own peer: the median of the same-window ratios; against another cell paired with
      // the same peer (now / before): the quotient of both medians.
      if (pairPeer(name) === peer) return median(x);
      const y = paired.get(peer);
      if (y?.length && pairPeer(peer) === pairPeer(name)) return median(x) / median(y);
    }
    return perfOf(samples, name, peer, m);
  };
  const rows = names
    .filter((name) => samples.has(name)) // BENCH_ONLY
    .map((name) => [
      name,
      ...METRICS.map((m) => {
        const v = median(samples.get(name)![m.key]);
        const peer = name.startsWith('(d)') || name.startsWith('(e)') ? e : a;
        return samples.has(peer) ? `${v.toFixed(m.digits)} (${perf(name, peer, m).toFixed(2)}×)` : v.toFixed(m.digits);
      }),
    ]);
  const goal = (x: string, peer: string) =>
    METRICS.map((m) => `${m.label.split(' (')[0]} ${perf(x, peer, m).toFixed(2)}×`).join(', ');
  const met = (x: string, peer: string) => (METRICS.every((m) => perf(x, peer, m) >= 0.95) ? 'met' : 'not met');
  const both = (x: string, y: string) => samples.has(x) && samples.has(y);
  /** Each round's ratio (rounds run both cells once, so index i is round i of both). */
  const rounds = (x: string, peer: string) =>
    METRICS.map((m) => {
      const p = paired.get(x);
      const r = samples.get(x)![m.key].map((v, i) => {
        const p = samples.get(peer)![m.key][i];
        return (m.higher ? v / p : p / v).toFixed(2);
      });
      // Paired: the same-window ratios count; the ratios of the two cells' own runs (about a minute
      // apart, as without pairing) follow for comparison.
      if (m.key === 'crr' && p?.length && pairPeer(x) === peer)
        return `${m.label.split(' (')[0]} ${p.map((v) => v.toFixed(2)).join(' / ')} (same-window pairs; the cells' own runs ${r.join(' / ')})`;
      return `${m.label.split(' (')[0]} ${r.join(' / ')}`;
    }).join('; ');
  return [
    `Medians of ${ROUNDS} rounds x ${SECONDS} s, one interleaved run; in brackets: performance relative to (a) for the tunnels and`,
    `to (e) for the routed rows (>1 is better; latency inverted). ${os.cpus().length} CPUs, kernel ${os.release()}, load ${load};`,
    `Membrane's flow events ${FLOW_EVENTS}.${
      paired.size
        ? " Connections/s of the (b), (c) and (d) rows: the ratio is the median of each round's ratio to the peer measured" +
          " in the same window (short runs alternated, BENCH_CRR_PAIRED); the rate is the row's own."
        : ''
    }`,
    '',
    markdownTable(['topology', ...METRICS.map((m) => m.label)], rows),
    '',
    markdownTable(
      ['goal', 'result'],
      [
        ...(both(big, a)
          ? [
              [
                `overlay with ${BIG.toLocaleString('en-US')} rules >= 0.95x plain kernel VXLAN on every metric`,
                `${met(big, a)}: ${goal(big, a)}`,
              ],
            ]
          : []),
        ...(both(big, a) ? [['the same, round by round', rounds(big, a)]] : []),
        ...(both(d, e) ? [['native routing >= 0.95x plain routing on every metric', `${met(d, e)}: ${goal(d, e)}`]] : []),
        ...(both(d, e) ? [['the same, round by round', rounds(d, e)]] : []),
        ...(names.length > 6 && both(big, names[6])
          ? [[`overlay with ${BIG.toLocaleString('en-US')} rules, now / before`, goal(big, names[6])]]
          : []),
        ...(names.length > 7 && both(d, names[7]) && names[7].endsWith('before')
          ? [['native routing, now / before', goal(d, names[7])]]
          : []),
        ...names
          .filter((x) => x.endsWith('stack receive') && both(d, x))
          .map((x) => ['native routing, receive by from_underlay / through the stack', goal(d, x)]),
      ],
    ),
    '',
    ...(bpfSamples.size
      ? [
          "Membrane's programs (kernel.bpf_stats_enabled; medians; every tc program on both nodes): time per program",
          "run in ns while each metric ran, and for the connection rate the programs' time per connection in µs.",
          '',
          markdownTable(
            [
              'topology',
              ...METRICS.map((m) => (m.key === 'crr' ? 'µs per connection' : `ns per run (${m.label.split(' (')[0]})`)),
            ],
            [...bpfSamples].map(([name, b]) => [name, ...METRICS.map((m) => median(b[m.key]).toFixed(m.key === 'crr' ? 1 : 0))]),
          ),
          '',
        ]
      : []),
  ].join('\n');
}
