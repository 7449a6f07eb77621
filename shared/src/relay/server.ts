// The relay's gRPC server: the same observer.Observer service (and health service) an agent serves,
// answered by asking every node and merging (streams.ts, unary.ts, merge.ts). GetFlows tells which nodes did not answer
// (node status events, as Hubble Relay does): an unavailable or vanished node is reported, never fatal.
// Requests are validated with the agent's own rules before any node is asked.
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { planRequest, invalidArgument } from '../flows/get-flows.ts';
import { bind, closeGracefully } from '../flows/server.ts';
import { observerHealth } from '../flows/health.ts';
import { healthService, observerService } from '../flows/proto.ts';
import { claimUnixSocket } from '../io/unix-socket.ts';
import type { GetFlowsRequest, GetFlowsResponse, Namespace, ObserverNode, ServerStatus } from '../flows/types.ts';
import type { Timed } from './merge.ts';
import { agentEventsKind, type Call, type FanOutOptions, fanOut, flowsKind, type Kind } from './streams.ts';
import { type AggregateOptions, namespaces, nodes, status } from './unary.ts';

export { RELAY_NAME } from './streams.ts';

export interface RelayServerOptions extends FanOutOptions, AggregateOptions {
  /** Unix socket and/or TCP host:port to serve on. */
  socket?: string;
  address?: string;
  tls?: { cert: Buffer; key: Buffer; clientCa?: Buffer };
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
    server.addService(
      healthService().service,
      observerHealth(() => self!.followers),
    );
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
    await closeGracefully(this.server, this.followers);
    if (this.socket) fs.rmSync(this.socket, { force: true });
  }
}
