// npm run bench:flows (node --import tsx scripts/bench/flows.ts [ingest|cost|full-rate|all]) — not a test.
//   ingest: the flow-event rate a real agent sustains without loss. The synthetic producer
//           (shared/src/flows/synthetic) writes trace events into the agent's own pinned ring
//           buffer at a paced rate through BPF_PROG_TEST_RUN (real traffic on 2 cores cannot
//           produce 200k events/s); the agent reads, decodes, enriches, buffers and counts them.
//           Reported: events seen and lost per offered rate, agent CPU, event-loop delay p99.
//   cost:   what flow visibility costs the datapath: TCP throughput, request/response latency and
//           connection rate between two Membrane pods with flow events on vs off, as adjacent
//           on/off pairs in one run (the switch is the datapath_config map, flipped in place: same
//           pods, same agent, same programs).
//   full-rate: whether every connection's events reach the agent with the default settings at the
//           datapath's full connection rate, held long enough (BENCH_FULL_SECONDS, default 10 s) to
//           outlast the rate limit's burst: connections/s, events/s seen, events lost in the
//           datapath and in the agent; one client on any CPU, one with client and server pinned to
//           one CPU (every event on one CPU's token bucket), one pinned pair per CPU at once.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent } from '../../integration/lib/agent.ts';
import { ObserverClient } from '../../shared/src/flows/client.ts';
import { SyntheticProducer } from '../../shared/src/flows/synthetic/producer.ts';
import { sampleValue } from '../../shared/src/metrics/parse.ts';
import { EVENT_LOOP_SAMPLE_MS } from '../../shared/src/metrics/registry.ts';
import { scrapeMetrics } from '../../integration/lib/metrics.ts';
import { connectionRate, markdownTable, median, rrLatency, sleep, threadsCpuNs, throughput } from './lib.ts';
import { execFileSync } from 'node:child_process';
import { membrane, type Pods, podPairFlowNew } from './topologies.ts';
import { setFlowEvents } from './switches.ts';

const PAIRS = Number(process.env.BENCH_PAIRS ?? 8);
// The connection rate's cost is the noisiest (pairs ranged 0.69-1.36x) and the one with a goal: twice
// the pairs, so the median of the per-pair ratios moves less from run to run (+32 s).
const CRR_PAIRS = Number(process.env.BENCH_CRR_PAIRS ?? PAIRS * 2);
// BENCH_METRICS=crr,... : only these (the cost of one row without the others' minutes).
const ONLY = process.env.BENCH_METRICS?.split(',');
const SAMPLE_SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const FULL_SECONDS = Number(process.env.BENCH_FULL_SECONDS ?? 10);
const INGEST_SECONDS = Number(process.env.BENCH_INGEST_SECONDS ?? 5);
const RATES = (process.env.BENCH_RATES ?? '100000,200000,300000,400000,500000,600000,800000,1000000').split(',').map(Number);
delete process.env.NODE_EXTRA_CA_CERTS;

