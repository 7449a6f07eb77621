// An in-memory stand-in for the agent's endpoint API on a temp unix socket (node:http), for unit tests
// of the plugin's protocol layer. Same routes, bodies and error shapes as docs/design.md.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { Endpoint, EndpointRequest } from '../../../shared/src/types.ts';

export interface FakeAgent {
  socket: string;
  dir: string;
  endpoints: Map<string, Endpoint>;
  requests: { method: string; url: string; body?: unknown }[];
  /** Next POST /v1/endpoints answers this error instead. */
  failNextCreate?: { status: number; code: string; message: string };
  /** Answer GET ...?check=1 with {endpoint, datapath} (the agent's CHECK support). */
  checkSupport: boolean;
  datapathProblems: string[];
  poolSize: number;
  /** Delay every answer (to test client deadlines). */
  delayMs: number;
  close(): Promise<void>;
}

export async function startFakeAgent(opts: { poolSize?: number } = {}): Promise<FakeAgent> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-fake-agent-'));
  const socket = path.join(dir, 'agent.sock');
  let nextId = 1;
  const used = new Set<number>();
  const fa: FakeAgent = {
    socket,
    dir,
    endpoints: new Map(),
    requests: [],
    checkSupport: true,
    datapathProblems: [],
    poolSize: opts.poolSize ?? 250,
    delayMs: 0,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          fs.rmSync(dir, { recursive: true, force: true });
          resolve();
        });
      }),
  };
  const send = (res: http.ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    setTimeout(() => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(text);
    }, fa.delayMs);
  };
  const err = (res: http.ServerResponse, status: number, code: string, message: string) =>
    send(res, status, { error: { code, message } });

  const create = (req: EndpointRequest, res: http.ServerResponse) => {
    const key = `${req.containerId}/${req.ifName}`;
    const existing = fa.endpoints.get(key);
    if (existing) {
      if (existing.netns === (req.netns ?? null)) return send(res, 200, existing);
      return err(res, 409, 'endpoint_exists', `endpoint ${key} already exists in ${existing.netns}`);
    }
    if (req.netns && !fs.existsSync(req.netns)) return err(res, 400, 'netns_not_found', `netns ${req.netns} does not exist`);
    if (req.network && req.network !== 'default')
      return err(res, 404, 'network_not_found', `network "${req.network}" does not exist`);
    let ips: string[];
    if (req.ips?.length) ips = req.ips;
    else {
      let n = 2;
      while (used.has(n)) n++;
      if (n > fa.poolSize + 1) return err(res, 409, 'pool_exhausted', 'no free address in pool "default" (10.250.0.0/24)');
      used.add(n);
      ips = [`10.250.0.${n}`];
    }
    const id = nextId++;
    const ep: Endpoint = {
      id,
      containerId: req.containerId,
      ifName: req.ifName,
      network: req.network ?? 'default',
      netns: req.netns ?? null,
      hostIfName: `mbr${id.toString(16).padStart(11, '0')}`,
      hostIfIndex: 100 + id,
      hostMac: '02:00:00:00:00:01',
      mac: req.mac ?? `02:aa:00:00:00:${id.toString(16).padStart(2, '0')}`,
      mtu: req.mtu ?? 1500,
      ips: ips.map((ip) => ({ address: `${ip}/32`, gateway: '10.250.0.1', family: 4 as const, subnet: '10.250.0.0/24' })),
      routes: [{ dst: '10.250.0.1/32' }, { dst: '0.0.0.0/0', gw: '10.250.0.1' }],
      labels: req.labels ?? {},
      metadata: req.metadata ?? {},
      identity: 1,
      externalIpam: Boolean(req.externalIpam),
      createdAt: new Date().toISOString(),
    };
    fa.endpoints.set(key, ep);
    send(res, 201, ep);
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString();
      const body = text ? JSON.parse(text) : undefined;
      fa.requests.push({ method: req.method!, url: req.url!, body });
      const url = new URL(req.url!, 'http://agent');
      const m = url.pathname.match(/^\/v1\/endpoints\/([^/]+)\/([^/]+)$/);
      if (req.method === 'GET' && url.pathname === '/v1/healthz') return send(res, 200, { ok: true });
      if (req.method === 'GET' && url.pathname === '/v1/ipam') {
        const allocated = [...fa.endpoints.values()].filter((e) => !e.externalIpam).length;
        return send(res, 200, {
          pools: [
            {
              name: 'default',
              subnets: [{ cidr: '10.250.0.0/24', gateway: '10.250.0.1', size: String(fa.poolSize), allocated }],
              allocations: [],
            },
          ],
        });
      }
      if (req.method === 'POST' && url.pathname === '/v1/endpoints') {
        if (fa.failNextCreate) {
          const f = fa.failNextCreate;
          fa.failNextCreate = undefined;
          return err(res, f.status, f.code, f.message);
        }
        return create(body as EndpointRequest, res);
      }
      if (req.method === 'GET' && url.pathname === '/v1/endpoints') {
        const cid = url.searchParams.get('containerId');
        return send(res, 200, { items: [...fa.endpoints.values()].filter((e) => !cid || e.containerId === cid) });
      }
      if (m) {
        const key = `${decodeURIComponent(m[1])}/${decodeURIComponent(m[2])}`;
        const ep = fa.endpoints.get(key);
        if (req.method === 'DELETE') {
          fa.endpoints.delete(key);
          if (ep && !ep.externalIpam) used.delete(Number(ep.ips[0].address.split('.')[3].split('/')[0]));
          return send(res, 200, { deleted: Boolean(ep) });
        }
        if (req.method === 'GET') {
          if (!ep) return err(res, 404, 'endpoint_not_found', `endpoint ${key} does not exist`);
          if (url.searchParams.get('check') && fa.checkSupport) {
            return send(res, 200, { endpoint: ep, healthy: fa.datapathProblems.length === 0, problems: fa.datapathProblems });
          }
          return send(res, 200, ep);
        }
      }
      err(res, 404, 'not_found', `no route ${req.method} ${url.pathname}`);
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return fa;
}
