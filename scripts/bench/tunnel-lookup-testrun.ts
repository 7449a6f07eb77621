// node --import tsx scripts/bench/tunnel-lookup-testrun.ts A.o B.o — not a test. What the overlay's send
// side costs per packet, timed by the kernel (BPF_PROG_TEST_RUN, warm caches, no scheduler in it):
// from_container on an established TCP packet of a pod to another node's pod (conntrack, then
// to_overlay: tunnel_map's trie for the destination's node, the tunnel key, the redirect), for each
// datapath object given, with the tunnel map holding the one real remote node and NODES made-up ones
// (default 0,1000: each an address /32 and a pod CIDR /24, as a cluster of that size has them).
// Objects interleaved per round; medians of ns per run (each the average of REPEAT runs).
// Run as root, under the bench lock: flock /work/wt/.bench.lock node --import tsx scripts/bench/tunnel-lookup-testrun.ts A.o B.o
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { loadDatapath, removePins, type Datapath } from '../../shared/src/bpf/datapath.ts';
import { objGet, progTestRun } from '../../shared/src/bpf/libbpf.ts';
import { datapathOps } from '../../shared/src/policy/datapath-ops.ts';
import { PolicyEngine } from '../../shared/src/policy/engine.ts';
import { MemoryStore } from '../../shared/src/store/index.ts';
import { TunnelMaps } from '../../shared/src/routing/maps.ts';
import { ACK, endpoint, ipv4, SRC, SYN, tcp } from '../../shared/test/lib/policy-bpf-packets.ts';
import { median } from './lib.ts';

const objects = process.argv.slice(2);
const ROUNDS = Number(process.env.ROUNDS ?? 9);
const REPEAT = Number(process.env.REPEAT ?? 20_000);
const NODES = (process.env.NODES ?? '0,1000').split(',').map(Number);
const REMOTE_POD = '10.253.0.2';
const TC_ACT_REDIRECT = 7;

interface Side {
  obj: string;
  pinDir: string;
  dp: Datapath;
  engine: PolicyEngine;
  from: number;
}

async function open(obj: string): Promise<Side> {
  const pinDir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  const dp = loadDatapath({ objectPath: obj, pinDir });
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops: datapathOps(dp),
    hostAddresses: () => ['10.252.0.254'],
  });
  await engine.start();
  const id = await engine.identityFor(SRC.labels);
  const ep = endpoint(SRC, id);
  dp.upsertEndpoint({
    hostIfindex: SRC.ifindex,
    endpointId: SRC.id,
    identity: id,
    flags: 0,
    hostMac: ep.hostMac,
    containerMac: ep.mac,
    ips: [SRC.ip, SRC.ip6],
  });
  await engine.endpointAttached(ep);
  // The tunnel device's ifindex only has to be non-zero: a test run's redirect goes nowhere.
  new TunnelMaps(dp).setConfig({ tunnelIfindex: 1, underlay: 4 });
  return { obj, pinDir, dp, engine, from: objGet(path.join(pinDir, 'prog_from_container')) };
}

/** The real remote node and `n` made-up ones, written the way cluster routing writes them. */
function nodes(s: Side, n: number): void {
  const maps = new TunnelMaps(s.dp);
  const upsert: [string, { node: string; nodeId: number; ip: string }][] = [
    ['10.253.0.0/24', { node: 'n2', nodeId: 2, ip: '198.18.0.12' }],
    ['198.18.0.12/32', { node: 'n2', nodeId: 2, ip: '198.18.0.12' }],
  ];
  for (let i = 1; i <= n; i++) {
    const ip = `198.19.${(i >> 8) & 255}.${i & 255}`;
    upsert.push(
      [`${ip}/32`, { node: `f${i}`, nodeId: 100 + i, ip }],
      [`10.${200 + (i >> 8)}.${i & 255}.0/24`, { node: `f${i}`, nodeId: 100 + i, ip }],
    );
  }
  maps.write(upsert, []);
}

let port = 10000;
/** ns per run of an established packet (the SYN before it made the entry), averaged over REPEAT runs. */
function established(s: Side): number {
  const sp = (port = port >= 60000 ? 10000 : port + 1);
  const syn = progTestRun(s.from, ipv4(SRC.ip, REMOTE_POD, 6, tcp(sp, 80, SYN, 111)));
  if (syn.retval !== TC_ACT_REDIRECT) throw new Error(`${s.obj}: the SYN was not sent into the tunnel (verdict ${syn.retval})`);
  return progTestRun(s.from, ipv4(SRC.ip, REMOTE_POD, 6, tcp(sp, 80, ACK, 112, 1)), { repeat: REPEAT }).durationNs;
}

const sides: Side[] = [];
try {
  for (const obj of objects) sides.push(await open(obj));
  for (const n of NODES) {
    for (const s of sides) nodes(s, n);
    const got = new Map<string, number[]>();
    for (let r = 0; r < ROUNDS; r++) {
      for (const s of r % 2 ? [...sides].reverse() : sides) got.set(s.obj, [...(got.get(s.obj) ?? []), established(s)]);
    }
    for (const [k, v] of got)
      console.log(
        `${n} made-up nodes, ${k}: ${median(v).toFixed(0)} ns per run (rounds ${v.map((x) => x.toFixed(0)).join(', ')})`,
      );
  }
} finally {
  for (const s of sides) {
    fs.closeSync(s.from);
    await s.engine.close();
    s.dp.close();
    removePins(s.pinDir);
  }
}
