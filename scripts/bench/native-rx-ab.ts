// node --import tsx scripts/bench/native-rx-ab.ts — not a test. Native routing's receive path A/B on one
// 2-node native cluster with the same two pods throughout (so no pod placement or cluster differs):
// from_underlay attached to both nodes' underlay device (bpf/underlay.c) against detached (the stack
// forwards to the pod's host veth, whose to_container enforces), alternated every round, RR latency
// and connection rate each. R rounds (6), S seconds per sample (3), FLOWS=on|off (the agents' flow
// events). AB=events instead alternates the datapath's flow events on and off (the datapath_config
// switch, flipped in place as bench:flows cost does), from_underlay attached: what the events and the
// agents' work on them cost a native connection. Run under the bench lock.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { decodeGlobalConfig, encodeGlobalConfig, encodeU32Key, GLOBAL_CONFIG_SIZE } from '../../shared/src/maps/codec.ts';
import { createNetns } from '../../integration/lib/netns.ts';
import { eventually, startCluster } from '../../integration/lib/cluster.ts';
import { readIpcache } from '../../integration/lib/cluster-maps.ts';
import { connectionRate, median, rrLatency, settled } from './lib.ts';

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
  const mk = async (n: typeof n1, labels: Record<string, string>) => {
    const ns = createNetns('mbab');
    const ep = await n.client.createEndpoint({ containerId: `ab-${ns.name}`, netns: ns.path, ifName: 'eth0', labels });
    return { ns, ip: ep.ips[0].address.split('/')[0], identity: ep.identity };
  };
  const a = await mk(n1, { bench: 'client' });
  const b = await mk(n2, { bench: 'server' });
  await eventually(
    'known',
    () => readIpcache(n2.bpffsDir).get(`${a.ip}/32`) === a.identity && readIpcache(n1.bpffsDir).get(`${b.ip}/32`) === b.identity,
    30_000,
  );
  await settled([n1.agent.pid()!, n2.agent.pid()!], { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
  const setRx = (on: boolean) => {
    for (const n of c.nodes) {
      const tc = [
        '--net=' + n.netns.path,
        'tc',
        'filter',
        on ? 'replace' : 'del',
        'dev',
        'eth0',
        'ingress',
        'pref',
        '1',
        'handle',
        '0x4d42',
        'bpf',
      ];
      if (on) tc.push('direct-action', 'object-pinned', `${n.bpffsDir}/prog_from_underlay`);
      try {
        execFileSync('nsenter', tc, { stdio: 'ignore' });
      } catch {
        if (on) throw new Error('attach failed');
      }
    }
  };
  // The flow-event switch in each node's pinned datapath_config, the other settings kept.
  const setEvents = (on: boolean) => {
    for (const n of c.nodes) {
      const pin = path.join(n.bpffsDir, 'datapath_config');
      const fd = bpf.objGet(pin);
      try {
        const key = encodeU32Key(0);
        const cur = decodeGlobalConfig(bpf.mapLookup(fd, pin, key, GLOBAL_CONFIG_SIZE) ?? Buffer.alloc(GLOBAL_CONFIG_SIZE));
        bpf.mapUpdate(fd, pin, key, encodeGlobalConfig({ ...cur, events: on }));
      } finally {
        fs.closeSync(fd);
      }
    }
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
