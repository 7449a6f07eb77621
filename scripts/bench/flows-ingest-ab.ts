// node --import tsx scripts/bench/flows-ingest-ab.ts BIN_A BIN_B … — not a test. The agents' CPU per flow
// event on the real ring buffer (reader, collector, flow ring, metrics: everything an event costs the
// agent, the wake-ups and V8's housekeeping included) for several agent builds in one interleaved run:
// one agent per membrane-agent bundle, two pods on each, and a synthetic producer on its events ring
// (BPF_PROG_TEST_RUN, in this process) offering RATE (20000) events/s, one FLOW_NEW record of the one
// pod to the other at a time, as a node's connections make them; R rounds (8) of S seconds (4), each
// round the agents in another order. Per sample the agent's CPU (every thread's schedstat) per event
// seen; medians per agent at the end, with the load. Unlike the cross-node bench, no network stack
// and no crr client share the CPUs with it: the per-event cost is resolved, not the connection rate.
import os from 'node:os';
import { startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { ObserverClient } from '../../shared/src/flows/client.ts';
import { SyntheticProducer } from '../../shared/src/flows/synthetic/producer.ts';
import { median, sleep, threadsCpuNs } from './lib.ts';
import { membrane, type Pods, podPairFlowNew } from './topologies.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const BINS = process.argv.slice(2);
const RATE = Number(process.env.RATE ?? 20_000);
const R = Number(process.env.R ?? 8);
const S = Number(process.env.S ?? 4);
if (!BINS.length) throw new Error('usage: flows-ingest-ab.ts BIN_A BIN_B …');

interface Cell {
  bin: string;
  agent: TestAgent;
  pods: Pods;
  producer: SyntheticProducer;
  observer: ObserverClient;
  event: Buffer;
  ns: number[];
}

/** Offers RATE events/s for S seconds, paced every 2 ms; the events the agent saw and its CPU. */
async function sample(x: Cell): Promise<number> {
  const pid = x.agent.pid()!;
  const seen0 = (await x.observer.status()).seenFlows;
  const cpu0 = threadsCpuNs(pid);
  const t0 = performance.now();
  let emitted = 0;
  while (emitted < RATE * S) {
    const due = Math.min(Math.floor((RATE * (performance.now() - t0)) / 1000), RATE * S) - emitted;
    if (due > 0) {
      x.producer.emit(x.event, due);
      emitted += due;
    }
    await sleep(2);
  }
  await sleep(300); // the reader's last drain
  const ns = threadsCpuNs(pid) - cpu0;
  const seen = (await x.observer.status()).seenFlows - seen0;
  return ns / Math.max(1, seen);
}

const cells: Cell[] = [];
try {
  for (const bin of BINS) {
    const agent = await startAgent({ agentBin: bin, extraArgs: ['--log-level', 'info'] });
    const pods = await membrane(agent);
    const eps = await agent.client.listEndpoints();
    const event = podPairFlowNew(eps, pods);
    const x: Cell = {
      bin,
      agent,
      pods,
      producer: SyntheticProducer.open(agent.bpffsDir),
      observer: new ObserverClient(agent.observerSocket),
      event,
      ns: [],
    };
    cells.push(x);
  }
  console.log(`${RATE} events/s, ${R} rounds of ${S} s per agent; load ${os.loadavg()[0].toFixed(2)}`);
  for (const x of cells) await sample(x); // warm-up: the JIT
  const load0 = os.loadavg()[0];
  for (let r = 0; r < R; r++)
    for (const x of cells.map((_, i) => cells[(i + r) % cells.length])) {
      const ns = await sample(x);
      x.ns.push(ns);
      console.log(`round ${r + 1} ${x.bin}: ${ns.toFixed(0)} ns CPU per event; load ${os.loadavg()[0].toFixed(2)}`);
    }
  console.log(`\nmedians (${R} rounds), load ${load0.toFixed(2)} -> ${os.loadavg()[0].toFixed(2)}:`);
  for (const x of cells) console.log(`${x.bin}: ${median(x.ns).toFixed(0)} ns per event (min ${Math.min(...x.ns).toFixed(0)})`);
} finally {
  for (const x of cells) {
    x.producer.close();
    x.observer.close();
    await x.pods.cleanup();
    await x.agent.cleanup();
  }
}
