// The observer gRPC server (@grpc/grpc-js): Hubble's observer.Observer service (GetFlows,
// GetAgentEvents, GetNodes, GetNamespaces, ServerStatus; GetDebugEvents answers UNIMPLEMENTED) and
// the standard health service `hubble status` checks, on a unix socket and optionally TCP.
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { AgentEventLog, AgentEventRecord } from './agent-events.ts';
import { FilterError } from './filter.ts';
import { timestampMs } from './flow.ts';
import { getFlows, invalidArgument, tsMs, type FlowsBackend, type FlowsCall } from './get-flows.ts';
import { NamespaceTracker } from './namespaces.ts';
import { observerHealth } from './health.ts';
import { healthService, observerService } from './proto.ts';
import type { GetAgentEventsRequest, GetAgentEventsResponse, Namespace, ObserverNode, ServerStatus } from './types.ts';
import { claimUnixSocket } from '../io/unix-socket.ts';

export { FOLLOW_QUEUE_LIMIT } from './get-flows.ts';

export interface ObserverBackend extends FlowsBackend {
  version: string;
  /** process.hrtime.bigint() at start. */
  startedAtNs: bigint;
  flowEventsEnabled(): boolean;
  /** Datapath events lost so far (events_lost map). */
  lostEvents(): number;
  /** Events the agent itself dropped (reader backlog, slow followers). */
  lostEventsAgent(): number;
  /** Agent events for GetAgentEvents (none recorded: an empty stream). */
  agentEvents?: AgentEventLog;
}

export interface ObserverServerOptions {
  socket: string;
  /** Also listen on TCP host:port (port 0 picks one). */
  address?: string;
  /** TLS on the TCP listener (the unix socket is guarded by its file mode); with clientCa, clients
   *  must present a certificate it signed (a cluster's relay). */
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
}

type AgentEventsCall = grpc.ServerWritableStream<GetAgentEventsRequest, GetAgentEventsResponse>;

export class ObserverServer {
  /** Streams that never end on their own (follows, health watches): ended on close. */
  private readonly followers = new Set<{ end(): void }>();
  private timer?: NodeJS.Timeout;

  private constructor(
    private readonly server: grpc.Server,
    readonly socket: string,
    readonly address: string | undefined,
    readonly tls = false,
  ) {}

  static async start(backend: ObserverBackend, opts: ObserverServerOptions): Promise<ObserverServer> {
    const server = new grpc.Server({ 'grpc.max_send_message_length': 16 << 20 });
    const namespaces = new NamespaceTracker(backend.ring);
    let self: ObserverServer | undefined;
    const node = (): ObserverNode => nodeOf(backend, self?.address ?? `unix://${opts.socket}`, !!opts.tls && !!self?.address);
    server.addService(observerService().service, {
      getFlows: (call: FlowsCall) => getFlows(backend, call, self!.followers as Set<FlowsCall>),
      getAgentEvents: (call: AgentEventsCall) => getAgentEvents(backend, call, self!.followers as Set<AgentEventsCall>),
      getDebugEvents: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: "Membrane's datapath emits no debug events" }),
      getNodes: (_call: unknown, cb: grpc.sendUnaryData<{ nodes: ObserverNode[] }>) => cb(null, { nodes: [node()] }),
      getNamespaces: (_call: unknown, cb: grpc.sendUnaryData<{ namespaces: Namespace[] }>) =>
        cb(null, { namespaces: namespaces.list() }),
      serverStatus: (_call: unknown, cb: grpc.sendUnaryData<ServerStatus>) => {
        (backend.refresh?.() ?? Promise.resolve()).then(
          () => cb(null, status(backend)),
          () => cb(null, status(backend)),
        );
      },
    });
    server.addService(
      healthService().service,
      observerHealth(() => self!.followers),
    );
    await claimUnixSocket(opts.socket, 'another flow observer'); // never over a live one; a stale one goes
    await bind(server, `unix:${opts.socket}`);
    fs.chmodSync(opts.socket, 0o660);
    let address: string | undefined;
    if (opts.address) {
      const port = await bind(server, opts.address, opts.tls);
      address = opts.address.replace(/:\d+$/, `:${port}`);
    }
    self = new ObserverServer(server, opts.socket, address, !!opts.tls);
    self.timer = setInterval(() => namespaces.update(), 1000);
    self.timer.unref();
    return self;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await closeGracefully(this.server, this.followers);
    fs.rmSync(this.socket, { force: true });
  }
}

