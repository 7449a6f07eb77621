// The agent's REST/JSON API on a unix socket (mode 0660). Thin: validate, call the core, map errors.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import http from 'node:http';
import express, { type Request, type Response, type NextFunction } from 'express';
import type { Core } from '../core.ts';
import type { AgentStatus, ApiErrorCode } from '../types.ts';
import type { Logger } from '../log.ts';
import { EndpointRequestSchema, LabelsSchema, NetworkSpecSchema, describeZodError } from './schemas.ts';

export interface ApiDeps {
  core: Core;
  status: () => AgentStatus;
  version: string;
  check: (containerId: string, ifName: string) => string[];
  log: Logger;
  /** Routers of agent extensions (policy, ...), mounted before the 404 handler. */
  routers?: { path: string; router: express.Router }[];
}

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: ApiErrorCode, message: string) { super(message); }
}

const STATUS_OF: Record<string, number> = {
  bad_request: 400, netns_not_found: 400, address_out_of_range: 400,
  network_not_found: 404, endpoint_not_found: 404, not_found: 404,
  network_exists: 409, network_in_use: 409, endpoint_exists: 409, address_in_use: 409, pool_exhausted: 409,
};

export function createApp(d: ApiDeps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.use(express.json({ limit: '1mb' }));

  app.get('/v1/healthz', (_req, res) => { res.json({ ok: true }); });
  app.get('/v1/version', (_req, res) => { res.json({ version: d.version }); });
  app.get('/v1/status', (_req, res) => { res.json(d.status()); });

  app.post('/v1/endpoints', async (req, res) => {
    const body = parse(EndpointRequestSchema, req.body);
    const existed = d.core.endpoints.get(body.containerId, body.ifName);
    const ep = await d.core.endpoints.create(body);
    res.status(existed ? 200 : 201).json(ep);
  });
  app.get('/v1/endpoints', (req, res) => {
    const containerId = typeof req.query.containerId === 'string' ? req.query.containerId : undefined;
    res.json({ items: d.core.endpoints.list({ containerId }) });
  });
  app.get('/v1/endpoints/:containerId/:ifName', (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const ep = d.core.endpoints.get(containerId, ifName);
    if (!ep) throw new ApiError(404, 'endpoint_not_found', `endpoint ${containerId}/${ifName} does not exist`);
    if (req.query.check !== undefined) {
      const problems = d.check(containerId, ifName);
      res.json({ endpoint: ep, healthy: problems.length === 0, problems });
      return;
    }
    res.json(ep);
  });
  app.put('/v1/endpoints/:containerId/:ifName/labels', async (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const { labels } = parse(LabelsSchema, req.body);
    res.json(await d.core.endpoints.updateLabels(containerId, ifName, labels));
  });
  app.delete('/v1/endpoints/:containerId/:ifName', async (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    res.json({ deleted: await d.core.endpoints.delete(containerId, ifName) });
  });

  app.get('/v1/networks', (_req, res) => { res.json({ items: d.core.networks.list() }); });
  app.get('/v1/networks/:name', (req, res) => {
    const n = d.core.networks.get(req.params.name);
    if (!n) throw new ApiError(404, 'network_not_found', `network "${req.params.name}" does not exist`);
    res.json(n);
  });
  app.post('/v1/networks', async (req, res) => {
    const spec = parse(NetworkSpecSchema, req.body);
    const existed = d.core.networks.get(spec.name);
    res.status(existed ? 200 : 201).json(await d.core.networks.create(spec));
  });
  app.delete('/v1/networks/:name', async (req, res) => {
    res.json({ deleted: await d.core.networks.delete(req.params.name) });
  });

  app.get('/v1/ipam', (_req, res) => { res.json({ pools: d.core.ipam.pools() }); });
  for (const r of d.routers ?? []) app.use(r.path, r.router);

  app.use((req, _res, next) => next(new ApiError(404, 'not_found', `no such API path: ${req.method} ${req.path}`)));
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const { status, code, message } = toApiError(err);
    if (status >= 500) d.log.error({ err, method: req.method, path: req.path }, 'API request failed');
    else d.log.debug({ code, message, method: req.method, path: req.path }, 'API request rejected');
    res.status(status).json({ error: { code, message } });
  });
  return app;
}

function parse<T>(schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: import('zod').ZodError } }, body: unknown): T {
  const r = schema.safeParse(body ?? {});
  if (!r.success) throw new ApiError(400, 'bad_request', `invalid request: ${describeZodError(r.error)}`);
  return r.data;
}

export function toApiError(err: unknown): { status: number; code: ApiErrorCode; message: string } {
  if (err instanceof ApiError) return { status: err.status, code: err.code, message: err.message };
  const e = err as { code?: unknown; message?: string; type?: string; status?: number };
  if (e?.type === 'entity.parse.failed') return { status: 400, code: 'bad_request', message: `request body is not valid JSON: ${e.message}` };
  if (typeof e?.code === 'string' && e.code in STATUS_OF) {
    return { status: STATUS_OF[e.code], code: e.code as ApiErrorCode, message: e.message ?? e.code };
  }
  return { status: 500, code: 'internal', message: e?.message ?? String(err) };
}

/** Listens on a unix socket, replacing a stale socket file but never a live agent's. */
export async function listenUnix(app: express.Express, socketPath: string): Promise<http.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  if (fs.existsSync(socketPath)) {
    if (await isLive(socketPath)) throw new Error(`another agent is already serving ${socketPath}`);
    fs.unlinkSync(socketPath);
  }
  const server = http.createServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => { server.off('error', reject); resolve(); });
  });
  fs.chmodSync(socketPath, 0o660);
  return server;
}

function isLive(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}
