// The relay's gRPC server: the same observer.Observer service (and health service) an agent serves,
// answered by asking every node and merging (merge.ts). GetFlows tells which nodes did not answer
// (node status events, as Hubble Relay does): an unavailable or vanished node is reported, never fatal.
// Requests are validated with the agent's own rules before any node is asked.
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { planRequest, invalidArgument, FOLLOW_QUEUE_LIMIT } from '../flows/get-flows.ts';
import { nowTimestamp } from '../flows/flow.ts';
import { bind } from '../flows/server.ts';
import { healthService, observerService, OBSERVER_SERVICE } from '../flows/proto.ts';
import { claimUnixSocket } from '../io/unix-socket.ts';
import type {
  GetAgentEventsRequest,
  GetAgentEventsResponse,
  GetFlowsRequest,
  GetFlowsResponse,
  Namespace,
  NodeState,
  ObserverNode,
  ServerStatus,
  Timestamp,
} from '../flows/types.ts';
import { mergeOrdered, selectHistory, SortBuffer, timeNs, type Timed } from './merge.ts';
import { observerServerName, type Peer, type PeerEvent, type PeerSet } from './peers.ts';

export const RELAY_NAME = 'membrane-relay';

export interface RelayServerOptions {
  peers: PeerSet;
  cluster: string;
  version: string;
  /** Unix socket and/or TCP host:port to serve on. */
  socket?: string;
  address?: string;
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
  /** Follow: how long a response waits for older ones from other nodes, and the most that wait. */
  sortWindowMs: number;
  sortMaxLen: number;
  /** History: how long a node may take to answer before it is reported unavailable. */
  peerTimeoutMs: number;
}

type Call<Req, Res> = grpc.ServerWritableStream<Req, Res>;
interface Stream<Res> {
  responses: AsyncIterable<Res>;
  cancel(): void;
}

/** How one kind of stream is asked of a node (flows or agent events). */
interface Kind<Req, Res extends Timed> {
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

function flowsKind(): Kind<GetFlowsRequest, GetFlowsResponse> {
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

function agentEventsKind(): Kind<GetAgentEventsRequest, GetAgentEventsResponse> {
  return {
    open: (p, req) => p.client.agentEvents(req),
    number: (r) => ({ number: Number(r.number ?? 0), first: !!r.first, follow: !!r.follow, untilSet: !!r.until }),
    resume: (r, t) => ({ ...r, number: 0, first: false, ...(t ? { since: next(t) } : {}) }),
  };
}

export class RelayServer {
  private readonly followers = new Set<{ end(): void }>();

  private constructor(
    private readonly server: grpc.Server,
    readonly socket: string | undefined,
    readonly address: string | undefined,
  ) {}

  static async start(o: RelayServerOptions): Promise<RelayServer> {
    const server = new grpc.Server({ 'grpc.max_send_message_length': 16 << 20 });
    const startedAtNs = process.hrtime.bigint();
    let self: RelayServer | undefined;
    const fan =
      <Req, Res extends Timed>(kind: Kind<Req, Res>) =>
      (call: Call<Req, Res>) =>
        fanOut(o, kind, call, self!.followers);
    server.addService(observerService().service, {
      getFlows: (call: Call<GetFlowsRequest, GetFlowsResponse>) => {
        try {
          planRequest(call.request as GetFlowsRequest & { extensions?: unknown });
        } catch (e) {
          invalidArgument(call, (e as Error).message);
          return;
        }
        fan(flowsKind())(call);
      },
      getAgentEvents: fan(agentEventsKind()),
      getDebugEvents: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: "Membrane's datapath emits no debug events" }),
      getNodes: (_call: unknown, cb: grpc.sendUnaryData<{ nodes: ObserverNode[] }>) => {
        nodes(o).then(
          (n) => cb(null, { nodes: n }),
          (e) => cb(e),
        );
      },
      getNamespaces: (_call: unknown, cb: grpc.sendUnaryData<{ namespaces: Namespace[] }>) => {
        namespaces(o).then(
          (n) => cb(null, { namespaces: n }),
          (e) => cb(e),
        );
      },
      serverStatus: (_call: unknown, cb: grpc.sendUnaryData<ServerStatus>) => {
        status(o, startedAtNs).then(
          (s) => cb(null, s),
          (e) => cb(e),
        );
      },
    });
    server.addService(healthService().service, {
      check: (call: grpc.ServerUnaryCall<{ service?: string }, unknown>, cb: grpc.sendUnaryData<{ status: string }>) => {
        const svc = call.request.service ?? '';
        if (svc && svc !== OBSERVER_SERVICE) {
          cb({ code: grpc.status.NOT_FOUND, details: `unknown service "${svc}"` });
          return;
        }
        cb(null, { status: 'SERVING' });
      },
      watch: (call: grpc.ServerWritableStream<{ service?: string }, { status: string }>) => {
        call.write({ status: 'SERVING' });
        self!.followers.add(call);
        call.on('cancelled', () => self!.followers.delete(call));
      },
    });
    let address: string | undefined;
    if (o.socket) {
      await claimUnixSocket(o.socket, 'another relay');
      await bind(server, `unix:${o.socket}`);
      fs.chmodSync(o.socket, 0o660);
    }
    if (o.address) address = o.address.replace(/:\d+$/, `:${await bind(server, o.address, o.tls)}`);
    self = new RelayServer(server, o.socket, address);
    return self;
  }

