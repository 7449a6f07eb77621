// The flows-observe*.test.ts setup: a real agent (from source) with three pods of our own (client,
// server, other; unique names and labels per run) and two echo servers on the server pod, plus the
// ways the tests read flows: GetFlows polled, the metrics page, and the `membrane` CLI.
import type { ChildProcess } from 'node:child_process';
import { ObserverClient } from '../../shared/src/flows/client.ts';
import type { Flow, GetFlowsRequest } from '../../shared/src/flows/types.ts';
import { type MetricFamily, sampleValue } from '../../shared/src/metrics/parse.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import type { Endpoint } from '../../shared/src/types.ts';
import { randomId, startAgent, type TestAgent } from './agent.ts';
import { scrapeMetrics } from './metrics.ts';
import { membrane } from './cli.ts';
import { createNetns, type TestNetns } from './netns.ts';
import { killAll, startEchoServer } from './tcp.ts';

export type PodName = 'client' | 'server' | 'other';

export interface FlowPods {
  agent: TestAgent;
  observer: ObserverClient;
  policies: PolicyClient;
  eps: Record<PodName, Endpoint>;
  ns: Record<PodName, TestNetns>;
  /** Echo servers on the server pod. */
  portA: number;
  portB: number;
  /** The run's label value (`run`) on every pod. */
  run: string;
  /** Polls GetFlows until `pick` finds what it wants (flows arrive within a drain period). */
  flowsUntil(req: GetFlowsRequest, pick: (flows: Flow[]) => boolean, ms?: number): Promise<Flow[]>;
  /** The metrics page, parsed. */
  scrape(): Promise<Map<string, MetricFamily>>;
  /** Until a `membrane observe -f` has connected (the CLI starts slowly on a busy machine). */
  waitForFollower(ms?: number): Promise<void>;
  /** The `membrane` CLI against this agent's observer. */
  cli(args: string[]): Promise<{ code: number | null; out: string; err: string }>;
  cleanup(): Promise<void>;
}

export async function startFlowPods(): Promise<FlowPods> {
  const portA = 7000 + Math.floor(Math.random() * 500);
  const portB = portA + 1;
  const run = randomId(3);
  const nss: TestNetns[] = [];
  const servers: ChildProcess[] = [];
  const eps = {} as Record<PodName, Endpoint>;
  const ns = {} as Record<PodName, TestNetns>;
  const agent = await startAgent();
  const observer = new ObserverClient(agent.observerSocket);
  const cleanup = async () => {
    killAll(servers);
    observer.close();
    await agent.cleanup();
    for (const n of nss) n.remove();
  };
  try {
    for (const name of ['client', 'server', 'other'] as const) {
      const n = createNetns('mbf');
      nss.push(n);
      ns[name] = n;
      eps[name] = await agent.client.createEndpoint({
        containerId: `flows-${name}-${run}`,
        netns: n.path,
        ifName: 'eth0',
        labels: { app: name, run },
      });
    }
    servers.push(await startEchoServer(ns.server, portA, '0.0.0.0'), await startEchoServer(ns.server, portB, '0.0.0.0'));
  } catch (e) {
    await cleanup();
    throw e;
  }

  const scrape = () => scrapeMetrics(agent.client);

  return {
    agent,
    observer,
    policies: new PolicyClient(agent.client),
    eps,
    ns,
    portA,
    portB,
    run,
    async flowsUntil(req, pick, ms = 10_000) {
      const end = Date.now() + ms;
      for (;;) {
        const flows = (await observer.collect(req)).flatMap((r) => (r.flow ? [r.flow] : []));
        if (pick(flows)) return flows;
        if (Date.now() > end) throw new Error(`flows never matched; got ${JSON.stringify(flows.slice(-5), null, 1)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    scrape,
    async waitForFollower(ms = 30_000) {
      const end = Date.now() + ms;
      while ((sampleValue(await scrape(), 'membrane_observer_followers') ?? 0) < 1) {
        if (Date.now() > end) throw new Error('membrane observe -f never connected');
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    cli: (args) => membrane(args, { MEMBRANE_OBSERVER_SOCKET: agent.observerSocket }),
    cleanup,
  };
}