/** Ends the open streams (followers never end on their own), then shuts the server down gracefully,
 *  forcibly after 2 s. The agent's observer and the relay close this way. */
export function closeGracefully(server: grpc.Server, followers: Set<{ end(): void }>): Promise<void> {
  for (const call of followers) call.end();
  followers.clear();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, 2000);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export function bind(server: grpc.Server, target: string, tls?: ObserverServerOptions['tls']): Promise<number> {
  const creds = tls
    ? grpc.ServerCredentials.createSsl(tls.clientCa ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], !!tls.clientCa)
    : grpc.ServerCredentials.createInsecure();
  return new Promise((resolve, reject) => {
    server.bindAsync(target, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function status(b: ObserverBackend): ServerStatus {
  return {
    numFlows: b.ring.size,
    maxFlows: b.ring.capacity,
    seenFlows: b.ring.seen,
    uptimeNs: Number(process.hrtime.bigint() - b.startedAtNs),
    version: b.version,
    flowsRate: b.ring.rate(),
    membrane: {
      nodeName: b.nodeName,
      lostEventsDatapath: b.lostEvents(),
      lostEventsAgent: b.lostEventsAgent(),
      flowEventsEnabled: b.flowEventsEnabled(),
    },
  };
}

function nodeOf(b: ObserverBackend, address: string, tls: boolean): ObserverNode {
  return {
    name: b.filterContext?.clusterName ? `${b.filterContext.clusterName}/${b.nodeName}` : b.nodeName,
    version: b.version,
    address,
    state: 'NODE_CONNECTED',
    tls: tls ? { enabled: true } : {}, // a false field is left out
    uptimeNs: Number(process.hrtime.bigint() - b.startedAtNs),
    numFlows: b.ring.size,
    maxFlows: b.ring.capacity,
    seenFlows: b.ring.seen,
  };
}

function getAgentEvents(b: ObserverBackend, call: AgentEventsCall, followers: Set<AgentEventsCall>): void {
  const req = call.request;
  const number = Number(req.number ?? 0);
  const sinceMs = tsMs(req.since),
    untilMs = tsMs(req.until);
  try {
    if (!Number.isInteger(number) || number < 0) throw new FilterError(`number must be a whole number, got ${req.number}`);
    if (req.first && req.follow) throw new FilterError('first and follow cannot be combined');
    if (sinceMs !== undefined && untilMs !== undefined && untilMs < sinceMs) throw new FilterError('until is before since');
  } catch (e) {
    invalidArgument(call, (e as Error).message);
    return;
  }
  const wrap = (r: AgentEventRecord): GetAgentEventsResponse => ({ agentEvent: r.event, nodeName: b.nodeName, time: r.time });
  const log = b.agentEvents;
  const wantHistory = !(req.follow && !number && sinceMs === undefined);
  for (const r of wantHistory && log ? log.select({ number, first: !!req.first, sinceMs, untilMs }) : []) call.write(wrap(r));
  if (!req.follow || !log) {
    call.end();
    return;
  }
  followers.add(call);
  const unsubscribe = log.subscribe((r) => {
    if (untilMs !== undefined && timestampMs(r.time) > untilMs) {
      done();
      call.end();
      return;
    }
    if (sinceMs === undefined || timestampMs(r.time) >= sinceMs) call.write(wrap(r));
  });
  const done = () => {
    unsubscribe();
    followers.delete(call);
  };
  call.on('cancelled', done);
  call.on('close', done);
  call.on('error', done);
}
