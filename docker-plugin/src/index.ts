// The Docker plugin hosted by the agent: libnetwork's remote NetworkDriver + IpamDriver on
// `${pluginDir}/${name}.sock` (dockerd finds it there by name). Every call is `POST /<Interface>.<Method>`
// with a JSON body (empty for the handshake calls) and no Content-Type; answers are JSON, failures
// HTTP 500 with the message in "Err" (what dockerd reads on a non-200) and, for IPAM, also "Error".
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import express, { type Request, type Response, type NextFunction } from 'express';
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { Core } from '../../shared/src/core.ts';
import { FileStore } from '../../shared/src/store/index.ts';
import { listenUnix } from '../../shared/src/io/unix-socket.ts';
import { DockerState } from './state.ts';
import * as S from './schemas.ts';
import * as nd from './network-driver.ts';
import * as ipam from './ipam-driver.ts';
import { PluginError } from './errors.ts';

export interface DockerPluginOptions {
  core: Core;
  /** Plugin name = Docker driver name (`docker network create -d NAME`). */
  name: string;
  /** Where dockerd looks for plugin sockets; default /run/docker/plugins. */
  pluginDir?: string;
  log: Logger;
  stateDir: string;
}

export interface DockerPlugin {
  socketPath: string;
  close(): Promise<void>;
}

export const CONTENT_TYPE = 'application/vnd.docker.plugins.v1.1+json';
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** libnetwork's largest requests (CreateNetwork with options and IPAM data) are a few KiB. */
const BODY_LIMIT = '1mb';

type Handler = (ctx: nd.DriverContext, body: unknown) => unknown;
interface Route {
  handler: Handler;
  ipam: boolean;
}

function route<T extends z.ZodTypeAny>(schema: T, fn: (ctx: nd.DriverContext, b: z.infer<T>) => unknown, isIpam = false): Route {
  return {
    ipam: isIpam,
    handler: (ctx, body) => {
      const r = schema.safeParse(body);
      if (!r.success) throw new BadRequest(S.describeZodError(r.error));
      return fn(ctx, r.data);
    },
  };
}

class BadRequest extends Error {}

export function routes(): Record<string, Route> {
  return {
    '/Plugin.Activate': route(S.EmptySchema, () => ({ Implements: ['NetworkDriver', 'IpamDriver'] })),
    '/NetworkDriver.GetCapabilities': route(S.EmptySchema, () => ({ Scope: 'local', ConnectivityScope: 'local' })),
    '/NetworkDriver.CreateNetwork': route(S.CreateNetworkSchema, nd.createNetwork),
    '/NetworkDriver.DeleteNetwork': route(S.NetworkOnlySchema, (c, b) => nd.deleteNetwork(c, b.NetworkID)),
    '/NetworkDriver.CreateEndpoint': route(S.CreateEndpointSchema, nd.createEndpoint),
    '/NetworkDriver.EndpointOperInfo': route(S.EndpointOnlySchema, (c, b) => nd.endpointOperInfo(c, b.EndpointID)),
    '/NetworkDriver.DeleteEndpoint': route(S.EndpointOnlySchema, (c, b) => nd.deleteEndpoint(c, b.NetworkID, b.EndpointID)),
    '/NetworkDriver.Join': route(S.JoinSchema, nd.join),
    '/NetworkDriver.Leave': route(S.EndpointOnlySchema, (c, b) => nd.leave(c, b.EndpointID)),
    // No port publishing or NAT: the L3 datapath routes; these are acknowledged so dockerd goes on.
    '/NetworkDriver.ProgramExternalConnectivity': route(S.ProgramExternalSchema, () => ({})),
    '/NetworkDriver.RevokeExternalConnectivity': route(S.EndpointOnlySchema, () => ({})),
    '/NetworkDriver.DiscoverNew': route(S.DiscoverySchema, () => ({})),
    '/NetworkDriver.DiscoverDelete': route(S.DiscoverySchema, () => ({})),
    '/NetworkDriver.AllocateNetwork': route(S.AllocateNetworkSchema, (_c, b) => ({ Options: b.Options })),
    '/NetworkDriver.FreeNetwork': route(S.NetworkOnlySchema, () => ({})),
    '/IpamDriver.GetCapabilities': route(S.EmptySchema, () => ipam.capabilities(), true),
    '/IpamDriver.GetDefaultAddressSpaces': route(S.EmptySchema, (c) => ipam.defaultAddressSpaces(c.name), true),
    '/IpamDriver.RequestPool': route(S.RequestPoolSchema, ipam.requestPool, true),
    '/IpamDriver.ReleasePool': route(S.ReleasePoolSchema, (c, b) => ipam.releasePool(c, b.PoolID), true),
    '/IpamDriver.RequestAddress': route(S.RequestAddressSchema, ipam.requestAddress, true),
    '/IpamDriver.ReleaseAddress': route(S.ReleaseAddressSchema, (c, b) => ipam.releaseAddress(c, b.PoolID, b.Address), true),
  };
}

