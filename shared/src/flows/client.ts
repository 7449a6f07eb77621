// Observer API client (CLI, tests, benchmark): a unix socket path or a TCP host:port.
import * as grpc from '@grpc/grpc-js';
import { healthService, observerService, OBSERVER_SERVICE } from './proto.ts';
import type {
  GetAgentEventsRequest,
  GetAgentEventsResponse,
  GetFlowsRequest,
  GetFlowsResponse,
  Namespace,
  ObserverNode,
  ServerStatus,
} from './types.ts';

export const DEFAULT_OBSERVER_SOCKET = '/run/membrane/observer.sock';

export class ObserverUnreachableError extends Error {
  constructor(
    readonly target: string,
    cause: string,
  ) {
    super(`cannot reach the flow observer at ${target}: ${cause}`);
    this.name = 'ObserverUnreachableError';
  }
}

/** "/run/x.sock" -> "unix:/run/x.sock"; "host:port" and "unix:..." stay as they are. */
export function observerTarget(socketOrAddress: string): string {
  if (socketOrAddress.startsWith('unix:') || socketOrAddress.startsWith('dns:')) return socketOrAddress;
  if (socketOrAddress.includes('/')) return `unix:${socketOrAddress}`;
  return socketOrAddress;
}

type Unary<Res> = (req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Res) => void) => void;

interface RawClient extends grpc.Client {
  getFlows(req: GetFlowsRequest, metadata?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<GetFlowsResponse>;
  getAgentEvents(
    req: GetAgentEventsRequest,
    metadata?: grpc.Metadata,
    opts?: grpc.CallOptions,
  ): grpc.ClientReadableStream<GetAgentEventsResponse>;
  serverStatus: Unary<Partial<ServerStatus>>;
  getNodes: Unary<{ nodes?: ObserverNode[] }>;
  getNamespaces: Unary<{ namespaces?: Namespace[] }>;
}

interface RawHealth extends grpc.Client {
  check: Unary<{ status?: string }>;
}

/** TLS towards an observer (a relay's connections to the agents, `membrane observe --tls`): the CA
 *  (absent: the system's), an optional client certificate, and the name the server's certificate
 *  must carry when it is not the address's. */
export interface ObserverTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName?: string;
}

export class ObserverClient {
  private readonly raw: RawClient;
  private readonly health: RawHealth;
  readonly target: string;

  constructor(socketOrAddress: string, opts: { tls?: ObserverTls } = {}) {
    this.target = observerTarget(socketOrAddress);
    const { Client } = observerService();
    const tls = opts.tls;
    const creds = () =>
      tls ? grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null) : grpc.credentials.createInsecure();
    const options: grpc.ChannelOptions = tls?.serverName
      ? { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName }
      : {};
    this.raw = new Client(this.target, creds(), options) as unknown as RawClient;
    // Same target, same channel options: grpc-js shares the connection between the two clients.
    this.health = new (healthService().Client)(this.target, creds(), options) as unknown as RawHealth;
  }

  private unary<Res>(fn: Unary<Res>, req: object, timeoutMs: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      fn.call(this.raw, req, { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(this.explain(err)) : resolve(res),
      );
    });
  }

  async status(timeoutMs = 10_000): Promise<ServerStatus> {
    const res = await this.unary(this.raw.serverStatus, {}, timeoutMs);
    // Unset proto3 scalars arrive absent: fill the zeros in.
    return {
      ...res,
      numFlows: res.numFlows ?? 0,
      maxFlows: res.maxFlows ?? 0,
      seenFlows: res.seenFlows ?? 0,
      uptimeNs: res.uptimeNs ?? 0,
      version: res.version ?? '',
      flowsRate: res.flowsRate ?? 0,
      membrane: { nodeName: '', lostEventsDatapath: 0, lostEventsAgent: 0, flowEventsEnabled: false, ...res.membrane },
    };
  }

  async nodes(timeoutMs = 10_000): Promise<ObserverNode[]> {
    return (await this.unary(this.raw.getNodes, {}, timeoutMs)).nodes ?? [];
  }

  async namespaces(timeoutMs = 10_000): Promise<Namespace[]> {
    return (await this.unary(this.raw.getNamespaces, {}, timeoutMs)).namespaces ?? [];
  }

  /** The standard gRPC health check for the observer service: "SERVING" when it is up. */
  healthCheck(timeoutMs = 10_000): Promise<string> {
    return new Promise((resolve, reject) => {
      this.health.check({ service: OBSERVER_SERVICE }, { deadline: Date.now() + timeoutMs }, (err, res) =>
        err ? reject(this.explain(err)) : resolve(res.status ?? 'UNKNOWN'),
      );
    });
  }

  /** Streams responses; `cancel()` ends a follow. The iterator throws ObserverUnreachableError or the
   *  server's error (e.g. INVALID_ARGUMENT for a bad filter). */
  flows(req: GetFlowsRequest): { responses: AsyncIterable<GetFlowsResponse>; cancel(): void } {
    return this.stream(this.raw.getFlows(req));
  }

  agentEvents(req: GetAgentEventsRequest): { responses: AsyncIterable<GetAgentEventsResponse>; cancel(): void } {
    return this.stream(this.raw.getAgentEvents(req));
  }

  private stream<T>(stream: grpc.ClientReadableStream<T>): { responses: AsyncIterable<T>; cancel(): void } {
    const explain = (e: unknown) => this.explain(e as grpc.ServiceError);
    let cancelled = false;
    async function* iterate(): AsyncGenerator<T> {
      try {
        for await (const res of stream) yield res as T;
      } catch (e) {
        if (cancelled && (e as grpc.ServiceError).code === grpc.status.CANCELLED) return;
        throw explain(e);
      }
    }
    return {
      responses: iterate(),
      cancel: () => {
        cancelled = true;
        stream.cancel();
      },
    };
  }

  /** All responses of a non-follow request. */
  async collect(req: GetFlowsRequest): Promise<GetFlowsResponse[]> {
    const out: GetFlowsResponse[] = [];
    for await (const r of this.flows({ ...req, follow: false }).responses) out.push(r);
    return out;
  }

  close(): void {
    this.raw.close();
    this.health.close();
  }

  private explain(err: grpc.ServiceError): Error {
    // grpc-js appends resolver internals ("Resolution note: ..."): keep the part people can act on.
    if (err.code === grpc.status.UNAVAILABLE)
      return new ObserverUnreachableError(this.target, (err.details || err.message).replace(/\s*Resolution note:.*$/s, ''));
    const e = new Error(err.details || err.message);
    (e as Error & { code?: number }).code = err.code;
    return e;
  }
}
