// The relay's streamed requests (GetFlows, GetAgentEvents) asked of every node: history (each node's
// complete answer, merged and cut to `number`) or follow (every node's stream through a sort buffer,
// reopened when a node comes back). A node that does not answer is reported with a node status
// event, never fatal.
import * as grpc from '@grpc/grpc-js';
import { FOLLOW_QUEUE_LIMIT } from '../flows/get-flows.ts';
import { nowTimestamp } from '../flows/flow.ts';
import type {
  GetAgentEventsRequest,
  GetAgentEventsResponse,
  GetFlowsRequest,
  GetFlowsResponse,
  NodeState,
  Timestamp,
} from '../flows/types.ts';
import { mergeOrdered, selectHistory, SortBuffer, timeNs, type Timed } from './merge.ts';
import type { Peer, PeerEvent, PeerSet } from './peers.ts';

/** The node name on the relay's own events (node status, lost events) and status. */
export const RELAY_NAME = 'membrane-relay';

export interface FanOutOptions {
  peers: PeerSet;
  /** Follow: how long a response waits for older ones from other nodes, and the most that wait. */
  sortWindowMs: number;
  sortMaxLen: number;
  /** History: how long a node may take to answer before it is reported unavailable. */
  peerTimeoutMs: number;
}

export type Call<Req, Res> = grpc.ServerWritableStream<Req, Res>;
interface Stream<Res> {
  responses: AsyncIterable<Res>;
  cancel(): void;
}

/** How one kind of stream is asked of a node (flows or agent events). */
export interface Kind<Req, Res extends Timed> {
  open(peer: Peer, req: Req): Stream<Res>;
  /** A node status event, or undefined when this kind has none (agent events). */
  status?(state: NodeState, names: string[], message: string): Res;
  lost?(count: number): Res;
  number(req: Req): { number: number; first: boolean; follow: boolean; untilSet: boolean };
  /** The request resumed after `t` (a node that comes back), following only. */
  resume(req: Req, t: Timestamp | undefined): Req;
}

const next = (t: Timestamp): Timestamp =>
  t.nanos >= 999_999_999 ? { seconds: Number(t.seconds) + 1, nanos: 0 } : { seconds: Number(t.seconds), nanos: t.nanos + 1 };

export function flowsKind(): Kind<GetFlowsRequest, GetFlowsResponse> {
  return {
    open: (p, req) => p.client.flows(req),
    status: (state, names, message) => ({
      nodeStatus: { stateChange: state, nodeNames: names, message },
      nodeName: RELAY_NAME,
      time: nowTimestamp(),
    }),
    lost: (count) => ({
      lostEvents: { source: 'OBSERVER_EVENTS_QUEUE', numEventsLost: count },
      nodeName: RELAY_NAME,
      time: nowTimestamp(),
    }),
    number: (r) => ({ number: Number(r.number ?? 0), first: !!r.first, follow: !!r.follow, untilSet: !!r.until }),
    resume: (r, t) => ({ ...r, number: 0, first: false, ...(t ? { since: next(t) } : {}) }),
  };
}

export function agentEventsKind(): Kind<GetAgentEventsRequest, GetAgentEventsResponse> {
  return {
    open: (p, req) => p.client.agentEvents(req),
    number: (r) => ({ number: Number(r.number ?? 0), first: !!r.first, follow: !!r.follow, untilSet: !!r.until }),
    resume: (r, t) => ({ ...r, number: 0, first: false, ...(t ? { since: next(t) } : {}) }),
  };
}

/** All of one node's responses to a request that ends, within the timeout. */
async function collect<Req, Res>(
  kind: Kind<Req, Res & Timed>,
  peer: Peer,
  req: Req,
  timeoutMs: number,
): Promise<(Res & Timed)[]> {
  const s = kind.open(peer, { ...req, follow: false });
  const out: (Res & Timed)[] = [];
  const timer = setTimeout(() => s.cancel(), timeoutMs);
  let cancelled = false;
  try {
    for await (const r of s.responses) out.push(r);
  } catch (e) {
    cancelled = (e as { code?: number }).code === grpc.status.CANCELLED;
    throw cancelled ? new Error(`no complete answer within ${timeoutMs} ms`) : e;
  } finally {
    clearTimeout(timer);
  }
  return out;
}