const fmtRate = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${Math.round(n / 1000)}k`);

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ
}

/** Emits `rate` events/s for `seconds`, paced every 2 ms (bursts stay far below the ring's ~10k). */
async function offer(producer: SyntheticProducer, event: Buffer, rate: number, seconds: number): Promise<number> {
  const t0 = performance.now();
  let emitted = 0;
  for (;;) {
    const elapsed = (performance.now() - t0) / 1000;
    const due = Math.min(Math.floor(rate * elapsed), Math.floor(rate * seconds)) - emitted;
    if (due > 0) {
      producer.emit(event, due);
      emitted += due;
    }
    if (elapsed >= seconds) return emitted;
    await sleep(2);
  }
}

/** BENCH_CPU_PROF=DIR: the ingest agent runs under node --cpu-prof, its profile written to DIR when it
 *  stops (where the agent's time per event goes). The profiler's SIGPROF interrupts the verifier
 *  (program load fails with EAGAIN), so an agent without it loads and pins the programs first and the
 *  profiled one reuses them. */
const CPU_PROF = process.env.BENCH_CPU_PROF;

async function ingest(): Promise<string> {
  let agent = await startAgent({ extraArgs: ['--log-level', 'info'] });
  if (CPU_PROF) {
    await agent.stop();
    agent = await startAgent({
      reuse: agent,
      extraArgs: ['--log-level', 'info'],
      nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${path.resolve(CPU_PROF)}`],
    });
  }
  const pods = await membrane(agent);
  const observer = new ObserverClient(agent.observerSocket);
  const producer = SyntheticProducer.open(agent.bpffsDir); // reuses the agent's events / events_lost pins
  const rows: string[][] = [];
  let sustained = 0;
  try {
    const eps = await agent.client.listEndpoints();
    // A realistic record: a new TCP connection between the two pods, seen at the server's hook.
    const event = podPairFlowNew(eps, pods);
    const pid = agent.pid()!;
    // Warm-up: the agent's decode/lookup code runs interpreted until V8 has seen enough events; a
    // freshly started agent is slower for its first second or so. Measure the steady state.
    await offer(producer, event, 100_000, 2);
    await sleep(300);
    let failures = 0;
    for (const rate of RATES) {
      await scrapeMetrics(agent.client); // resets the event-loop delay histogram
      const before = await observer.status();
      const cpu0 = cpuSeconds(pid);
      const t0 = performance.now();
      const emitted = await offer(producer, event, rate, INGEST_SECONDS);
      await sleep(300); // the reader's last drain
      const secs = (performance.now() - t0) / 1000;
      const cpu = (cpuSeconds(pid) - cpu0) / secs;
      const page = await scrapeMetrics(agent.client);
      const after = await observer.status();
      const seen = after.seenFlows - before.seenFlows;
      const lost = (after.membrane?.lostEventsDatapath ?? 0) - (before.membrane?.lostEventsDatapath ?? 0);
      // prom-client's histogram holds the period of its sampling timer plus the delay (it was 10 ms, now
      // once a second: a step's few samples see only stalls that cover one).
      const lag = Math.max(
        0,
        (sampleValue(page, 'membrane_agent_nodejs_eventloop_lag_p99_seconds') ?? NaN) * 1000 - EVENT_LOOP_SAMPLE_MS,
      );
      const ok = lost === 0 && seen === emitted;
      if (ok) sustained = Math.max(sustained, rate);
      rows.push([
        fmtRate(rate),
        String(emitted),
        String(seen),
        String(lost),
        fmtRate(seen / INGEST_SECONDS),
        `${(cpu * 100).toFixed(0)} %`,
        `${lag.toFixed(1)} ms`,
        ok ? 'yes' : 'no',
      ]);
      process.stderr.write(
        `ingest ${rate}/s: emitted ${emitted} seen ${seen} lost ${lost} cpu ${(cpu * 100).toFixed(0)}% lag p99 ${lag.toFixed(1)} ms\n`,
      );
      if (!ok && ++failures >= 2) break;
    }
  } finally {
    producer.close();
    observer.close();
    await pods.cleanup();
    await agent.cleanup();
  }
  return (
    `Sustained without loss: **${fmtRate(sustained)} events/s** (offered for ${INGEST_SECONDS} s each; agent CPU is of one core)\n\n` +
    markdownTable(
      ['offered events/s', 'emitted', 'seen', 'lost', 'ingested/s', 'agent CPU', 'agent event-loop delay p99', 'no loss'],
      rows,
    )
  );
}

/** run_time_ns and run_cnt summed over the two per-packet programs (kernel.bpf_stats_enabled on). */
function progNs(pinDir: string): number {
  let ns = 0;
  for (const prog of ['prog_from_container', 'prog_to_container']) {
    const j = JSON.parse(execFileSync('bpftool', ['prog', 'show', 'pinned', `${pinDir}/${prog}`, '-j'], { encoding: 'utf8' }));
    ns += j.run_time_ns ?? 0;
  }
  return ns;
}

const statsSysctl = (v?: string) =>
  execFileSync('sysctl', v === undefined ? ['-n', 'kernel.bpf_stats_enabled'] : ['-q', '-w', `kernel.bpf_stats_enabled=${v}`], {
    encoding: 'utf8',
  }).trim();

type Metric = 'tput1' | 'tput4' | 'rr' | 'crr';
const METRICS: { key: Metric; label: string; unit: string; higherIsBetter: boolean; digits: number }[] = [
  { key: 'tput1', label: 'TCP throughput, 1 stream', unit: 'Gbit/s', higherIsBetter: true, digits: 2 },
  { key: 'tput4', label: 'TCP throughput, 4 streams', unit: 'Gbit/s', higherIsBetter: true, digits: 2 },
  { key: 'rr', label: 'request/response RTT (p50)', unit: 'µs', higherIsBetter: false, digits: 1 },
  { key: 'crr', label: 'connection rate', unit: 'conn/s', higherIsBetter: true, digits: 0 },
];

/** One sample of a metric between the pods. */
function measureOnce(p: Pods, m: Metric, seconds: number): Promise<number> {
  switch (m) {
    case 'tput1':
      return throughput(p.a, p.b, p.ipB, 1, seconds);
    case 'tput4':
      return throughput(p.a, p.b, p.ipB, 4, seconds);
    case 'rr':
      return rrLatency(p.a, p.b, p.ipB, seconds);
    default:
      return connectionRate(p.a, p.b, p.ipB, seconds);
  }
}

