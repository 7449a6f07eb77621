// npm run bench:datapath-cpu — not a test. TCP throughput with 1, 2, 4 and 8 parallel streams
// (iperf3 -P) and the connection rate between two pods: plain veth + host routes against Membrane, in
// one interleaved run (ratios against plain veth). For each Membrane peer it also reports what the
// datapath's programs themselves cost under that traffic (kernel.bpf_stats_enabled: run_time_ns and
// run_cnt of from_container and to_container): ns per run, share of a CPU, µs per connection (and the
// agent's own CPU time per connection: it reads and stores the flow events, on the same CPUs). tc
// programs run with preemption off, so the machine's load does not enter those times; cache misses
// do (cold lines, or lines other CPUs write). Each sample also logs the softirq time each CPU spent
// meanwhile (/proc/stat; the whole machine's, so other work shows too): which CPU the receive work ran on,
// and for throughput samples the agent's CPU time and the flow events it processed (its metrics page):
// events are per connection, so a throughput sample has a handful against ~100k program runs.
// BENCH_OBJECTS="name=value,…" adds Membrane agents: value = a path ending in .o runs that datapath
// object (a build of bpf/ with other BPF_CFLAGS: BPF_OUT=… BPF_CFLAGS=-DMBR_NO_ENFORCE
// scripts/build-bpf.sh), anything else is agent flags ("--flow-events off"); a trailing "+rps" turns on
// RPS over every CPU on both pods' eth0 (receive work that goes through a backlog may then move to
// another CPU: plain veth's and bpf_redirect's path, not bpf_redirect_peer's).
// BENCH_STREAMS (1,2,4,8; empty: the connection rate only), BENCH_ROUNDS (3), BENCH_SECONDS (4),
// BENCH_TRACE=s: a scheduler trace of s seconds in the middle of each throughput sample (sched-trace.ts).
// BENCH_PIN (unpinned), BENCH_RULES (0): every Membrane agent holds that many rules on the server pod's ingress, as bench:policy.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { connectionRate, markdownTable, median, processCpuMs, throughput } from './lib.ts';
import { membrane, membranePolicy, plainVeth, type Pods } from './topologies.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { formatSummary, sampleSched, traceSched } from './sched-trace.ts';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const STREAMS = (process.env.BENCH_STREAMS ?? '1,2,4,8').split(',').filter(Boolean).map(Number);
const RULES = Number(process.env.BENCH_RULES ?? 0);
// BENCH_PIN="c,s": iperf3's client on CPU c and its server on CPU s (e.g. 0,1 apart or 0,0 together).
const PIN = process.env.BENCH_PIN
  ? (([client, server]) => ({ client, server }))(process.env.BENCH_PIN.split(',').map(Number))
  : undefined;
const TRACE = Number(process.env.BENCH_TRACE ?? 0);
// BENCH_SCHED=s: the same window with counters only (migrations, switches, CPU shares; no records).
const SCHED = Number(process.env.BENCH_SCHED ?? 0);
const CRR = 0; // the connection-rate row's key among the stream counts
// BENCH_CRR=0 leaves the connection-rate row out (throughput only).
const RUNS = process.env.BENCH_CRR === '0' ? STREAMS : [...STREAMS, CRR];
delete process.env.NODE_EXTRA_CA_CERTS;

interface Peer {
  name: string;
  pods(): Promise<Pods>;
  pinDir?: string;
  /** The agent's pid: its CPU time (reading and storing flow events) is reported per connection. */
  agentPid?: () => number | undefined;
  rps?: boolean;
  /** Flow events the agent has turned into flows so far (its metrics page). */
  flowEvents?: () => Promise<number>;
}

