// /v1/policy and /v1/identities: the policy engine over the agent API. Mounted by the policy
// extension through agent.routers. Imports take the document text as sent (YAML or JSON, content
// type application/yaml or text/plain, up to 64 MiB: 10,000 rules do not fit the API's 1 MiB JSON
// limit) so validation errors can name the line; small clients may send JSON {"text": "..."}.
import express, { type NextFunction, type Request, type Response } from 'express';
import { z } from 'zod';
import { PolicyError, type PolicyEngine } from '../policy/engine.ts';
import { CapacityError } from '../policy/apply.ts';
import { formatIssue } from '../policy/parse.ts';
import { parsePortArg } from '../policy/ports.ts';
import { describeZodError } from './schemas.ts';

const TEXT_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/plain'];

const side = z.union([
  z.object({ labels: z.record(z.string().max(253), z.string().max(1024)) }).strict(),
  z.object({ ip: z.string().min(2).max(64) }).strict(),
]);
const TraceSchema = z.object({ src: side, dst: side, port: z.string().min(1).max(32) }).strict();
const AuditSchema = z.object({ audit: z.boolean().nullable() }).strict();

class BadRequest extends Error {
  readonly code = 'bad_request';
}

function bodyText(req: Request): string {
  if (typeof req.body === 'string') return req.body;
  const text = (req.body as { text?: unknown } | undefined)?.text;
  if (typeof text !== 'string') throw new BadRequest('send the policy as the request body (content type application/yaml) or as JSON {"text": "..."}');
  return text;
}

function queryNames(req: Request): string[] {
  const q = req.query.name;
  return (Array.isArray(q) ? q : q === undefined ? [] : [q]).filter((n): n is string => typeof n === 'string' && n.length > 0);
}

export interface PolicyRouterOptions {
  auditMode: () => boolean;
  /** Datapath drop counters by reason name (packets). */
  drops: () => Record<string, number>;
}

export function policyRouter(engine: PolicyEngine, opts: PolicyRouterOptions): express.Router {
  const r = express.Router();
  r.use(express.text({ type: TEXT_TYPES, limit: '64mb' }));

  r.get('/', (_req, res) => {
    res.json({
      revision: engine.revision,
      items: engine.list().map((p) => ({
        name: p.name, kind: p.policy.kind, revision: p.revision, updatedAt: p.updatedAt,
        specs: p.policy.specs.length,
        rules: {
          ingress: p.policy.specs.reduce((n, s) => n + s.rules.filter((x) => x.direction === 'ingress').length, 0),
          egress: p.policy.specs.reduce((n, s) => n + s.rules.filter((x) => x.direction === 'egress').length, 0),
        },
      })),
    });
  });

  r.get('/status', (_req, res) => {
    res.json({ revision: engine.revision, policies: engine.list().length, auditMode: opts.auditMode(), ...engine.mapUsage(), drops: opts.drops() });
  });

  r.get('/get', (req, res) => {
    const [name] = queryNames(req);
    if (!name) throw new BadRequest('name is required (?name=NAME)');
    const p = engine.get(name);
    if (!p) throw new PolicyError('not_found', `no policy named "${name}"`);
    res.json(p);
  });

  r.post('/', async (req, res) => {
    const result = await engine.importText(bodyText(req));
    res.json(result);
  });

  r.post('/validate', (req, res) => {
    const { policies, issues } = engine.validate(bodyText(req));
    res.json({ valid: issues.length === 0 && policies.length > 0, policies: policies.map((p) => p.name), issues });
  });

  r.delete('/', async (req, res) => {
    const all = req.query.all === 'true';
    const names = queryNames(req);
    if (!all && !names.length) throw new BadRequest('name the policies to delete (?name=NAME, repeatable) or pass ?all=true');
    res.json(await engine.delete(all ? 'all' : names));
  });

  r.post('/trace', (req, res) => {
    const parsed = TraceSchema.safeParse(req.body ?? {});
    if (!parsed.success) throw new BadRequest(`invalid request: ${describeZodError(parsed.error)}`);
    let l4;
    try { l4 = parsePortArg(parsed.data.port); } catch (e) { throw new BadRequest(`port: ${(e as Error).message}`); }
    res.json(engine.trace({ src: parsed.data.src, dst: parsed.data.dst, ...l4 }));
  });

  r.get('/rules/:ruleId', (req, res) => {
    const d = engine.describeRule(Number(req.params.ruleId));
    if (!d) throw new PolicyError('not_found', `no rule with id ${req.params.ruleId}`);
    res.json(d);
  });

  r.get('/endpoints/:containerId/:ifName', (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const view = engine.endpointPolicy(containerId, ifName);
    if (!view) throw new PolicyError('not_found', `endpoint ${containerId}/${ifName} does not exist`);
    res.json(view);
  });

  r.put('/endpoints/:containerId/:ifName/audit', async (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const parsed = AuditSchema.safeParse(req.body ?? {});
    if (!parsed.success) throw new BadRequest(`invalid request: ${describeZodError(parsed.error)}`);
    res.json({ audit: await engine.setAudit(containerId, ifName, parsed.data.audit) });
  });

  r.use(errorHandler);
  return r;
}

export function identityRouter(engine: PolicyEngine): express.Router {
  const r = express.Router();
  r.get('/', (_req, res) => { res.json({ items: engine.identityList() }); });
  r.get('/:id', (req, res) => {
    const item = engine.identityList().find((i) => i.id === Number(req.params.id));
    if (!item) throw new PolicyError('not_found', `no identity ${req.params.id}`);
    res.json(item);
  });
  r.use(errorHandler);
  return r;
}

/** Policy errors carry their issues as details (the CLI prints them with the file name). */
function errorHandler(err: unknown, _req: Request, res: Response, next: NextFunction): void {
  if (err instanceof PolicyError) {
    const status = err.code === 'not_found' ? 404 : 400;
    const message = err.issues?.length ? `${err.message}:\n${err.issues.map((i) => `  ${formatIssue(i)}`).join('\n')}` : err.message;
    res.status(status).json({ error: { code: err.code, message, ...(err.issues ? { details: { issues: err.issues } } : {}) } });
    return;
  }
  if (err instanceof BadRequest || err instanceof CapacityError) {
    res.status(400).json({ error: { code: 'bad_request', message: err.message } });
    return;
  }
  const e = err as { type?: string; message?: string };
  if (e?.type === 'entity.too.large') {
    res.status(413).json({ error: { code: 'bad_request', message: 'the policy text is larger than 64 MiB' } });
    return;
  }
  next(err);
}