// Short on/off samples back to back, paired: on a shared 2-core machine throughput drifts by tens of
// percent over minutes, far more than the effect measured; adjacent pairs cancel that drift and the
// median of the per-pair ratios is the estimate. Which mode goes first alternates between pairs.
async function cost(): Promise<string> {
  // BENCH_EVENTS_PER_SECOND: the datapath's per-CPU event rate limit for this run (the agent's
  // MEMBRANE_EVENTS_PER_SECOND; 0 = unlimited, i.e. the cost of seeing every flow).
  const limit = process.env.BENCH_EVENTS_PER_SECOND;
  // BENCH_OBJ: the agent runs another datapath object (an A/B of two builds, one run each: the
  // counted columns below barely move with the machine's load, unlike the rates).
  const obj = process.env.BENCH_OBJ;
  // BENCH_AGENT_BIN: run this membrane-agent bundle (another build's agent, for an A/B of the reader).
  const agentBin = process.env.BENCH_AGENT_BIN;
  const agent = await startAgent({
    ...(agentBin ? { bundle: true, agentBin } : {}),
    extraArgs: ['--log-level', 'info', ...(obj ? ['--bpf-object', obj] : [])],
    env: limit !== undefined ? { MEMBRANE_EVENTS_PER_SECOND: limit } : {},
  });
  // Counted per connection during the connection-rate samples: the datapath programs' time
  // (kernel.bpf_stats_enabled, on for the run: both modes pay its ~0.15 µs a run) and the agent's CPU.
  const statsBefore = statsSysctl();
  if (statsBefore !== '1') statsSysctl('1');
  const perConn: Record<'on' | 'off', { bpfUs: number[]; agentUs: number[] }> = {
    on: { bpfUs: [], agentUs: [] },
    off: { bpfUs: [], agentUs: [] },
  };
  let pods: Pods | undefined;
  const values: Record<'on' | 'off', Record<Metric, number[]>> = {
    on: { tput1: [], tput4: [], rr: [], crr: [] },
    off: { tput1: [], tput4: [], rr: [], crr: [] },
  };
  const ratios: Record<Metric, number[]> = { tput1: [], tput4: [], rr: [], crr: [] };
  let eventsDuringCrr = 0;
  let lostDuringCrr = 0;
  try {
    pods = await membrane(agent);
    const observer = new ObserverClient(agent.observerSocket);
    for (const m of METRICS.filter((x) => !ONLY || ONLY.includes(x.key))) {
      const pairs = m.key === 'crr' ? CRR_PAIRS : PAIRS;
      for (let pair = 0; pair < pairs; pair++) {
        const got: Partial<Record<'on' | 'off', number>> = {};
        for (const mode of (pair % 2 ? ['off', 'on'] : ['on', 'off']) as ('on' | 'off')[]) {
          setFlowEvents(agent.bpffsDir, mode === 'on');
          const before = await observer.status();
          const ns0 = m.key === 'crr' ? progNs(agent.bpffsDir) : 0;
          const cpu0 = threadsCpuNs(agent.pid()!);
          const t0 = performance.now();
          got[mode] = await measureOnce(pods, m.key, SAMPLE_SECONDS);
          if (m.key === 'crr') {
            await sleep(100); // the reader's last drain of this sample
            const conns = got[mode]! * SAMPLE_SECONDS;
            perConn[mode].bpfUs.push((progNs(agent.bpffsDir) - ns0) / 1000 / conns);
            perConn[mode].agentUs.push((threadsCpuNs(agent.pid()!) - cpu0) / 1000 / conns);
          }
          if (mode === 'on' && m.key === 'crr') {
            const after = await observer.status();
            eventsDuringCrr = Math.max(eventsDuringCrr, (after.seenFlows - before.seenFlows) / ((performance.now() - t0) / 1000));
            lostDuringCrr += (after.membrane?.lostEventsDatapath ?? 0) - (before.membrane?.lostEventsDatapath ?? 0);
          }
          values[mode][m.key].push(got[mode]!);
        }
        ratios[m.key].push(got.on! / got.off!);
        process.stderr.write(`${m.key} pair ${pair + 1}: on ${got.on!.toFixed(2)} off ${got.off!.toFixed(2)}\n`);
      }
    }
    observer.close();
  } finally {
    if (statsBefore !== '1') statsSysctl(statsBefore);
    if (pods) setFlowEvents(agent.bpffsDir, true);
    await pods?.cleanup();
    await agent.cleanup();
  }
  const rows = METRICS.filter((m) => ratios[m.key].length).map((m) => {
    const ratio = median(ratios[m.key]);
    const costPct = (m.higherIsBetter ? 1 - ratio : ratio - 1) * 100;
    const spread = `${Math.min(...ratios[m.key]).toFixed(2)}–${Math.max(...ratios[m.key]).toFixed(2)}`;
    return [
      `${m.label} (${m.unit})`,
      median(values.off[m.key]).toFixed(m.digits),
      median(values.on[m.key]).toFixed(m.digits),
      `${ratio.toFixed(3)}× (${spread})`,
      `${costPct.toFixed(1)} %`,
    ];
  });
  return (
    markdownTable(
      [
        `metric (${PAIRS} on/off pairs of ${SAMPLE_SECONDS} s; connection rate ${CRR_PAIRS})`,
        'events off (median)',
        'events on (median)',
        'on / off (median of pairs; range)',
        'cost',
      ],
      rows,
    ) +
    (perConn.on.bpfUs.length
      ? `\n\nPer connection (medians over the connection-rate samples${obj ? `; datapath object ${obj}` : ''}): ` +
        `datapath programs ${median(perConn.off.bpfUs).toFixed(2)} µs with events off, ${median(perConn.on.bpfUs).toFixed(2)} µs on; ` +
        `agent CPU ${median(perConn.off.agentUs).toFixed(2)} µs off, ${median(perConn.on.agentUs).toFixed(2)} µs on (all its threads, schedstat ns)${agentBin ? `; agent ${agentBin}` : ''}.`
      : '') +
    `\n\nWith events on, the connection-rate test fed the agent up to ${Math.round(eventsDuringCrr)} events/s ` +
    `(${lostDuringCrr} counted lost in the datapath over all samples: rate limit or full ring; ` +
    `per-CPU rate limit ${limit === undefined ? 'the agent default' : limit === '0' ? 'off' : `${limit}/s`}).`
  );
}

