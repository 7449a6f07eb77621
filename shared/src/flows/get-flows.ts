// GetFlows: validate the request (a filter or mask Membrane cannot apply is INVALID_ARGUMENT naming
// the field), send the matching history, then, with follow, every new flow. A slow follower never
// holds the agent back: past a queue limit its flows are dropped and it is told how many
// (LostEvent OBSERVER_EVENTS_QUEUE), the way Hubble does it.
import * as grpc from '@grpc/grpc-js';
import { compileFilters, FilterError, type FilterContext } from './filter.ts';
import { nowTimestamp, timestampMs } from './flow.ts';
import { applyFieldMask, checkFieldMask, type ProtoJsonError } from './protojson.ts';
import type { FlowRing } from './ring.ts';
import type { Flow, GetFlowsRequest, GetFlowsResponse, LostEventSource, Timestamp } from './types.ts';

/** Followers queue at most this many responses before their flows are dropped. */
export const FOLLOW_QUEUE_LIMIT = 8192;

export interface FlowsBackend {
  ring: FlowRing;
  nodeName: string;
  filterContext?: FilterContext;
  /** Called with each new batch of losses so followers hear about them. */
  onLost(fn: (count: number, source: LostEventSource) => void): () => void;
  /** Slow followers' dropped flows are counted here. */
  countAgentLost(n: number): void;
  /** Brings into the ring the flows other sources hold until asked (the L7 proxy workers'), before
   *  the ring is read. */
  refresh?(): Promise<void>;
}

export type FlowsCall = grpc.ServerWritableStream<
  GetFlowsRequest & { extensions?: unknown; experimental?: unknown },
  GetFlowsResponse
>;

export function tsMs(t: Partial<Timestamp> | undefined | null): number | undefined {
  return t ? timestampMs({ seconds: Number(t.seconds ?? 0), nanos: t.nanos ?? 0 }) : undefined;
}

export interface FlowsPlan {
  number: number;
  first: boolean;
  follow: boolean;
  sinceMs?: number;
  untilMs?: number;
  match: (f: Flow) => boolean;
  mask?: string[];
}

/** Validates a request; throws FilterError for anything a client must fix. */
export function planRequest(req: GetFlowsRequest & { extensions?: unknown }, ctx: FilterContext = {}): FlowsPlan {
  const number = Number(req.number ?? 0);
  if (!Number.isInteger(number) || number < 0) throw new FilterError(`number must be a whole number, got ${req.number}`);
  if (req.first && req.follow) throw new FilterError('first and follow cannot be combined');
  if (req.extensions) throw new FilterError('extensions: Membrane does not understand request extensions');
  const sinceMs = tsMs(req.since),
    untilMs = tsMs(req.until);
  if (sinceMs !== undefined && untilMs !== undefined && untilMs < sinceMs) throw new FilterError('until is before since');
  const paths = req.fieldMask?.paths ?? [];
  if (paths.length) {
    try {
      checkFieldMask('flow.Flow', paths);
    } catch (e) {
      throw new FilterError((e as ProtoJsonError).message);
    }
  }
  return {
    number,
    first: !!req.first,
    follow: !!req.follow,
    sinceMs,
    untilMs,
    match: compileFilters(req.whitelist ?? [], req.blacklist ?? [], ctx),
    ...(paths.length ? { mask: paths } : {}),
  };
}

export function invalidArgument(call: { emit(event: 'error', e: unknown): unknown }, message: string): void {
  // grpc-js turns an 'error' event carrying code/details into the call's status.
  call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: message });
}

export function getFlows(b: FlowsBackend, call: FlowsCall, followers: Set<FlowsCall>): void {
  let plan: FlowsPlan;
  try {
    plan = planRequest(call.request, b.filterContext);
  } catch (e) {
    invalidArgument(call, (e as Error).message);
    return;
  }
  const shape = plan.mask ? (f: Flow) => applyFieldMask('flow.Flow', f, plan.mask!) : (f: Flow) => f;
  const wrap = (flow: Flow): GetFlowsResponse => ({ flow: shape(flow), nodeName: b.nodeName, time: flow.time });
  const lostResponse = (count: number, source: LostEventSource): GetFlowsResponse => ({
    lostEvents: { source, numEventsLost: count },
    nodeName: b.nodeName,
    time: nowTimestamp(),
  });
  // History: with follow and no number/since, only what happens from now on.
  const wantHistory = !(plan.follow && !plan.number && plan.sinceMs === undefined);
  const history = async () => {
    if (!wantHistory) return [];
    await b.refresh?.();
    return b.ring.select({
      number: plan.number,
      first: plan.first,
      sinceMs: plan.sinceMs,
      untilMs: plan.untilMs,
      match: plan.match,
    });
  };
  const fail = (err: unknown) => call.emit('error', { code: grpc.status.INTERNAL, details: (err as Error).message });
  if (!plan.follow) {
    history().then((flows) => {
      for (const f of flows) call.write(wrap(f));
      call.end();
    }, fail);
    return;
  }
  followers.add(call);
  // Loss reports the client is owed, by source: flows dropped for it (OBSERVER_EVENTS_QUEUE) and
  // datapath loss reports that arrived while its queue was full. A report is never itself dropped:
  // it waits here and goes out, summed, before the next response that fits.
  const owed = new Map<LostEventSource, number>();
  const owe = (source: LostEventSource, count: number) => owed.set(source, (owed.get(source) ?? 0) + count);
  const refuse = (res: GetFlowsResponse) => {
    if (res.lostEvents) {
      owe(res.lostEvents.source, Number(res.lostEvents.numEventsLost));
      return;
    }
    owe('OBSERVER_EVENTS_QUEUE', 1);
    b.countAgentLost(1);
  };
  let live = false; // until the history is written, live flows wait in `pending`
  const pending: GetFlowsResponse[] = [];
  const send = (res: GetFlowsResponse) => {
    if (!live) {
      if (pending.length < FOLLOW_QUEUE_LIMIT) pending.push(res);
      else refuse(res);
      return;
    }
    if (call.writableLength >= FOLLOW_QUEUE_LIMIT) {
      refuse(res);
      return;
    }
    for (const [source, count] of owed) call.write(lostResponse(count, source));
    owed.clear();
    call.write(res);
  };
  // Subscribed before the history is read, so nothing falls between the two.
  const unsubscribe = b.ring.subscribe((f) => {
    if (plan.untilMs !== undefined && timestampMs(f.time) > plan.untilMs) {
      done();
      call.end();
      return;
    }
    if ((plan.sinceMs === undefined || timestampMs(f.time) >= plan.sinceMs) && plan.match(f)) send(wrap(f));
  });
  const unLost = b.onLost((count, source) => send(lostResponse(count, source)));
  let finished = false;
  const done = () => {
    finished = true;
    unsubscribe();
    unLost();
    followers.delete(call);
  };
  call.on('cancelled', done);
  call.on('close', done);
  call.on('error', done);
  history().then(
    (flows) => {
      if (finished) return;
      for (const f of flows) call.write(wrap(f)); // bounded by the ring; queued in memory once
      live = true;
      for (const res of pending.splice(0)) send(res);
    },
    (err) => {
      done();
      fail(err);
    },
  );
}
