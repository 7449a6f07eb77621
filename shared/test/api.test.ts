// The API validates every body before the core sees it, and maps core errors to clear 4xx answers.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createApp, serveApi } from '../src/api/server.ts';
import { AgentClient, AgentUnreachableError } from '../src/api/client.ts';
import { createLogger } from '../src/log.ts';
import { IpamError } from '../src/ipam/index.ts';
import { EndpointError } from '../src/endpoint/errors.ts';
import { MembraneError } from '../src/errors.ts';
import type { Core } from '../src/core.ts';
import type { Endpoint, EndpointRequest } from '../src/types.ts';

function fakeCore(calls: EndpointRequest[]): Core {
  return {
    networks: {
      get: () => undefined,
      list: () => [],
      create: async () => {
        throw new Error('no');
      },
      delete: async () => false,
    },
    endpoints: {
      get: () => undefined,
      list: () => [],
      create: async (req) => {
        calls.push(req);
        if (req.network === 'full') throw new IpamError('pool_exhausted', 'IP pool "full" is exhausted');
        if (req.network === 'disk-full')
          throw new MembraneError(
            'storage_full',
            "the agent's state disk is full: cannot write journal.log (ENOSPC); nothing was changed",
          );
        return { containerId: req.containerId, ifName: req.ifName } as Endpoint;
      },
      delete: async () => false,
      updateLabels: async (containerId) => {
        // A vanished sysctl mid-operation: an error with a 'not_found' code that is not a MembraneError.
        if (containerId === 'sysctl')
          throw Object.assign(new Error('sysctl net.ipv4.conf.x.proxy_arp: no such key'), { code: 'not_found' });
        throw new EndpointError('endpoint_not_found', `endpoint ${containerId}/eth0 does not exist`);
      },
    },
    ipam: {
      allocate: async () => {
        throw new Error('no');
      },
      releaseOwner: async () => 0,
      releaseIp: async () => false,
      pools: () => [],
    },
  };
}