/** The express app alone (unit tests drive it over a socket of their own). */
export function createPluginApp(ctx: nd.DriverContext): express.Express {
  const table = routes();
  const app = express();
  app.disable('x-powered-by');
  // dockerd sends no Content-Type: take every body as bytes and parse it ourselves.
  app.use(express.raw({ type: () => true, limit: BODY_LIMIT }));
  app.use(async (req: Request, res: Response) => {
    const started = process.hrtime.bigint();
    const r = req.method === 'POST' ? table[req.path] : undefined;
    if (!r) {
      ctx.log.debug({ method: req.method, path: req.path }, 'unsupported plugin call');
      send(res, 404, { Err: `${ctx.name}: unsupported plugin call ${req.method} ${req.path}` });
      return;
    }
    let status = 200;
    let out: unknown;
    try {
      const text = Buffer.isBuffer(req.body) ? req.body.toString('utf8').trim() : '';
      let body: unknown = {};
      if (text && text !== 'null') {
        try {
          body = JSON.parse(text);
        } catch {
          throw new BadRequest('body is not valid JSON');
        }
      }
      out = await r.handler(ctx, body);
    } catch (err) {
      status = 500;
      const known = err instanceof PluginError || err instanceof BadRequest;
      const call = req.path.slice(1);
      const message =
        err instanceof BadRequest
          ? `${ctx.name}: invalid ${call} request: ${err.message}`
          : `${ctx.name}: ${(err as Error)?.message ?? String(err)}`;
      if (known) ctx.log.info({ call, message }, 'plugin call refused');
      else ctx.log.error({ call, err }, 'plugin call failed');
      out = r.ipam ? { Err: message, Error: message } : { Err: message };
    }
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    ctx.log.debug({ call: req.path.slice(1), status, ms: Math.round(ms * 10) / 10 }, 'plugin call');
    send(res, status, out ?? {});
  });
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    // The body reader's own failures: too large (413, before any of it is read into memory), cut off.
    const type = (err as { type?: unknown })?.type;
    const status = type === 'entity.too.large' ? 413 : typeof type === 'string' && type.startsWith('request.') ? 400 : 500;
    const message =
      status === 413
        ? `${ctx.name}: the ${req.path.slice(1)} request body is larger than the plugin accepts (${BODY_LIMIT})`
        : `${ctx.name}: ${(err as Error)?.message ?? String(err)}`;
    if (status === 500) ctx.log.error({ err, call: req.path.slice(1) }, 'plugin call failed');
    else ctx.log.info({ call: req.path.slice(1), message }, 'plugin call refused');
    send(res, status, { Err: message });
  });
  return app;
}

function send(res: Response, status: number, body: unknown): void {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': CONTENT_TYPE, 'Content-Length': data.length });
  res.end(data);
}

export async function startDockerPlugin(opts: DockerPluginOptions): Promise<DockerPlugin> {
  if (!NAME.test(opts.name)) throw new Error(`docker plugin name "${opts.name}" is invalid (letters, digits, _ . -)`);
  const pluginDir = opts.pluginDir ?? '/run/docker/plugins';
  const socketPath = path.join(pluginDir, `${opts.name}.sock`);
  const log = opts.log.child({ plugin: opts.name });
  const state = await DockerState.open(new FileStore(path.join(opts.stateDir, 'docker', opts.name)));
  const ctx: nd.DriverContext = { core: opts.core, state, log, name: opts.name };
  await reconcile(ctx);

  const server = await listenUnix(http.createServer(createPluginApp(ctx)), socketPath, {
    who: `another process (Docker plugin "${opts.name}")`,
  });
  log.info(
    { socket: socketPath, networks: state.networks.size, endpoints: state.endpoints.size, pools: state.pools.size },
    'docker plugin listening',
  );

  let closed = false;
  return {
    socketPath,
    async close() {
      if (closed) return;
      closed = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      });
      fs.rmSync(socketPath, { force: true });
      await state.flush();
      log.info({ socket: socketPath }, 'docker plugin stopped');
    },
  };
}

/** After a restart: core networks our state needs are re-created; endpoints the core dropped are forgotten. */
async function reconcile(ctx: nd.DriverContext): Promise<void> {
  for (const n of ctx.state.networks.values()) {
    if (ctx.core.networks.get(n.coreName)) continue;
    try {
      await ctx.core.networks.create({
        name: n.coreName,
        subnets: n.subnets.map((s) => s.pool),
        gateways: n.subnets.map((s) => s.gateway).filter(Boolean),
        options: { 'docker.network-id': n.networkId },
        ...(n.mtu ? { mtu: n.mtu } : {}),
      });
      ctx.log.warn({ network: n.networkId, core: n.coreName }, 're-created a core network the agent had lost');
    } catch (err) {
      ctx.log.error({ err, network: n.networkId, core: n.coreName }, 'cannot re-create the core network of a Docker network');
    }
  }
  for (const ep of [...ctx.state.endpoints.values()]) {
    if (!ctx.core.endpoints.get(ep.endpointId, ep.ifName)) {
      ctx.log.info({ endpoint: ep.endpointId }, 'forgetting a Docker endpoint the agent no longer has');
      await ctx.state.deleteEndpoint(ep.endpointId);
    }
  }
  // Endpoints whose record write a crash lost (records are written after answering dockerd).
  for (const ep of ctx.core.endpoints.list()) {
    if (ep.docker && ep.metadata['docker:plugin'] === ctx.name && !ctx.state.endpoints.has(ep.docker.endpointId))
      nd.endpointRecord(ctx, ep.docker.endpointId);
  }
  await ctx.state.flush();
}
