// node --import tsx scripts/bench/cross-node-profile.ts — not a test. Where a TCP stream's CPU goes, kernel
// function by function, for a plain peer and Membrane side by side: one pod pair of (a) plain kernel
// VXLAN and (c) Membrane's overlay (MODE=tunnel, the default), or (e) plain routing and (d) native
// routing (MODE=native); R rounds (4) alternate the two, each one iperf3 stream of S seconds (5) under
// `perf record -a`. The samples of that run's two iperf3 processes (their context runs the softirqs of
// their own packets, both nodes' forwarding included; what spills to ksoftirqd is not counted) are summed
// by function and divided by the MB moved: samples per MB, per round and per function, the functions that
// differ most first. Load from other processes moves the Gbit/s a lot, what a MB costs much less. Needs
// perf. TOP (30) rows; RULES (0) rules on the server pod. PEER_OBJ=<datapath .o>: the peer is Membrane too,
// a second 2-node cluster whose agents run that object (an A/B of two objects, e.g. the last commit's
// build against this one); OBJ=<datapath .o> for "Membrane"'s agents (default: the build's).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startCluster } from '../../integration/lib/cluster.ts';
import { plainRouting, plainVxlan, type PodPair } from './cross-node-peers.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { median, settled, sleep, throughput } from './lib.ts';
import { membranePolicy } from './topologies.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const MODE = process.env.MODE === 'native' ? 'native' : 'tunnel';
const ROUNDS = Number(process.env.R ?? 4);
const SECONDS = Number(process.env.S ?? 5);
const TOP = Number(process.env.TOP ?? 30);
/** Rules on the server pod's ingress, as bench:cross-node's "(c) … 10,000 rules" cell (0: no policy). */
const RULES = Number(process.env.RULES ?? 0);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-xprof-'));