/** The sum of membrane_flows_processed_total on the agent's metrics page. */
async function flowsProcessed(agent: TestAgent): Promise<number> {
  const address = (await agent.client.status()).metrics.address;
  if (!address) return 0;
  const text = await (await fetch(`http://${address}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('membrane_flows_processed_total{'))
    .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

/** Softirq time per CPU so far (ms; /proc/stat's 7th field, 100 ticks a second): where receive work runs. */
function softirqMs(): number[] {
  return fs
    .readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((l) => /^cpu\d+ /.test(l))
    .map((l) => Number(l.split(/\s+/)[7]) * 10);
}

/** RPS over every CPU on the pod's eth0 (`ip netns exec` mounts the netns's own /sys). */
function enableRps(netns: string): void {
  const mask = ((1 << os.cpus().length) - 1).toString(16);
  execFileSync('ip', ['netns', 'exec', netns, 'sh', '-c', `echo ${mask} > /sys/class/net/eth0/queues/rx-0/rps_cpus`]);
}

/** Sum of run_time_ns and run_cnt over the datapath's two per-packet programs. */
function progStats(pinDir: string): { ns: number; cnt: number } {
  let ns = 0,
    cnt = 0;
  for (const prog of ['prog_from_container', 'prog_to_container']) {
    const j = JSON.parse(execFileSync('bpftool', ['prog', 'show', 'pinned', `${pinDir}/${prog}`, '-j'], { encoding: 'utf8' }));
    ns += j.run_time_ns ?? 0;
    cnt += j.run_cnt ?? 0;
  }
  return { ns, cnt };
}

const sysctl = (v?: string) =>
  execFileSync('sysctl', v === undefined ? ['-n', 'kernel.bpf_stats_enabled'] : ['-q', '-w', `kernel.bpf_stats_enabled=${v}`], {
    encoding: 'utf8',
  }).trim();

async function main(): Promise<void> {
  const agents: TestAgent[] = [];
  const peers: Peer[] = [{ name: 'plain veth', pods: plainVeth }];
  // Statistics cost a little per run: on for the whole run (every peer pays it), as it was afterwards.
  const statsBefore = sysctl();
  if (statsBefore !== '1') sysctl('1');
  try {
    const variants: [string, string[], boolean][] = [['Membrane', [], false]];
    for (const spec of (process.env.BENCH_OBJECTS ?? '').split(',').filter(Boolean)) {
      const [name, value] = spec.split('=');
      const rps = value.endsWith('+rps');
      const file = rps ? value.slice(0, -4) : value;
      // name=path.o runs that datapath object; name=anything else: those agent flags (e.g. "--flow-events off").
      variants.push([name, file.endsWith('.o') ? ['--bpf-object', file] : file.split(' '), rps]);
    }
    for (const [name, args, rps] of variants) {
      // The L7 proxy is off: what is compared is the datapath, not what runs beside it.
      const agent = await startAgent({ bundle: true, extraArgs: ['--l7-proxy', 'off', ...args] });
      agents.push(agent);
      if (RULES) await new PolicyClient(agent.client).import(membranePolicy(RULES));
      peers.push({
        name,
        pods: () => membrane(agent, RULES > 0),
        pinDir: agent.bpffsDir,
        agentPid: () => agent.pid(),
        rps,
        flowEvents: () => flowsProcessed(agent),
      });
    }
    const samples = new Map<string, number[]>();
    const nsPerRun = new Map<string, number[]>();
    const nsPerConn = new Map<string, number[]>();
    const cpuShare = new Map<string, number[]>();
    const agentPerConn = new Map<string, number[]>();
    const agentMs = new Map<string, number[]>();
    for (let round = 1; round <= ROUNDS; round++) {
      // Alternate the order, so drift over the run favours no peer.
      for (const peer of round % 2 ? peers : [...peers].reverse()) {
        const p = await peer.pods();
        try {
          if (peer.rps) for (const ns of [p.a, p.b]) enableRps(ns.name);
          for (const n of RUNS) {
            const before = peer.pinDir ? progStats(peer.pinDir) : undefined;
            const pid = peer.agentPid?.();
            const agentBefore = pid ? processCpuMs(pid) : 0;
            const eventsBefore = (await peer.flowEvents?.()) ?? 0;
            const siBefore = softirqMs();
            let trace = '';
            const watch = TRACE
              ? async (pid: number) => {
                  trace = `\n${formatSummary(await traceSched(pid, TRACE, ((SECONDS - TRACE) / 2) * 1000))}`;
                }
              : SCHED
                ? async (pid: number) => {
                    trace = `\n${await sampleSched(pid, SCHED, ((SECONDS - SCHED) / 2) * 1000)}`;
                  }
                : undefined;
            const g =
              n === CRR
                ? await connectionRate(p.a, p.b, p.ipB, SECONDS)
                : await throughput(p.a, p.b, p.ipB, n, SECONDS, PIN, watch);
            const key = `${peer.name}/${n}`;
            samples.set(key, [...(samples.get(key) ?? []), g]);
            const si = softirqMs().map((v, i) => v - siBefore[i]);
            let ns = `, softirq ms per CPU ${si.join('/')}`;
            if (peer.pinDir && before) {
              const after = progStats(peer.pinDir);
              const runs = after.cnt - before.cnt;
              const per = (after.ns - before.ns) / Math.max(1, runs);
              nsPerRun.set(key, [...(nsPerRun.get(key) ?? []), per]);
              const share = (after.ns - before.ns) / (SECONDS * 1e9);
              cpuShare.set(key, [...(cpuShare.get(key) ?? []), share]);
              ns += `, ${per.toFixed(0)} ns per program run, ${(runs / SECONDS / 1000).toFixed(1)}k runs/s, ${(share * 100).toFixed(1)} % of a CPU`;
              // The agent's own CPU during the sample: what it takes from the pods' two CPUs (flow events
              // read and stored, timers), next to what the programs take.
              if (pid && n !== CRR) {
                const ms = processCpuMs(pid) - agentBefore;
                agentMs.set(key, [...(agentMs.get(key) ?? []), ms]);
                ns += `, agent ${ms.toFixed(0)} ms CPU`;
                // Flow events are per connection, not per packet: how many the sample made, against its program runs.
                const events = ((await peer.flowEvents?.()) ?? 0) - eventsBefore;
                ns += `, ${events} flow events (${((events * 1e6) / Math.max(1, runs)).toFixed(0)} per 1M program runs)`;
              }
              if (n === CRR) {
                const conns = g * SECONDS;
                nsPerConn.set(key, [...(nsPerConn.get(key) ?? []), (after.ns - before.ns) / conns]);
                ns += `, ${(runs / conns).toFixed(1)} runs and ${((after.ns - before.ns) / conns).toFixed(0)} ns per connection`;
                if (pid) {
                  const us = ((processCpuMs(pid) - agentBefore) * 1000) / conns;
                  agentPerConn.set(key, [...(agentPerConn.get(key) ?? []), us]);
                  ns += `, agent ${us.toFixed(1)} µs CPU per connection`;
                }
              }
            }
            process.stderr.write(`round ${round} ${key}: ${g.toFixed(2)}${n === CRR ? ' conn/s' : ' Gbit/s'}${ns}${trace}\n`);
          }
        } finally {
          await p.cleanup();
        }
      }
    }
    const rows = RUNS.map((n) => {
      const base = median(samples.get(`plain veth/${n}`)!);
      return [
        n === CRR ? 'connections/s' : `Gbit/s, ${n} stream${n > 1 ? 's' : ''}`,
        ...peers.map((peer) => {
          const v = median(samples.get(`${peer.name}/${n}`)!);
          const ns = nsPerRun.get(`${peer.name}/${n}`);
          const conn = nsPerConn.get(`${peer.name}/${n}`);
          const share = cpuShare.get(`${peer.name}/${n}`);
          const agent = agentPerConn.get(`${peer.name}/${n}`);
          const aMs = agentMs.get(`${peer.name}/${n}`);
          return `${v.toFixed(n === CRR ? 0 : 2)} (${(v / base).toFixed(2)}×)${ns ? `, ${median(ns).toFixed(0)} ns/run` : ''}${
            share ? `, ${(median(share) * 100).toFixed(1)} % CPU` : ''
          }${conn ? `, ${(median(conn) / 1000).toFixed(1)} µs/conn` : ''}${agent ? `, agent ${median(agent).toFixed(1)} µs CPU/conn` : ''}${
            aMs ? `, agent ${median(aMs).toFixed(0)} ms CPU` : ''
          }`;
        }),
      ];
    });
    const load = os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ');
    process.stdout.write(
      `\nMedian of ${ROUNDS} rounds, ${SECONDS} s each, ${RULES} rules; load average ${load} at the end\n\n${markdownTable(
        ['metric', ...peers.map((p) => p.name)],
        rows,
      )}\n`,
    );
  } finally {
    for (const a of agents) await a.cleanup().catch(() => undefined);
    if (statsBefore !== '1') sysctl(statsBefore);
  }
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
