// /v1/policy and /v1/identities: the policy engine over the agent API. Mounted by the policy
// extension through agent.routers. Imports take the document text as sent (YAML or JSON, content
// type application/yaml or text/plain, up to 64 MiB: 10,000 rules do not fit the API's 1 MiB JSON
// limit) so validation errors can name the line; small clients may send JSON {"text": "..."}.
// Errors go to the API's one error handler (api/server.ts): PolicyError carries its issues as details.
import express, { type Request } from 'express';
import { z } from 'zod';
import { PolicyError, type PolicyEngine } from '../policy/engine.ts';
import { parsePortArg } from '../policy/ports.ts';
import { MembraneError } from '../errors.ts';
import { describeZodError, zodField } from './schemas.ts';

const TEXT_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/plain'];

const side = z.union([
  z.object({ labels: z.record(z.string().max(253), z.string().max(1024)) }).strict(),
  z.object({ ip: z.string().min(2).max(64) }).strict(),
]);
const dstSide = z.union([
  side,
  z
    .object({
      fqdn: z
        .string()
        .min(1)
        .max(255)
        .regex(/^[-a-zA-Z0-9_.]+$/, { error: 'a DNS name (letters, digits, "-", "_", ".")' }),
    })
    .strict(),
]);
const TraceHttpSchema = z
  .object({
    method: z.string().max(64).optional(),
    path: z.string().max(8192).optional(),
    host: z.string().max(1024).optional(),
    headers: z.record(z.string().max(256), z.string().max(8192)).optional(),
  })
  .strict();
const TraceSchema = z
  .object({
    src: side,
    dst: dstSide,
    port: z.string().min(1).max(32),
    http: TraceHttpSchema.optional(),
    dnsQuery: z
      .string()
      .min(1)
      .max(255)
      .regex(/^[-a-zA-Z0-9_.]+$/, { error: 'a DNS name (letters, digits, "-", "_", ".")' })
      .optional(),
  })
  .strict();
const AuditSchema = z.object({ audit: z.boolean().nullable() }).strict();

function badRequest(message: string, field?: string): MembraneError {
  return new MembraneError('bad_request', message, { field });
}

function bodyText(req: Request): string {
  if (typeof req.body === 'string') return req.body;
  const text = (req.body as { text?: unknown } | undefined)?.text;
  if (typeof text !== 'string')
    throw badRequest('send the policy as the request body (content type application/yaml) or as JSON {"text": "..."}', 'body');
  return text;
}

/** ?namespace=NS: the namespace of documents that name none (membrane policy import -n). */
function importOptions(req: Request): { namespace?: string } {
  const ns = req.query.namespace;
  if (ns === undefined) return {};
  if (typeof ns !== 'string' || !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(ns))
    throw badRequest(`namespace ${JSON.stringify(ns)} is not a valid namespace name`, 'namespace');
  return { namespace: ns };
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
        name: p.name,
        kind: p.policy.kind,
        revision: p.revision,
        updatedAt: p.updatedAt,
        specs: p.policy.specs.length,
        rules: {
          ingress: p.policy.specs.reduce((n, s) => n + s.rules.filter((x) => x.direction === 'ingress').length, 0),
          egress: p.policy.specs.reduce((n, s) => n + s.rules.filter((x) => x.direction === 'egress').length, 0),
        },
      })),
    });
  });

  r.get('/status', (_req, res) => {
    res.json({
      revision: engine.revision,
      policies: engine.list().length,
      auditMode: opts.auditMode(),
      ...engine.mapUsage(),
      drops: opts.drops(),
    });
  });

  r.get('/get', (req, res) => {
    const [name] = queryNames(req);
    if (!name) throw badRequest('name is required (?name=NAME)', 'name');
    const p = engine.get(name);
    if (!p) throw new PolicyError('policy_not_found', `no policy named "${name}"`);
    res.json(p);
  });

  r.post('/', async (req, res) => {
    const result = await engine.importText(bodyText(req), importOptions(req));
    res.json(result);
  });

  r.post('/validate', async (req, res) => {
    const { policies, issues } = await engine.parse(bodyText(req), importOptions(req));
    res.json({ valid: issues.length === 0 && policies.length > 0, policies: policies.map((p) => p.name), issues });
  });

  r.delete('/', async (req, res) => {
    const all = req.query.all === 'true';
    const names = queryNames(req);
    if (!all && !names.length) throw badRequest('name the policies to delete (?name=NAME, repeatable) or pass ?all=true', 'name');
    res.json(await engine.delete(all ? 'all' : names));
  });

  r.post('/trace', (req, res) => {
    const parsed = TraceSchema.safeParse(req.body ?? {});
    if (!parsed.success) throw badRequest(`invalid request: ${describeZodError(parsed.error)}`, zodField(parsed.error));
    let l4;
    try {
      l4 = parsePortArg(parsed.data.port);
    } catch (e) {
      throw badRequest(`port: ${(e as Error).message}`, 'port');
    }
    const { src, dst, http, dnsQuery } = parsed.data;
    res.json(engine.trace({ src, dst, ...l4, ...(http ? { http } : {}), ...(dnsQuery ? { dnsQuery } : {}) }));
  });

  r.get('/rules/:ruleId', (req, res) => {
    const d = engine.describeRule(Number(req.params.ruleId));
    if (!d) throw new PolicyError('policy_not_found', `no rule with id ${req.params.ruleId}`);
    res.json(d);
  });

  r.get('/endpoints/:containerId/:ifName', (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const view = engine.endpointPolicy(containerId, ifName);
    if (!view) throw new PolicyError('endpoint_not_found', `endpoint ${containerId}/${ifName} does not exist`);
    res.json(view);
  });

  r.put('/endpoints/:containerId/:ifName/audit', async (req, res) => {
    const { containerId, ifName } = req.params as { containerId: string; ifName: string };
    const parsed = AuditSchema.safeParse(req.body ?? {});
    if (!parsed.success) throw badRequest(`invalid request: ${describeZodError(parsed.error)}`, zodField(parsed.error));
    res.json({ audit: await engine.setAudit(containerId, ifName, parsed.data.audit) });
  });

  return r;
}

export function identityRouter(engine: PolicyEngine): express.Router {
  const r = express.Router();
  r.get('/', (_req, res) => {
    res.json({ items: engine.identityList() });
  });
  r.get('/:id', (req, res) => {
    const item = engine.identityList().find((i) => i.id === Number(req.params.id));
    if (!item) throw new PolicyError('identity_not_found', `no identity ${req.params.id}`);
    res.json(item);
  });
  return r;
}
