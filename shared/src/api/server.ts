// The agent's REST/JSON API on a unix socket (mode 0660). Thin: validate, call the core, map errors
// (the kind of a MembraneError picks the status in shared/src/errors.ts; anything else is a 500).
import http from 'node:http';
import express, { type Request, type Response, type NextFunction } from 'express';
import type { Core } from '../core.ts';
import type { AgentStatus, ApiErrorBody } from '../types.ts';
import type { Logger } from '../log.ts';
import { kindInfo, MembraneError } from '../errors.ts';
import { listenUnix } from '../io/unix-socket.ts';
import { describeCandidate, findEndpoint, matchEndpoints } from '../endpoint/lookup.ts';
import { EndpointRequestSchema, LabelsSchema, NetworkSpecSchema, describeZodError, zodField } from './schemas.ts';

export interface ApiDeps {
  core: Core;
  status: () => AgentStatus;
  version: string;
  check: (containerId: string, ifName: string) => string[];
  log: Logger;
  /** Routers of agent extensions (policy, ...), mounted before the 404 handler. */
  routers?: { path: string; router: express.Router }[];
}

export function createApp(d: ApiDeps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.use(express.json({ limit: '1mb' }));

  app.get('/v1/healthz', (_req, res) => {
    res.json({ ok: true });
  });
  app.get('/v1/version', (_req, res) => {
    res.json({ version: d.version });
  });
  app.get('/v1/status', (_req, res) => {
    res.json(d.status());
  });

  app.post('/v1/endpoints', async (req, res) => {
    const body = parse(EndpointRequestSchema, req.body);
    const existed = d.core.endpoints.get(body.containerId, body.ifName);
    const ep = await d.core.endpoints.create(body);
    res.status(existed ? 200 : 201).json(ep);
  });
  app.get('/v1/endpoints', (req, res) => {
    const containerId = typeof req.query.containerId === 'string' ? req.query.containerId : undefined;
    // ref: any name a user sees (endpoint/lookup.ts); every endpoint it fits.
    if (typeof req.query.ref === 'string') {
      res.json({
        items: matchEndpoints(
          d.core.endpoints.list(),
          req.query.ref,
          typeof req.query.ifName === 'string' ? req.query.ifName : undefined,
        ),
      });
      return;
    }
    res.json({ items: d.core.endpoints.list({ containerId }) });
  });
  /** One endpoint by any name a user sees: 404 when none fits, 409 listing the candidates when several do. */
  app.get('/v1/endpoints/find', (req, res) => {
    const ref = typeof req.query.ref === 'string' ? req.query.ref : '';
    if (!ref)
      throw new MembraneError(
        'bad_request',
        'ref is required: an endpoint id, container id (or prefix), container name, Docker endpoint id or namespace/pod',
        { field: 'ref' },
      );
    const ifName = typeof req.query.ifName === 'string' && req.query.ifName ? req.query.ifName : undefined;
    const r = findEndpoint(d.core.endpoints.list(), ref, ifName);
    if (r.kind === 'found') {
      res.json(r.endpoint);
      return;
    }
    const what = `"${ref}"${ifName ? ` (interface ${ifName})` : ''}`;
    if (r.kind === 'none')
      throw new MembraneError(
        'endpoint_not_found',
        `no endpoint is named ${what}: give an endpoint id, a container id or a unique prefix of one, a container name, a Docker endpoint id or namespace/pod`,
      );
    throw new MembraneError(
      'endpoint_ambiguous',
      `${what} fits ${r.candidates.length} endpoints; name one by its id:\n${r.candidates.map((e) => `  ${describeCandidate(e)}`).join('\n')}`,
      {
        details: {
          candidates: r.candidates.map((e) => ({
            id: e.id,
            containerId: e.containerId,
            ifName: e.ifName,
            network: e.network,
            ...(e.docker ? { docker: e.docker } : {}),
          })),
        },
      },
    );
  });
  app.get('/v1/endpoints/:containerId/:ifName', (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const ep = d.core.endpoints.get(containerId, ifName);
    if (!ep) throw new MembraneError('endpoint_not_found', `endpoint ${containerId}/${ifName} does not exist`);
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

  app.get('/v1/networks', (_req, res) => {
    res.json({ items: d.core.networks.list() });
  });
  app.get('/v1/networks/:name', (req, res) => {
    const n = d.core.networks.get(req.params.name);
    if (!n) throw new MembraneError('network_not_found', `network "${req.params.name}" does not exist`);
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

  app.get('/v1/ipam', (_req, res) => {
    res.json({ pools: d.core.ipam.pools(), external: d.core.ipam.external?.() ?? [] });
  });
  for (const r of d.routers ?? []) app.use(r.path, r.router);

  app.use((req, _res, next) => next(new MembraneError('not_found', `no such API path: ${req.method} ${req.path}`)));
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const { status, body } = toApiError(err);
    if (status >= 500) d.log.error({ err, method: req.method, path: req.path }, 'API request failed');
    else d.log.debug({ ...body.error, method: req.method, path: req.path }, 'API request rejected');
    res.status(status).json(body);
  });
  return app;
}

function parse<T>(
  schema: { safeParse(v: unknown): { success: true; data: T } | { success: false; error: import('zod').ZodError } },
  body: unknown,
): T {
  const r = schema.safeParse(body ?? {});
  if (!r.success)
    throw new MembraneError('bad_request', `invalid request: ${describeZodError(r.error)}`, { field: zodField(r.error) });
  return r.data;
}

/** The answer for any error a handler threw (the API's one error mapping; extensions' routers use it too). */
export function toApiError(err: unknown): { status: number; body: ApiErrorBody } {
  const e = fromBodyParser(err) ?? err;
  if (e instanceof MembraneError) {
    const error: ApiErrorBody['error'] = { code: e.code, message: e.message };
    if (e.field !== undefined) error.field = e.field;
    if (e.details !== undefined) error.details = e.details;
    return { status: kindInfo(e.code).http, body: { error } };
  }
  return { status: 500, body: { error: { code: 'internal', message: (e as Error)?.message ?? String(e) } } };
}

/** express's body parsers fail with typed errors of their own: say what was wrong with the body. */
function fromBodyParser(err: unknown): MembraneError | undefined {
  const e = err as { type?: unknown; message?: string; limit?: number };
  if (e?.type === 'entity.parse.failed')
    return new MembraneError('bad_request', `request body is not valid JSON: ${e.message}`, { field: 'body' });
  if (e?.type === 'entity.too.large') {
    const limit = typeof e.limit === 'number' ? ` (${Math.round(e.limit / 1024 / 1024)} MiB)` : '';
    return new MembraneError('payload_too_large', `the request body is larger than the API accepts${limit}`, { field: 'body' });
  }
  return undefined;
}

/** Serves the app on the agent's socket (never over a live agent's). */
export function serveApi(app: express.Express, socketPath: string): Promise<http.Server> {
  return listenUnix(http.createServer(app), socketPath, { who: 'another membrane agent' });
}
