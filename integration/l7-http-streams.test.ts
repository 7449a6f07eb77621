// L7 HTTP bodies and tunnels: a 100 MB chunked upload with bounded proxy and agent memory, and
// WebSocket upgrades allowed and refused (the setup: lib/l7-http-file.ts).
import t from 'tap';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { curl, RawHttp, request, webSocket } from './lib/http.ts';
import { API, ip4, l7HttpForFile } from './lib/l7-http-file.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);

t.test('a 100 MB chunked upload streams through; neither the proxy workers nor the agent buffer it', async (t) => {
  const { agent, nsOf, importL7, reset, url } = f;
  t.teardown(reset);
  await importL7(API());
  const size = 100 * 1024 * 1024;
  // Well under the body: holding it would take 100 MiB; what a streaming worker gains is garbage not yet collected.
  const BOUND = 64 * 1024 * 1024;
  const workers = ((await agent.client.status()).l7 as { workers: { pid?: number }[] }).workers
    .map((w) => w.pid!)
    .filter(Boolean);
  t.ok(workers.length > 0, `proxy workers: ${workers.join(', ')}`);
  const rss = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
  const watched = [...workers.map((pid) => ({ name: `worker ${pid}`, pid })), { name: 'agent', pid: agent.pid()! }];
  const start = watched.map((w) => rss(w.pid));
  const peak = [...start];
  const sample = () =>
    watched.forEach((w, i) => {
      try {
        peak[i] = Math.max(peak[i], rss(w.pid));
      } catch {
        /* gone */
      }
    });
  const sampler = setInterval(sample, 25);
  const zeros = spawn('head', ['-c', String(size), '/dev/zero'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const r = await curl(nsOf.good, url('web', 80, '/upload'), ['-T', '-', '-H', 'Transfer-Encoding: chunked'], {
    timeoutS: 180,
    stdin: zeros,
  });
  clearInterval(sampler);
  sample();
  t.equal(r.status, 200);
  const want = crypto.createHash('sha256').update(Buffer.alloc(size)).digest('hex');
  t.match(JSON.parse(r.body), { bytes: size, sha256: want }, 'every byte arrived, in order');
  watched.forEach((w, i) => {
    const grew = peak[i] - start[i];
    t.ok(
      grew < BOUND,
      `${w.name}: RSS ${(start[i] / 1048576).toFixed(0)} -> peak ${(peak[i] / 1048576).toFixed(0)} MiB (+${(grew / 1048576).toFixed(1)} MiB, bound ${BOUND / 1048576} MiB) for a ${size / 1048576} MiB body`,
    );
  });
});

t.test('WebSocket: a client on an allowed path talks both ways; on a denied path the upgrade is refused', async (t) => {
  const { eps, nsOf, importL7, reset } = f;
  t.teardown(reset);
  await importL7(API());
  const ws = (p: string, messages: string[]) => webSocket(nsOf.good, `ws://${ip4(eps.web)}${p}`, messages);
  const ok = await ws('/ws', ['hello', 'bytes:100000', 'bye']);
  t.same(
    ok,
    { opened: true, got: ['echo:hello', 'bytes:100005:echo:', 'echo:bye'], closeCode: 1000 },
    "Node's WebSocket client: handshake accepted (its key checked), a text, a 100 kB binary and a text message echoed, a clean close",
  );
  const denied = await ws('/chat', ['hello']);
  t.match(
    denied,
    { opened: false, got: [], error: /non-101 status/ },
    `GET /chat is not allowed: the client never gets a WebSocket (${denied.error})`,
  );
  // What the client was told, byte for byte; and the tunnel works for a client that speaks no WebSocket framing.
  const raw = new RawHttp(nsOf.good, ip4(eps.web), 80);
  t.teardown(() => raw.close());
  const upgrade = (p: string) => request('GET', p, 'svc', { Connection: 'Upgrade', Upgrade: 'echo-tunnel' });
  const no = await raw.exchange(upgrade('/chat'), 'Access denied');
  t.match(no.got, /^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*\r\n\r\nAccess denied$/, 'a 403 "Access denied", not a 101');
  t.match(
    (await raw.exchange(upgrade('/ws'), '\r\n\r\n')).got,
    /^HTTP\/1\.1 101 Switching Protocols/,
    'and the same connection may then upgrade on an allowed path',
  );
  t.equal((await raw.exchange('frame-1', 'echo:frame-1')).got, 'echo:frame-1', 'after which bytes pass both ways untouched');
});
