// The Observer gRPC service (@grpc/grpc-js) over the flow ring: GetFlows (history, then follow) and
// ServerStatus, on a unix socket and optionally TCP. A slow follower never holds the agent back:
// past a queue limit its flows are dropped and it is told how many (LostEvent OBSERVER_EVENTS_QUEUE),
// the way Hubble does it.
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { compileFilters, FilterError } from './filter.ts';
import { nowTimestamp, timestampMs } from './flow.ts';
import { observerService } from './proto.ts';
import type { FlowRing } from './ring.ts';
import type { Flow, GetFlowsRequest, GetFlowsResponse, LostEventSource, ServerStatus, Timestamp } from './types.ts';
import { claimUnixSocket } from '../io/unix-socket.ts';

export interface ObserverBackend {
  ring: FlowRing;
  nodeName: string;
  version: string;
  /** process.hrtime.bigint() at start. */
  startedAtNs: bigint;
  flowEventsEnabled(): boolean;
  /** Datapath events lost so far (events_lost map). */
  lostEvents(): number;
  /** Events the agent itself dropped (reader backlog, slow followers). */
  lostEventsAgent(): number;
  /** Called with each new batch of losses so followers hear about them. */
  onLost(fn: (count: number, source: LostEventSource) => void): () => void;
  /** Slow followers' dropped flows are reported here too (they count in lostEventsAgent). */
  countAgentLost(n: number): void;
}

/** Followers queue at most this many responses before their flows are dropped. */
export const FOLLOW_QUEUE_LIMIT = 8192;

export interface ObserverServerOptions {
  socket: string;
  /** Also listen on TCP host:port (port 0 picks one). */
  address?: string;
}

export class ObserverServer {
  private readonly followers = new Set<grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>>();

  private constructor(private readonly server: grpc.Server, readonly socket: string, readonly address: string | undefined) {}

  static async start(backend: ObserverBackend, opts: ObserverServerOptions): Promise<ObserverServer> {
    const { service } = observerService();
    const server = new grpc.Server({ 'grpc.max_send_message_length': 16 << 20 });
    let self: ObserverServer | undefined;
    server.addService(service, {
      getFlows: (call: grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>) => getFlows(backend, call, self!.followers),
      serverStatus: (_call: unknown, cb: grpc.sendUnaryData<ServerStatus>) => cb(null, status(backend)),
    });
    await claimUnixSocket(opts.socket, 'another flow observer'); // never over a live one; a stale one goes
    await bind(server, `unix:${opts.socket}`);
    fs.chmodSync(opts.socket, 0o660);
    let address: string | undefined;
    if (opts.address) {
      const port = await bind(server, opts.address);
      address = opts.address.replace(/:\d+$/, `:${port}`);
    }
    self = new ObserverServer(server, opts.socket, address);
    return self;
  }

  async close(): Promise<void> {
    // Followers never end on their own: end them so the graceful shutdown can finish.
    for (const call of this.followers) call.end();
    this.followers.clear();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => { this.server.forceShutdown(); resolve(); }, 2000);
      this.server.tryShutdown(() => { clearTimeout(timer); resolve(); });
    });
    fs.rmSync(this.socket, { force: true });
  }
}

function bind(server: grpc.Server, target: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(target, grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function status(b: ObserverBackend): ServerStatus {
  return {
    numFlows: b.ring.size, maxFlows: b.ring.capacity, seenFlows: b.ring.seen,
    uptimeNs: Number(process.hrtime.bigint() - b.startedAtNs), version: b.version, flowsRate: b.ring.rate(),
    nodeName: b.nodeName, lostEvents: b.lostEvents(), lostEventsAgent: b.lostEventsAgent(), flowEventsEnabled: b.flowEventsEnabled(),
  };
}

function tsMs(t: Timestamp | undefined | null): number | undefined {
  return t ? timestampMs({ seconds: Number(t.seconds ?? 0), nanos: t.nanos ?? 0 }) : undefined;
}

/** Validates a request; throws FilterError for anything a client must fix. */
export function planRequest(req: GetFlowsRequest): { number: number; first: boolean; follow: boolean; sinceMs?: number; untilMs?: number; match: (f: Flow) => boolean } {
  const number = Number(req.number ?? 0);
  if (!Number.isInteger(number) || number < 0) throw new FilterError(`number must be a whole number, got ${req.number}`);
  if (req.first && req.follow) throw new FilterError('first and follow cannot be combined');
  const sinceMs = tsMs(req.since), untilMs = tsMs(req.until);
  if (sinceMs !== undefined && untilMs !== undefined && untilMs < sinceMs) throw new FilterError('until is before since');
  return { number, first: !!req.first, follow: !!req.follow, sinceMs, untilMs, match: compileFilters(req.whitelist ?? [], req.blacklist ?? []) };
}

function getFlows(b: ObserverBackend, call: grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>, followers: Set<grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>>): void {
  let plan: ReturnType<typeof planRequest>;
  try {
    plan = planRequest(call.request);
  } catch (e) {
    // grpc-js turns an 'error' event carrying code/details into the call's status.
    call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: (e as Error).message });
    return;
  }
  const wrap = (flow: Flow): GetFlowsResponse => ({ flow, nodeName: b.nodeName, time: flow.time });
  const lostResponse = (count: number, source: LostEventSource): GetFlowsResponse =>
    ({ lostEvents: { source, numEventsLost: count }, nodeName: b.nodeName, time: nowTimestamp() });
  // History: with follow and no number/since, only what happens from now on.
  const wantHistory = !(plan.follow && !plan.number && plan.sinceMs === undefined);
  const history = () => (wantHistory
    ? b.ring.select({ number: plan.number, first: plan.first, sinceMs: plan.sinceMs, untilMs: plan.untilMs, match: plan.match })
    : Promise.resolve([]));
  const fail = (err: unknown) => call.emit('error', { code: grpc.status.INTERNAL, details: (err as Error).message });
  if (!plan.follow) {
    history().then((flows) => {
      for (const f of flows) call.write(wrap(f));
      call.end();
    }, fail);
    return;
  }
  followers.add(call);
  let dropped = 0;
  let live = false; // until the history is written, live flows wait in `pending`
  const pending: GetFlowsResponse[] = [];
  const send = (res: GetFlowsResponse) => {
    if (!live) { if (pending.length < FOLLOW_QUEUE_LIMIT) pending.push(res); else { dropped++; b.countAgentLost(1); } return; }
    if (call.writableLength >= FOLLOW_QUEUE_LIMIT) { dropped++; b.countAgentLost(1); return; }
    if (dropped) {
      call.write(lostResponse(dropped, 'OBSERVER_EVENTS_QUEUE'));
      dropped = 0;
    }
    call.write(res);
  };
  // Subscribed before the history is read, so nothing falls between the two.
  const unsubscribe = b.ring.subscribe((f) => {
    if (plan.untilMs !== undefined && timestampMs(f.time) > plan.untilMs) { done(); call.end(); return; }
    if ((plan.sinceMs === undefined || timestampMs(f.time) >= plan.sinceMs) && plan.match(f)) send(wrap(f));
  });
  const unLost = b.onLost((count, source) => send(lostResponse(count, source)));
  let finished = false;
  const done = () => { finished = true; unsubscribe(); unLost(); followers.delete(call); };
  call.on('cancelled', done);
  call.on('close', done);
  call.on('error', done);
  history().then((flows) => {
    if (finished) return;
    for (const f of flows) call.write(wrap(f)); // bounded by the ring; queued in memory once
    live = true;
    for (const res of pending.splice(0)) send(res);
  }, (err) => { done(); fail(err); });
}