/** The API (its app and unix socket) over `fakeCore(calls)`, closed and removed when `t` ends. */
async function servedApi(t: Test, calls: EndpointRequest[]): Promise<{ socket: string; app: ReturnType<typeof createApp> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-api-'));
  const socket = path.join(dir, 'api.sock');
  const app = createApp({
    core: fakeCore(calls),
    log: createLogger({ level: 'silent' }),
    version: 'test',
    check: () => [],
    status: () => ({}) as never,
  });
  const server = await serveApi(app, socket);
  t.teardown(() => {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { socket, app };
}

t.test('requests are validated and errors are clear', async (t) => {
  const calls: EndpointRequest[] = [];
  const { socket, app } = await servedApi(t, calls);
  t.equal((fs.statSync(socket).mode & 0o777).toString(8), '660', 'socket mode 0660');
  const c = new AgentClient({ socketPath: socket });

  await t.rejects(c.request('POST', '/v1/endpoints', { ifName: 'eth0' }), {
    status: 400,
    code: 'bad_request',
    message: /containerId/,
  });
  await t.rejects(c.request('POST', '/v1/endpoints', { containerId: 'a', ifName: 'eth0', extra: 1 }), {
    status: 400,
    message: /extra/,
  });
  await t.rejects(c.request('POST', '/v1/endpoints', { containerId: 'a', ifName: 'eth0', mtu: 'big' }), {
    status: 400,
    message: /mtu/,
  });
  t.equal(calls.length, 0, 'the core never saw an invalid request');
  await t.rejects(c.createEndpoint({ containerId: 'a', ifName: 'eth0', network: 'full' }), {
    status: 409,
    code: 'pool_exhausted',
    message: /"full"/,
  });
  await t.rejects(c.request('GET', '/v1/nope'), { status: 404, code: 'not_found', message: /GET \/v1\/nope/ });
  await t.rejects(c.getEndpoint('x', 'eth0'), { status: 404, code: 'endpoint_not_found' });
  t.same(await c.deleteEndpoint('x', 'eth0'), { deleted: false });

  await t.rejects(serveApi(app, socket), /already serving/, 'a second agent cannot steal a live socket');
});

t.test('the error kind, not a look-alike code, picks the answer; invalid fields are named', async (t) => {
  const { socket } = await servedApi(t, []);
  const c = new AgentClient({ socketPath: socket });
  await t.rejects(
    c.request('PUT', '/v1/endpoints/sysctl/eth0/labels', { labels: {} }),
    { status: 500, code: 'internal', message: /no such key/ },
    "an agent-side failure is the agent's 500, never the caller's 404",
  );
  await t.rejects(c.request('PUT', '/v1/endpoints/gone/eth0/labels', { labels: {} }), {
    status: 404,
    code: 'endpoint_not_found',
  });
  await t.rejects(c.request('POST', '/v1/endpoints', { containerId: 'a', ifName: 'eth0', mtu: 'big' }), {
    status: 400,
    field: 'mtu',
    message: /mtu/,
  });
  await t.rejects(c.request('POST', '/v1/endpoints', { containerId: 'a', ifName: 'eth0', extra: 1 }), {
    status: 400,
    field: 'extra',
    message: /extra/,
  });
  // A name no URL can carry could be created but never named again (read, deleted): refused.
  await t.rejects(c.request('POST', '/v1/endpoints', { containerId: 'a\ud800', ifName: 'eth0' }), {
    status: 400,
    field: 'containerId',
    message: /containerId: must not contain control characters or unpaired surrogates/,
  });
  await t.rejects(c.request('POST', '/v1/endpoints', { containerId: 'a\u0001', ifName: 'eth0' }), {
    status: 400,
    field: 'containerId',
    message: /containerId: must not contain control characters/,
  });
  await t.rejects(c.request('POST', '/v1/networks', { name: 'n\udfff', subnets: ['10.9.0.0/24'] }), {
    status: 400,
    field: 'name',
    message: /name: must not contain/,
  });
});

t.test('malformed JSON gets a 400', async (t) => {
  const { socket } = await servedApi(t, []);
  const http = await import('node:http');
  const res = await new Promise<{ status: number; body: string }>((resolve) => {
    const req = http.request(
      { socketPath: socket, method: 'POST', path: '/v1/endpoints', headers: { 'content-type': 'application/json' } },
      (r) => {
        let body = '';
        r.on('data', (d) => {
          body += d;
        });
        r.on('end', () => resolve({ status: r.statusCode!, body }));
      },
    );
    req.end('{"containerId":');
  });
  t.equal(res.status, 400);
  t.match(JSON.parse(res.body).error.message, /not valid JSON/);
});

t.test('an unreachable agent is reported as such', async (t) => {
  const c = new AgentClient({ socketPath: '/nonexistent/agent.sock' });
  await t.rejects(c.healthz(), AgentUnreachableError);
  await t.rejects(c.healthz(), { message: /is membrane-agent running/ });
});

t.test('a full state disk is 507 storage_full; an oversized body 413 before it is parsed', async (t) => {
  const calls: EndpointRequest[] = [];
  const { socket } = await servedApi(t, calls);
  const c = new AgentClient({ socketPath: socket });
  await t.rejects(c.createEndpoint({ containerId: 'a', ifName: 'eth0', network: 'disk-full' }), {
    status: 507,
    code: 'storage_full',
    message: /state disk is full.*ENOSPC/,
  });
  const big = {
    containerId: 'b',
    ifName: 'eth0',
    labels: { pad: 'x'.repeat(1000) },
    metadata: Object.fromEntries(Array.from({ length: 1200 }, (_, i) => [`k${i}`, 'v'.repeat(1000)])),
  };
  await t.rejects(c.request('POST', '/v1/endpoints', big), {
    status: 413,
    code: 'payload_too_large',
    field: 'body',
    message: /larger than the API accepts \(1 MiB\)/,
  });
  t.equal(calls.filter((r) => r.containerId === 'b').length, 0, 'the core never saw it');
});
