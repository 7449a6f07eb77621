// Client for the agent's REST API on its unix socket. node:http only, no native code: the CNI
// executable bundles this file and must stay small and fast to start.
import http from 'node:http';
import type { AgentStatus, ApiErrorBody, Endpoint, EndpointRequest, IpamPoolView, Network, NetworkSpec } from '../types.ts';
import { isErrorKind, type ErrorKind } from '../errors.ts';

export const DEFAULT_SOCKET = '/run/membrane/agent.sock';

/** The agent answered with an error body. */
export class AgentApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorKind,
    message: string,
    readonly details?: unknown,
    readonly field?: string,
  ) {
    super(message);
    this.name = 'AgentApiError';
  }
}

/**
 * The one decoder of agent API answers (node:http here, raw HTTP over node:net in membrane-cni): the
 * parsed JSON body of a success, an AgentApiError for an error status or a body that is not JSON.
 */
export function decodeApiAnswer<T>(status: number, text: string): T {
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    throw new AgentApiError(status || 500, 'internal', `agent sent a non-JSON answer (HTTP ${status}): ${text.slice(0, 200)}`);
  }
  if (status >= 200 && status < 400) return parsed as T;
  const err = (parsed as Partial<ApiErrorBody> | null)?.error;
  const code = isErrorKind(err?.code) ? err.code : 'internal';
  const message = typeof err?.message === 'string' && err.message ? err.message : `HTTP ${status}`;
  throw new AgentApiError(status, code, message, err?.details, typeof err?.field === 'string' ? err.field : undefined);
}

/** What a failed connection to the agent's socket means, in words. */
export function describeConnectError(e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'ENOENT':
      return 'no socket there (is membrane-agent running?)';
    case 'ECONNREFUSED':
      return 'connection refused (the agent is not listening)';
    case 'EACCES':
      return 'permission denied on the socket';
    default:
      return e.code ? `${e.code}: ${e.message}` : e.message;
  }
}

/** The agent could not be reached at all (no socket, refused, timed out). */
export class AgentUnreachableError extends Error {
  constructor(
    readonly socketPath: string,
    readonly reason: string,
  ) {
    super(`cannot reach the membrane agent at ${socketPath}: ${reason}`);
    this.name = 'AgentUnreachableError';
  }
}

export interface ClientOptions {
  socketPath?: string;
  timeoutMs?: number;
}

/** A request body sent as is (policy text), instead of the JSON encoding of `body`. */
export interface RequestOptions {
  contentType?: string;
  timeoutMs?: number;
}

export class AgentClient {
  readonly socketPath: string;
  private readonly timeoutMs: number;

  constructor(opts: ClientOptions = {}) {
    this.socketPath = opts.socketPath ?? DEFAULT_SOCKET;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  healthz(): Promise<{ ok: boolean }> {
    return this.request('GET', '/v1/healthz');
  }
  version(): Promise<{ version: string }> {
    return this.request('GET', '/v1/version');
  }
  status(): Promise<AgentStatus> {
    return this.request('GET', '/v1/status');
  }

  createEndpoint(req: EndpointRequest): Promise<Endpoint> {
    return this.request('POST', '/v1/endpoints', req);
  }
  /** All endpoints, those of a container id, or every endpoint a user-facing name fits (`ref`). */
  async listEndpoints(filter: { containerId?: string; ref?: string; ifName?: string } = {}): Promise<Endpoint[]> {
    const q = new URLSearchParams();
    if (filter.ref) q.set('ref', filter.ref);
    else if (filter.containerId) q.set('containerId', filter.containerId);
    if (filter.ifName) q.set('ifName', filter.ifName);
    const qs = q.toString();
    return (await this.request<{ items: Endpoint[] }>('GET', `/v1/endpoints${qs ? `?${qs}` : ''}`)).items;
  }
  /** One endpoint by any name a user sees (endpoint id, container id or prefix, container name, Docker
   *  endpoint id, namespace/pod): endpoint_not_found, or endpoint_ambiguous listing the candidates. */
  findEndpoint(ref: string, ifName?: string): Promise<Endpoint> {
    const q = new URLSearchParams({ ref, ...(ifName ? { ifName } : {}) });
    return this.request('GET', `/v1/endpoints/find?${q}`);
  }
  getEndpoint(containerId: string, ifName: string): Promise<Endpoint> {
    return this.request('GET', endpointPath(containerId, ifName));
  }
  deleteEndpoint(containerId: string, ifName: string): Promise<{ deleted: boolean }> {
    return this.request('DELETE', endpointPath(containerId, ifName));
  }

  async listNetworks(): Promise<Network[]> {
    return (await this.request<{ items: Network[] }>('GET', '/v1/networks')).items;
  }
  createNetwork(spec: NetworkSpec): Promise<Network> {
    return this.request('POST', '/v1/networks', spec);
  }
  deleteNetwork(name: string): Promise<{ deleted: boolean }> {
    return this.request('DELETE', `/v1/networks/${encodeURIComponent(name)}`);
  }

  async ipam(): Promise<IpamPoolView[]> {
    return (await this.request<{ pools: IpamPoolView[] }>('GET', '/v1/ipam')).pools;
  }

  /** Every call is idempotent on the agent (a repeated create returns the same endpoint), so a
   *  connection reset before any answer is retried once. */
  async request<T>(method: string, path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    try {
      return await this.requestOnce<T>(method, path, body, opts);
    } catch (e) {
      if (e instanceof AgentUnreachableError && /EPIPE|ECONNRESET/.test(e.reason))
        return this.requestOnce<T>(method, path, body, opts);
      throw e;
    }
  }

  private requestOnce<T>(method: string, path: string, body: unknown, opts: RequestOptions): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(opts.contentType ? String(body) : JSON.stringify(body));
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    return new Promise<T>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          // A fresh connection per call: no keep-alive socket the agent may be closing as we reuse it.
          agent: false,
          method,
          path,
          timeout: timeoutMs,
          headers: payload ? { 'content-type': opts.contentType ?? 'application/json', 'content-length': payload.length } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            try {
              resolve(decodeApiAnswer<T>(res.statusCode ?? 500, Buffer.concat(chunks).toString('utf8')));
            } catch (e) {
              reject(e);
            }
          });
          res.on('error', (e) => reject(new AgentUnreachableError(this.socketPath, e.message)));
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', (e: NodeJS.ErrnoException) => reject(new AgentUnreachableError(this.socketPath, describeConnectError(e))));
      if (payload) req.write(payload);
      req.end();
    });
  }
}

function endpointPath(containerId: string, ifName: string): string {
  return `/v1/endpoints/${encodeURIComponent(containerId)}/${encodeURIComponent(ifName)}`;
}