  async close(): Promise<void> {
    for (const call of this.followers) call.end();
    this.followers.clear();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    if (this.socket) fs.rmSync(this.socket, { force: true });
  }
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

function fanOut<Req, Res extends Timed>(
  o: RelayServerOptions,
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

async function nodes(o: RelayServerOptions): Promise<ObserverNode[]> {
  return Promise.all(
    o.peers.list().map(async (p) => {
      const tls = p.tls ? { enabled: true, serverName: observerServerName(o.cluster, p.name) } : {};
      try {
        const [n] = await p.client.nodes(2_000);
        o.peers.answered(p);
        return { ...n, name: p.name, address: p.address, state: 'NODE_CONNECTED' as const, tls };
      } catch (e) {
        o.peers.failed(p, e as Error);
        return { name: p.name, address: p.address, state: 'NODE_UNAVAILABLE' as const, tls };
      }
    }),
  );
}

async function namespaces(o: RelayServerOptions): Promise<Namespace[]> {
  const all = await Promise.all(
    o.peers
      .list()
      .filter((p) => p.state === 'NODE_CONNECTED')
      .map((p) => p.client.namespaces(2_000).catch(() => [])),
  );
  const seen = new Map<string, Namespace>();
  for (const n of all.flat()) seen.set(`${n.cluster ?? ''}/${n.namespace}`, n);
  return [...seen.values()].sort(
    (a, b) => (a.cluster ?? '').localeCompare(b.cluster ?? '') || a.namespace.localeCompare(b.namespace),
  );
}

async function status(o: RelayServerOptions, startedAtNs: bigint): Promise<ServerStatus> {
  const peers = o.peers.list();
  const answers = await Promise.all(
    peers.map((p) =>
      p.client.status(2_000).then(
        (s) => {
          o.peers.answered(p);
          return s;
        },
        (e: Error) => {
          o.peers.failed(p, e);
          return undefined;
        },
      ),
    ),
  );
  const ok = answers.filter((a): a is ServerStatus => !!a);
  const unavailable = peers.filter((_, i) => !answers[i]).map((p) => p.name);
  const sum = (f: (s: ServerStatus) => number) => ok.reduce((n, s) => n + f(s), 0);
  return {
    numFlows: sum((s) => s.numFlows),
    maxFlows: sum((s) => s.maxFlows),
    seenFlows: sum((s) => s.seenFlows),
    flowsRate: sum((s) => s.flowsRate),
    uptimeNs: Number(process.hrtime.bigint() - startedAtNs),
    version: o.version,
    numConnectedNodes: { value: ok.length },
    numUnavailableNodes: { value: unavailable.length },
    unavailableNodes: unavailable,
    membrane: {
      nodeName: RELAY_NAME,
      lostEventsDatapath: sum((s) => s.membrane?.lostEventsDatapath ?? 0),
      lostEventsAgent: sum((s) => s.membrane?.lostEventsAgent ?? 0),
      flowEventsEnabled: ok.some((s) => s.membrane?.flowEventsEnabled),
    },
  };
}
