// The observer end to end without a kernel, as each flows-server*.test.ts file starts it for itself:
// injected events -> collector -> ring -> gRPC server (unix socket and TCP) -> client, plus the
// `membrane observe` CLI against it. Ten flows are in the ring before the first test: sports 1001..1010,
// every third (1003, 1006, 1009) a drop by rule 0x1401 (policy deny-legacy), the others FLOW_NEW to 80.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { AgentEventLog } from '../../src/flows/agent-events.ts';
import { ObserverClient } from '../../src/flows/client.ts';
import { FlowCollector } from '../../src/flows/collector.ts';
import { encodeTraceEvent, EventType, type TraceEvent } from '../../src/flows/event.ts';
import type { FlowContext } from '../../src/flows/flow.ts';
import { FlowRing } from '../../src/flows/ring.ts';
import { ObserverServer } from '../../src/flows/server.ts';
import { InjectedEventSource } from '../../src/flows/source.ts';
import type { GetFlowsResponse } from '../../src/flows/types.ts';
import { waitUntil } from './poll.ts';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export interface ObserverFile {
  ring: FlowRing;
  source: InjectedEventSource;
  collector: FlowCollector;
  agentEvents: AgentEventLog;
  /** A scratch dir (the unix socket lives in it). */
  dir: string;
  socket: string;
  /** The server and a client on its unix socket, once t.before has started them. */
  readonly server: ObserverServer;
  readonly client: ObserverClient;
  /** Injects one datapath event (1 ms after the previous one). */
  push(e: Partial<TraceEvent>): void;
  newFlow(sport: number): void;
  dropFlow(sport: number): void;
  sports(rs: GetFlowsResponse[]): (number | undefined)[];
  /** `membrane ARGS` (the CLI from source) as a child; async: the server lives in this process. */
  run(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }>;
  /** The node arguments that start the CLI with ARGS. */
  cli(args: string[]): string[];
  /** The environment for the CLI child (no CA bundle, no observer socket of the caller's). */
  env(): NodeJS.ProcessEnv;
}

export function observerForFile(t: Test): ObserverFile {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-flows-srv-'));
  const socket = path.join(dir, 'observer.sock');
  const ring = new FlowRing(1000, 'node-t');
  const source = new InjectedEventSource();
  const ctx: FlowContext = {
    nodeName: 'node-t',
    wallOffset: { seconds: 0, nanos: 0 },
    endpointByAddress: () => undefined,
    labelsOfIdentity: () => undefined,
    describeRule: (id) => (id === 0x1401 ? { policy: 'deny-legacy', index: 1, direction: 'ingress', action: 'deny' } : undefined),
    endpointById: (id) =>
      id === 9
        ? { id: 9, identity: 300, labels: { 'k8s:app': 'db' }, containerId: 'c9', namespace: 'shop', podName: 'db-0' }
        : undefined,
  };
  const collector = new FlowCollector({ ring, source, context: ctx });
  const agentEvents = new AgentEventLog();
  collector.start();
  let server: ObserverServer | undefined;
  let client: ObserverClient | undefined;
  let tsNs = Date.now() * 1e6; // with a zero offset, monotonic = wall clock here
  const push = (e: Partial<TraceEvent>) => {
    tsNs += 1e6;
    source.push(encodeTraceEvent({ tsNs, saddr: '10.2.0.2', daddr: '10.2.0.3', proto: 6, ...e }));
  };
  const newFlow = (sport: number) => push({ type: EventType.FLOW_NEW, sport, dport: 80, tcpFlags: 2 });
  const dropFlow = (sport: number) => push({ type: EventType.DROP, verdict: 1, reason: 1, sport, dport: 5432, ruleId: 0x1401 });
  const cli = (args: string[]) => [path.join(REPO, 'shared/src/cli/main.ts'), ...args];
  const env = () => {
    const e = { ...process.env };
    delete e.NODE_EXTRA_CA_CERTS;
    delete e.MEMBRANE_OBSERVER_SOCKET;
    return e;
  };

  t.before(async () => {
    server = await ObserverServer.start(
      {
        ring,
        nodeName: 'node-t',
        version: 'test',
        startedAtNs: process.hrtime.bigint(),
        flowEventsEnabled: () => true,
        lostEvents: () => collector.datapathLost(),
        lostEventsAgent: () => collector.agentLost,
        onLost: (fn) => collector.onLost(fn),
        countAgentLost: (n) => collector.countAgentLost(n),
        agentEvents,
      },
      { socket, address: '127.0.0.1:0' },
    );
    client = new ObserverClient(socket);
    for (let i = 1; i <= 10; i++) (i % 3 ? newFlow : dropFlow)(1000 + i);
  });
  t.teardown(async () => {
    client?.close();
    await server?.close();
    collector.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  return {
    ring,
    source,
    collector,
    agentEvents,
    dir,
    socket,
    get server() {
      if (!server) throw new Error('the observer server is not started yet (t.before starts it)');
      return server;
    },
    get client() {
      if (!client) throw new Error('the observer client is not started yet (t.before starts it)');
      return client;
    },
    push,
    newFlow,
    dropFlow,
    sports: (rs) => rs.map((r) => r.flow?.l4?.TCP?.sourcePort),
    cli,
    env,
    run(args) {
      const child = spawn(process.execPath, ['--import', 'tsx', ...cli(args)], { cwd: REPO, env: env(), timeout: 30_000 });
      let stdout = '',
        stderr = '';
      child.stdout.on('data', (d) => {
        stdout += d;
      });
      child.stderr.on('data', (d) => {
        stderr += d;
      });
      return new Promise((resolve) => child.once('close', (status) => resolve({ status, stdout, stderr })));
    },
  };
}

/** Polls `cond` every 20 ms (throws after `ms`; 30 s like every test wait: a loaded machine is slow). */
export function waitFor(cond: () => boolean, ms = 30_000): Promise<void> {
  return waitUntil('an observer condition', cond, ms, 20);
}