async function fullRate(): Promise<string> {
  const limit = process.env.BENCH_EVENTS_PER_SECOND;
  const agent = await startAgent({
    extraArgs: ['--log-level', 'info'],
    env: limit !== undefined ? { MEMBRANE_EVENTS_PER_SECOND: limit } : {},
  });
  let pods: Pods | undefined;
  const rows: string[][] = [];
  try {
    pods = await membrane(agent);
    const observer = new ObserverClient(agent.observerSocket);
    // One client across both CPUs, one pinned to CPU 0, and one pinned client per CPU at once (the
    // most connections the node makes: both CPUs' buckets full).
    const cpuCount = os.availableParallelism();
    for (const cpu of [undefined, 0, 'each'] as const) {
      const p = pods;
      const before = await observer.status();
      const t0 = performance.now();
      const rate =
        cpu === 'each'
          ? (
              await Promise.all(Array.from({ length: cpuCount }, (_, i) => connectionRate(p.a, p.b, p.ipB, FULL_SECONDS, i)))
            ).reduce((a, b) => a + b, 0)
          : await connectionRate(p.a, p.b, p.ipB, FULL_SECONDS, cpu);
      await sleep(300); // the reader's last drain
      const secs = (performance.now() - t0) / 1000;
      const after = await observer.status();
      const seen = after.seenFlows - before.seenFlows;
      const lost = (after.membrane?.lostEventsDatapath ?? 0) - (before.membrane?.lostEventsDatapath ?? 0);
      const lostAgent = (after.membrane?.lostEventsAgent ?? 0) - (before.membrane?.lostEventsAgent ?? 0);
      const where =
        cpu === undefined
          ? 'one client, any CPU'
          : cpu === 'each'
            ? `${cpuCount} clients, one per CPU`
            : `one client, pinned to CPU ${cpu}`;
      rows.push([
        where,
        rate.toFixed(0),
        String(seen),
        (seen / secs).toFixed(0),
        (seen / (rate * FULL_SECONDS)).toFixed(2),
        String(lost),
        String(lostAgent),
      ]);
      process.stderr.write(
        `full-rate ${where}: ${rate.toFixed(0)} conn/s, seen ${seen}, lost ${lost} datapath ${lostAgent} agent\n`,
      );
    }
    observer.close();
  } finally {
    await pods?.cleanup();
    await agent.cleanup();
  }
  return (
    `Connection rate for ${FULL_SECONDS} s with flow events on, per-CPU rate limit ` +
    `${limit === undefined ? 'the agent default' : limit === '0' ? 'off' : `${limit}/s`}:\n\n` +
    markdownTable(
      ['client and server', 'conn/s', 'events seen', 'events/s', 'events per connection', 'lost (datapath)', 'lost (agent)'],
      rows,
    )
  );
}

const which = process.argv[2] ?? 'all';
if (which === 'all' || which === 'ingest') process.stdout.write(`\n${await ingest()}\n`);
if (which === 'all' || which === 'cost') process.stdout.write(`\n${await cost()}\n`);
if (which === 'all' || which === 'full-rate') process.stdout.write(`\n${await fullRate()}\n`);
