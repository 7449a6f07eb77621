// Observer API client (CLI, tests, benchmark): a unix socket path or a TCP host:port.
import * as grpc from '@grpc/grpc-js';
import { observerService } from './proto.ts';
import type { GetFlowsRequest, GetFlowsResponse, ServerStatus } from './types.ts';

export const DEFAULT_OBSERVER_SOCKET = '/run/membrane/observer.sock';

export class ObserverUnreachableError extends Error {
  constructor(readonly target: string, cause: string) {
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

interface RawClient extends grpc.Client {
  getFlows(req: GetFlowsRequest, metadata?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<GetFlowsResponse>;
  serverStatus(req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: Partial<ServerStatus>) => void): void;
}

export class ObserverClient {
  private readonly raw: RawClient;
  readonly target: string;

  constructor(socketOrAddress: string) {
    this.target = observerTarget(socketOrAddress);
    const { Client } = observerService();
    this.raw = new Client(this.target, grpc.credentials.createInsecure()) as unknown as RawClient;
  }

  status(timeoutMs = 10_000): Promise<ServerStatus> {
    return new Promise((resolve, reject) => {
      this.raw.serverStatus({}, { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) return reject(this.explain(err));
        // Unset proto3 scalars arrive absent: fill the zeros in.
        resolve({
          numFlows: res.numFlows ?? 0, maxFlows: res.maxFlows ?? 0, seenFlows: res.seenFlows ?? 0, uptimeNs: res.uptimeNs ?? 0,
          version: res.version ?? '', flowsRate: res.flowsRate ?? 0, nodeName: res.nodeName ?? '', lostEvents: res.lostEvents ?? 0,
          lostEventsAgent: res.lostEventsAgent ?? 0, flowEventsEnabled: res.flowEventsEnabled ?? false,
        });
      });
    });
  }

  /** Streams responses; `cancel()` ends a follow. The iterator throws ObserverUnreachableError or the
   *  server's error (e.g. INVALID_ARGUMENT for a bad filter). */
  flows(req: GetFlowsRequest): { responses: AsyncIterable<GetFlowsResponse>; cancel(): void } {
    const stream = this.raw.getFlows(req);
    const explain = (e: unknown) => this.explain(e as grpc.ServiceError);
    let cancelled = false;
    async function* iterate(): AsyncGenerator<GetFlowsResponse> {
      try {
        for await (const res of stream) yield res as GetFlowsResponse;
      } catch (e) {
        if (cancelled && (e as grpc.ServiceError).code === grpc.status.CANCELLED) return;
        throw explain(e);
      }
    }
    return { responses: iterate(), cancel: () => { cancelled = true; stream.cancel(); } };
  }

  /** All responses of a non-follow request. */
  async collect(req: GetFlowsRequest): Promise<GetFlowsResponse[]> {
    const out: GetFlowsResponse[] = [];
    for await (const r of this.flows({ ...req, follow: false }).responses) out.push(r);
    return out;
  }

  close(): void {
    this.raw.close();
  }

  private explain(err: grpc.ServiceError): Error {
    // grpc-js appends resolver internals ("Resolution note: ..."): keep the part people can act on.
    if (err.code === grpc.status.UNAVAILABLE) return new ObserverUnreachableError(this.target, (err.details || err.message).replace(/\s*Resolution note:.*$/s, ''));
    const e = new Error(err.details || err.message);
    (e as Error & { code?: number }).code = err.code;
    return e;
  }
}