export function fanOut<Req, Res extends Timed>(
  o: FanOutOptions,
  kind: Kind<Req, Res>,
  call: Call<Req, Res>,
  followers: Set<{ end(): void }>,
): void {
  const req = call.request;
  const want = kind.number(req);
  const peers = o.peers.list();
  const down = peers.filter((p) => p.state !== 'NODE_CONNECTED');
  const describe = (ps: Peer[]) => ps.map((p) => `${p.name}: ${p.lastError ?? 'not answering'}`).join('; ');
  if (down.length && kind.status)
    call.write(
      kind.status(
        'NODE_UNAVAILABLE',
        down.map((p) => p.name),
        describe(down),
      ),
    );
  const up = peers.filter((p) => p.state === 'NODE_CONNECTED');

  if (!want.follow) {
    Promise.all(
      up.map((p) =>
        collect(kind, p, req, o.peerTimeoutMs).then(
          (r) => {
            o.peers.answered(p);
            return r;
          },
          (e: Error) => {
            o.peers.failed(p, e);
            return e;
          },
        ),
      ),
    ).then(
      (answers) => {
        const failed = up.filter((_, i) => answers[i] instanceof Error);
        if (failed.length && kind.status)
          call.write(
            kind.status(
              'NODE_UNAVAILABLE',
              failed.map((p) => p.name),
              describe(failed),
            ),
          );
        const lists = answers.filter((a): a is Res[] => !(a instanceof Error));
        for (const r of selectHistory(mergeOrdered(lists) as (Res & { flow?: unknown })[], want.number, want.first))
          call.write(r);
        call.end();
      },
      (err) => call.emit('error', { code: grpc.status.INTERNAL, details: (err as Error).message }),
    );
    return;
  }

  followers.add(call);
  const buffer = new SortBuffer<Res>(o.sortWindowMs, o.sortMaxLen);
  const streams = new Map<string, Stream<Res>>();
  const lastSeen = new Map<string, Timestamp>();
  const ended = new Set<string>();
  let stopped = false;
  let dropped = 0;
  const send = (r: Res) => {
    if (call.writableLength >= FOLLOW_QUEUE_LIMIT) {
      dropped++;
      return;
    }
    if (dropped && kind.lost) {
      call.write(kind.lost(dropped));
      dropped = 0;
    }
    call.write(r);
  };
  const pump = () => {
    for (const r of buffer.drain(Date.now())) send(r);
  };
  const finishIfDone = () => {
    // With `until`, every node ends its stream there: the relay's ends after the last.
    if (want.untilSet && [...o.peers.list()].every((p) => ended.has(p.name) || p.state !== 'NODE_CONNECTED')) {
      stop();
      for (const r of buffer.flush()) send(r);
      call.end();
    }
  };
  const open = (peer: Peer) => {
    if (stopped || streams.has(peer.name) || ended.has(peer.name)) return;
    const seen = lastSeen.get(peer.name);
    const s = kind.open(peer, seen ? kind.resume(req, seen) : req);
    streams.set(peer.name, s);
    void (async () => {
      try {
        for await (const r of s.responses) {
          if (stopped) return;
          if (r.time && timeNs(r.time) > 0n) lastSeen.set(peer.name, r.time);
          buffer.push(r);
        }
        if (stopped || streams.get(peer.name) !== s) return;
        streams.delete(peer.name);
        if (want.untilSet) {
          ended.add(peer.name);
          finishIfDone();
          return;
        }
        o.peers.failed(peer, new Error('the node ended its stream'));
      } catch (e) {
        if (stopped || streams.get(peer.name) !== s) return;
        streams.delete(peer.name);
        o.peers.failed(peer, e as Error);
      }
    })();
  };
  const onPeer = (e: PeerEvent) => {
    if (stopped) return;
    if (e.type === 'gone') {
      streams.get(e.peer.name)?.cancel();
      streams.delete(e.peer.name);
      if (kind.status) buffer.push(kind.status('NODE_GONE', [e.peer.name], `${e.peer.name} left the cluster`));
    } else if (e.type === 'unavailable') {
      streams.get(e.peer.name)?.cancel();
      streams.delete(e.peer.name);
      if (kind.status)
        buffer.push(kind.status('NODE_UNAVAILABLE', [e.peer.name], `${e.peer.name}: ${e.peer.lastError ?? 'not answering'}`));
    } else if (e.type === 'connected') {
      if (kind.status) buffer.push(kind.status('NODE_CONNECTED', [e.peer.name], `${e.peer.name} answers again`));
      open(e.peer);
    } else if (e.type === 'added') {
      open(e.peer);
    }
  };
  const unsubscribe = o.peers.subscribe(onPeer);
  const timer = setInterval(pump, Math.max(10, Math.min(50, o.sortWindowMs / 2)));
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    unsubscribe();
    for (const s of streams.values()) s.cancel();
    streams.clear();
    followers.delete(call);
  };
  call.on('cancelled', stop);
  call.on('close', stop);
  call.on('error', stop);
  for (const p of up) open(p);
}
