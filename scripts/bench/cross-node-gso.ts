// node --import tsx scripts/bench/cross-node-gso.ts — not a test. What a bulk TCP stream's skbs look like
// on the way, plain kernel VXLAN against Membrane's overlay: one iperf3 stream of S seconds (3) per side
// under `perf record -e net:net_dev_start_xmit,net:netif_rx_entry,net:netif_receive_skb_entry -a`, then
// per tracepoint and device: skbs, GSO share, mean length, mean gso_size and gso_segs, gso_type values
// (hex, SKB_GSO_* bits: 0x1 TCPV4, 0x2 DODGY, 0x400 UDP_TUNNEL, 0x800 UDP_TUNNEL_CSUM). Devices are named as
// in their netns (several eth0); the machine's other traffic is counted too, so read the GSO rows. OBJ=<.o>:
// Membrane's agents run that datapath object. Why: whether both sides carry the same 64 KB packets end to
// end (the pods' TSO, the underlay's GSO datagrams, nothing segmented on the way) and how many ACKs each
// receiver sends per data skb; the CPU per MB is cross-node-profile.ts's.
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startCluster } from '../../integration/lib/cluster.ts';
import { plainVxlan } from './cross-node-peers.ts';
import { podPairAcross } from './cross-node-pair.ts';
import { settled, sleep, throughput } from './lib.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const S = Number(process.env.S ?? 3);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-xgso-'));
const EVENTS = ['net:net_dev_start_xmit', 'net:netif_rx_entry', 'net:netif_receive_skb_entry'];

async function traced(run: () => Promise<number>, tag: string): Promise<void> {
  const data = path.join(dir, `${tag.replace(/\W+/g, '-')}.data`);
  const rec = spawn(
    'perf',
    ['record', '-a', '-m', '1024', ...EVENTS.flatMap((e) => ['-e', e]), '-o', data, '--', 'sleep', String(S + 2)],
    {
      stdio: 'ignore',
    },
  );
  await sleep(500);
  const gbps = await run();
  await new Promise((r) => rec.on('exit', r));
  // Streamed: a loaded machine's other traffic makes the text large. perf script may exit non-zero on a
  // record it cannot decode; what it printed is still the events.
  const ps = spawn('perf', ['script', '-i', data, '-F', 'event,trace'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const rows = new Map<string, { n: number; gso: number; len: number; size: number; segs: number; types: Map<string, number> }>();
  for await (const line of readline.createInterface({ input: ps.stdout })) {
    const ev = /^\s*(\S+):/.exec(line)?.[1];
    const name = /(?:dev|name)=(\S+)/.exec(line)?.[1];
    const len = Number(/\blen=(\d+)/.exec(line)?.[1] ?? 0);
    const size = Number(/gso_size=(\d+)/.exec(line)?.[1] ?? 0);
    const segs = Number(/gso_segs=(\d+)/.exec(line)?.[1] ?? 0);
    const type = /gso_type=(\S+)/.exec(line)?.[1] ?? '?';
    if (!ev || !name) continue;
    const k = `${ev} ${name}`;
    const r = rows.get(k) ?? { n: 0, gso: 0, len: 0, size: 0, segs: 0, types: new Map() };
    r.n++;
    r.len += len;
    if (size) {
      r.gso++;
      r.size += size;
      r.segs += segs;
    }
    r.types.set(type, (r.types.get(type) ?? 0) + 1);
    rows.set(k, r);
  }
  console.log(`\n## ${tag}: ${gbps.toFixed(2)} Gbit/s`);
  console.log(
    '| event device | skbs | GSO | mean len | mean gso_size | mean gso_segs | gso_type |\n|---|---|---|---|---|---|---|',
  );
  for (const [k, r] of [...rows].sort((a, b) => b[1].n * b[1].len - a[1].n * a[1].len).slice(0, 20))
    console.log(
      `| ${k} | ${r.n} | ${r.gso} | ${(r.len / r.n).toFixed(0)} | ${r.gso ? (r.size / r.gso).toFixed(0) : '-'} | ${r.gso ? (r.segs / r.gso).toFixed(1) : '-'} | ${[...r.types].map(([t, n]) => `${t}:${n}`).join(' ')} |`,
    );
  fs.rmSync(data, { force: true });
}

const peer = await plainVxlan();
const c = await startCluster({
  nodes: 2,
  agentArgs: ['--routing-mode', 'tunnel', '--log-level', 'info', ...(process.env.OBJ ? ['--bpf-object', process.env.OBJ] : [])],
});
try {
  const [n1, n2] = c.nodes;
  const ours = await podPairAcross(n1, n2, 'mbxg');
  const theirs = await peer.pods();
  await settled([n1.agent.pid()!, n2.agent.pid()!], { busyPct: 2, timeoutMs: 60_000, throwOnTimeout: false });
  await traced(() => throughput(theirs.a, theirs.b, theirs.ipB, 1, S), 'plain VXLAN');
  await traced(() => throughput(ours.a.ns, ours.b.ns, ours.b.ip, 1, S), 'Membrane overlay');
  await theirs.cleanup();
  ours.a.ns.remove();
  ours.b.ns.remove();
} finally {
  await c.cleanup();
  await peer.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
