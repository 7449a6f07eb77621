// The plugin's agent client (HTTP/1.1 over libuv's pipe handle, and over node:net) against node:http servers: bodies plain and
// chunked, error bodies, unreachable sockets, deadlines.
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { AgentApiError, AgentUnreachableError } from '../../shared/src/api/client.ts';
import { CniAgentClient } from '../src/transport.ts';
import { pipeExchange } from '../src/pipe.ts';
import { tmpDir } from './lib/inproc.ts';

const dir = tmpDir();
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

async function serve(handler: http.RequestListener): Promise<{ socket: string; close(): Promise<void> }> {
  const socket = path.join(dir, `s${Math.random().toString(16).slice(2)}.sock`);
  const srv = http.createServer(handler);
  await new Promise<void>((r) => srv.listen(socket, r));
  return {
    socket,
    close: () =>
      new Promise((r) => {
        srv.closeAllConnections();
        srv.close(() => r());
      }),
  };
}

t.test('this Node has the pipe bindings: plugin starts do not load node:net', async (t) => {
  t.ok(pipeExchange, 'pipe_wrap and stream_wrap are there');
});

for (const transport of ['pipe', 'net'] as const) {
  t.test(`${transport}: bodies, methods and errors`, async (t) => {
    const seen: { method?: string; url?: string; body: string }[] = [];
    const s = await serve((req, res) => {
      let body = '';
      req.on('data', (c) => {
        body += c;
      });
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, body });
        if (req.url === '/v1/healthz') {
          res.write('{"ok"');
          res.end(':true}');
          return;
        } // chunked
        if (req.url?.startsWith('/v1/endpoints/x/')) {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end('{"error":{"code":"endpoint_not_found","message":"endpoint x/eth0 does not exist"}}');
          return;
        }
        if (req.url === '/v1/version') {
          res.end('not json');
          return;
        }
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ echo: JSON.parse(body || '{}') }));
      });
    });
    t.teardown(() => s.close());
    const c = new CniAgentClient({ transport, socketPath: s.socket });
    t.same(await c.healthz(), { ok: true }, 'chunked body');
    t.same(
      await c.request('POST', '/v1/endpoints', { containerId: 'é', ifName: 'eth0' }),
      { echo: { containerId: 'é', ifName: 'eth0' } },
      'JSON body with a multi-byte character',
    );
    t.equal(seen[1].method, 'POST');
    const e = await c.getEndpoint('x', 'eth0').catch((err) => err);
    t.ok(e instanceof AgentApiError);
    t.same([e.status, e.code, e.message], [404, 'endpoint_not_found', 'endpoint x/eth0 does not exist']);
    const bad = await c.version().catch((err) => err);
    t.match(bad.message, /non-JSON answer/);
  });

  t.test(`${transport}: unreachable and silent agents`, async (t) => {
    const none = await new CniAgentClient({ transport, socketPath: path.join(dir, 'none.sock') }).healthz().catch((e) => e);
    t.ok(none instanceof AgentUnreachableError);
    t.match(none.reason, /no socket there/);
    const s = await serve(() => undefined); // never answers
    t.teardown(() => s.close());
    const silent = await new CniAgentClient({ transport, socketPath: s.socket, timeoutMs: 150 }).healthz().catch((e) => e);
    t.ok(silent instanceof AgentUnreachableError);
    t.match(silent.reason, /no answer within 150 ms/);
  });

  t.test(`${transport}: an answer with a Content-Length is complete without the connection closing`, async (t) => {
    // An agent busy right after answering (removing a deleted endpoint's veth) sends its FIN late:
    // this server never sends one. The client must take the answer once its body is in.
    const socket = path.join(dir, `raw${Math.random().toString(16).slice(2)}.sock`);
    const held: net.Socket[] = [];
    const srv = net.createServer((c) => {
      held.push(c);
      c.once('data', () => {
        const body = '{"deleted":true}';
        // head and body in two writes: the client must put them together
        c.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
        setTimeout(() => c.write(body), 20);
      });
    });
    await new Promise<void>((r) => srv.listen(socket, r));
    t.teardown(() => {
      for (const c of held) c.destroy();
      srv.close();
    });
    const got = await new CniAgentClient({ transport, socketPath: socket, timeoutMs: 2_000 })
      .deleteEndpoint('c1', 'eth0')
      .catch((e: Error) => e);
    t.same(got, { deleted: true }, 'the answer, not a timeout');
  });
}