/** perf samples of iperf3 during one stream, by symbol; and the Gbit/s. */
async function profiled(
  run: (watch: () => Promise<void>) => Promise<number>,
  nss: string[],
  tag: string,
): Promise<{ gbps: number; bySym: Map<string, number> }> {
  const data = path.join(dir, `${tag}.data`);
  const rec = spawn('perf', ['record', '-a', '-F', '4999', '-o', data, '--', 'sleep', String(SECONDS + 2)], { stdio: 'ignore' });
  await sleep(500);
  // This run's iperf3 processes (others may run iperf3 too): those in the pods' netns, 1 s in.
  const pids = new Set<string>();
  const inode = (p: string) => fs.statSync(p).ino;
  const want = new Set(nss.map(inode));
  const gbps = await run(async () => {
    await sleep(1000);
    for (const pid of fs.readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
      try {
        if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'iperf3' && want.has(inode(`/proc/${pid}/ns/net`)))
          pids.add(pid);
      } catch {
        /* gone */
      }
    }
  });
  if (pids.size !== 2) console.error(`  ${tag}: ${pids.size} iperf3 processes found in the pods' netns (2 expected)`);
  await new Promise((r) => rec.on('exit', r));
  // By pid (perf 6.1's `--comms` with `-F sample,sym` drops the largest entries).
  const out = execFileSync('perf', ['report', '-i', data, '--sort', 'pid,sym', '--stdio', '-q', '-n'], {
    encoding: 'utf8',
    maxBuffer: 256 << 20,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const bySym = new Map<string, number>();
  for (const line of out.split('\n')) {
    const m = /^\s*[\d.]+%\s+(\d+)\s+\s*(\d+):(\S+)\s+\[.\]\s+(.+?)\s*$/.exec(line);
    if (m && pids.has(m[2])) bySym.set(m[4], (bySym.get(m[4]) ?? 0) + Number(m[1]));
  }
  fs.rmSync(data, { force: true });
  return { gbps, bySym };
}

const PEER_OBJ = process.env.PEER_OBJ;
const OBJ = process.env.OBJ;
const agentArgs = (obj?: string) => ['--routing-mode', MODE, '--log-level', 'info', ...(obj ? ['--bpf-object', obj] : [])];
/** The peer as a Topology: plain kernel networking, or (PEER_OBJ) Membrane on another object. */
async function membranePeer(obj: string): Promise<{ pods(): Promise<PodPair>; close(): Promise<void> }> {
  const pc = await startCluster({ nodes: 2, agentArgs: agentArgs(obj) });
  if (RULES) await new PolicyClient(pc.nodes[1].client).import(membranePolicy(RULES));
  return {
    pods: async () => {
      const p = await podPairAcross(pc.nodes[0], pc.nodes[1], 'mbxq');
      await settled([pc.nodes[0].agent.pid()!, pc.nodes[1].agent.pid()!], {
        busyPct: 2,
        timeoutMs: 60_000,
        throwOnTimeout: false,
      });
      return {
        a: p.a.ns,
        b: p.b.ns,
        ipB: p.b.ip,
        cleanup: async () => {
          p.a.ns.remove();
          p.b.ns.remove();
        },
      };
    },
    close: () => pc.cleanup(),
  };
}
const peer = PEER_OBJ ? await membranePeer(PEER_OBJ) : MODE === 'tunnel' ? await plainVxlan() : await plainRouting();
const c = await startCluster({ nodes: 2, agentArgs: agentArgs(OBJ) });
const totals = { peer: new Map<string, number>(), ours: new Map<string, number>() };
const mb = { peer: 0, ours: 0 };
const gbps: Record<'peer' | 'ours', number[]> = { peer: [], ours: [] };
const perMb: Record<'peer' | 'ours', number[]> = { peer: [], ours: [] };
const load0 = os.loadavg()[0];
try {
  const [n1, n2] = c.nodes;
  if (RULES) await new PolicyClient(n2.client).import(membranePolicy(RULES));
  const ours = await podPairAcross(n1, n2, 'mbxp');
  const theirs = await peer.pods();
  await settled([n1.agent.pid()!, n2.agent.pid()!], { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
  for (let r = 0; r < ROUNDS; r++) {
    for (const side of (r % 2 ? ['ours', 'peer'] : ['peer', 'ours']) as ('peer' | 'ours')[]) {
      const [a, b, ip] = side === 'peer' ? [theirs.a, theirs.b, theirs.ipB] : [ours.a.ns, ours.b.ns, ours.b.ip];
      const p = await profiled((watch) => throughput(a, b, ip, 1, SECONDS, undefined, watch), [a.path, b.path], `${side}${r}`);
      gbps[side].push(p.gbps);
      mb[side] += (p.gbps * 1e9 * SECONDS) / 8 / 1e6;
      for (const [k, v] of p.bySym) totals[side].set(k, (totals[side].get(k) ?? 0) + v);
      perMb[side].push([...p.bySym.values()].reduce((x, y) => x + y, 0) / ((p.gbps * 1e9 * SECONDS) / 8 / 1e6));
      console.error(`round ${r} ${side}: ${p.gbps.toFixed(2)} Gbit/s`);
    }
  }
  await theirs.cleanup();
  ours.a.ns.remove();
  ours.b.ns.remove();
} finally {
  await c.cleanup();
  await peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
const per = (side: 'peer' | 'ours', k: string) => (totals[side].get(k) ?? 0) / mb[side];
const sum = (side: 'peer' | 'ours') => [...totals[side].values()].reduce((a, b) => a + b, 0) / mb[side];
console.log(
  `${PEER_OBJ ? `peer: Membrane on ${PEER_OBJ}; Membrane on ${OBJ ?? 'the build'}; ` : ''}MODE=${MODE}, RULES=${RULES}, ${ROUNDS} rounds of ${SECONDS} s, load ${load0.toFixed(1)} -> ${os.loadavg()[0].toFixed(1)}`,
);
console.log(
  `Gbit/s peer ${gbps.peer.map((x) => x.toFixed(2)).join(' ')}; Membrane ${gbps.ours.map((x) => x.toFixed(2)).join(' ')}`,
);
console.log(`iperf3-context samples per MB: peer ${sum('peer').toFixed(2)}, Membrane ${sum('ours').toFixed(2)}`);
const ratios = perMb.ours.map((x, i) => x / perMb.peer[i]);
console.log(
  `Membrane / peer samples per MB, per round: ${ratios.map((x) => x.toFixed(2)).join(' ')} (median ${median(ratios).toFixed(2)})`,
);
const keys = [...new Set([...totals.peer.keys(), ...totals.ours.keys()])];
// Functions only one side runs (the programs, their maps and tc against ip_forward, the FDB, the route
// lookups): what Membrane adds and what it skips, less noisy than the totals (copies move with the cache).
const only = (side: 'peer' | 'ours', other: 'peer' | 'ours') =>
  keys.filter((k) => !totals[other].has(k)).reduce((a, k) => a + per(side, k), 0);
console.log(
  `samples per MB in functions only Membrane's path runs: ${only('ours', 'peer').toFixed(3)}; only the peer's: ${only('peer', 'ours').toFixed(3)}`,
);
keys.sort((x, y) => Math.abs(per('ours', y) - per('peer', y)) - Math.abs(per('ours', x) - per('peer', x)));
console.log('| function | peer samples/MB | Membrane samples/MB | difference |\n|---|---|---|---|');
for (const k of keys.slice(0, TOP))
  console.log(
    `| ${k} | ${per('peer', k).toFixed(3)} | ${per('ours', k).toFixed(3)} | ${(per('ours', k) - per('peer', k)).toFixed(3)} |`,
  );
