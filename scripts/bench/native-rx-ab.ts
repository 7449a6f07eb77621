// node --import tsx scripts/bench/native-rx-ab.ts — not a test. Native routing's receive path A/B on one
// 2-node native cluster with the same two pods throughout (so no pod placement or cluster differs):
// from_underlay attached to both nodes' underlay device (bpf/underlay.c) against detached (the stack
// forwards to the pod's host veth, whose to_container enforces), alternated every round, RR latency
// and connection rate each. R rounds (6), S seconds per sample (3), FLOWS=on|off (the agents' flow
// events). AB=events instead alternates the datapath's flow events on and off (the datapath_config
// switch, flipped in place as bench:flows cost does), from_underlay attached: what the events and the
// agents' work on them cost a native connection. Run under the bench lock.
import os from 'node:os';
import { startCluster } from '../../integration/lib/cluster.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { connectionRate, median, rrLatency, settled } from './lib.ts';
import { setFlowEvents, setUnderlayRx } from './switches.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const EVENTS_AB = process.env.AB === 'events';
const SECONDS = Number(process.env.S ?? 3);
const ROUNDS = Number(process.env.R ?? 6);
const load0 = os.loadavg()[0].toFixed(2);
const c = await startCluster({
  nodes: 2,
  agentArgs: ['--routing-mode', 'native', '--log-level', 'info', '--flow-events', process.env.FLOWS ?? 'on'],
});
try {
  const [n1, n2] = c.nodes;
  const { a, b } = await podPairAcross(n1, n2, 'mbab');
  await settled([n1.agent.pid()!, n2.agent.pid()!], { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
  const setRx = (on: boolean) => {
    for (const n of c.nodes) setUnderlayRx(n.netns.path, n.bpffsDir, on);
  };
  const setEvents = (on: boolean) => {
    for (const n of c.nodes) setFlowEvents(n.bpffsDir, on);
  };
  const set = EVENTS_AB ? setEvents : setRx;
  const label = (m: string) =>
    EVENTS_AB ? (m === 'bpf' ? 'events on' : 'events off') : m === 'bpf' ? 'from_underlay' : 'stack receive';
  const res: Record<string, { rr: number[]; crr: number[] }> = { bpf: { rr: [], crr: [] }, stack: { rr: [], crr: [] } };
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 ? ['stack', 'bpf'] : ['bpf', 'stack'];
    for (const mode of order) {
      set(mode === 'bpf');
      const rr = await rrLatency(a.ns, b.ns, b.ip, SECONDS);
      const crr = await connectionRate(a.ns, b.ns, b.ip, SECONDS);
      res[mode].rr.push(rr);
      res[mode].crr.push(crr);
      console.log(`round ${r} ${label(mode)}: rr ${rr} crr ${crr}`);
    }
  }
  set(true);
  for (const m of ['bpf', 'stack']) console.log(`${label(m)}: rr median ${median(res[m].rr)} crr median ${median(res[m].crr)}`);
  const pairs = res.bpf.crr.map((x, i) => x / res.stack.crr[i]);
  const rrp = res.bpf.rr.map((x, i) => res.stack.rr[i] / x);
  console.log(
    `${label('bpf')} / ${label('stack')} per round: crr ${pairs.map((x) => x.toFixed(2))} (median ${median(pairs).toFixed(2)}), rr (inverted) ${rrp.map((x) => x.toFixed(2))} (median ${median(rrp).toFixed(2)})`,
  );
  console.log(`load ${load0} -> ${os.loadavg()[0].toFixed(2)}`);
} finally {
  await c.cleanup();
}
