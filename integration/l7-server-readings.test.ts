// Requests the server behind the proxy reads otherwise than the proxy's rules would be ways around
// them. Debian's nginx decodes %2F before it resolves dot segments, merges slashes and ends a path at
// "#", so under a rule for GET /public/.* "/public/..%2Fadmin", "/public//../admin" and
// "/admin#/../public/x" would be allowed as written and served as nginx's /admin. nghttpx (an HTTP/2
// front end) honours an HTTP/1.1 Upgrade to h2c, after which a client asks for any path over HTTP/2
// on the tunnel the allowed request opened. A Node server sees the Host header where rules match an
// absolute-form target's authority. With those servers in the pod, each test first shows the
// server doing it without the rule, then the proxy closing the way while what is allowed still works
// (the setup: lib/l7-http-file.ts).
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ownChild, ownDir, signalAndWait } from './lib/cleanup.ts';
import { curl, RawHttp } from './lib/http.ts';
import { fixture, ip4, l7HttpForFile } from './lib/l7-http-file.ts';
import { waitUntil } from '../shared/test/lib/poll.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);
/** nginx's port, and nghttpx's in front of it (both in the web pod, both under the rule). */
const PORT = 8081;
const H2_PORT = 8082;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public-only}
spec:
  endpointSelector: {matchLabels: {tier: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {stage: live}}]
    toPorts:
    - ports: [{port: "${PORT}", protocol: TCP}, {port: "${H2_PORT}", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
`;

/** A policy for live's egress to the world on port 80 with one HTTP rule (`rule`: its YAML). */
const liveToWorld = (name: string, rule: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {stage: live}}
  egress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - ${rule}
`;

/** The spellings of /admin under /public that nginx serves as /admin (its $uri, measured). */
const NGINX_ADMIN = ['/public/..%2Fadmin', '/public/%2e%2e%2fadmin', '/public%2F..%2Fadmin', '/public//../admin'];

/** nginx in `nsPath` on PORT, one process (no master: a SIGKILL ends it all), answering with its own
 *  reading of each path and logging each request line. */
function startNginx(nsPath: string): { dir: string; accessLog: string; stop: () => Promise<void> } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-l7-nginx-'));
  const releaseDir = ownDir(dir);
  const accessLog = path.join(dir, 'access.log');
  fs.writeFileSync(
    path.join(dir, 'nginx.conf'),
    `daemon off;
master_process off;
pid ${dir}/nginx.pid;
events {}
http {
  log_format lines '$request';
  access_log ${accessLog} lines;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen ${PORT};
    location /public/status101 { return 101; }
    location /admin { return 200 "admin uri=$uri\\n"; }
    location /public { return 200 "public uri=$uri\\n"; }
    location / { return 404 "none uri=$uri\\n"; }
  }
}
`,
  );
  const child = spawn('nsenter', [`--net=${nsPath}`, 'nginx', '-p', dir, '-e', `${dir}/error.log`, '-c', `${dir}/nginx.conf`], {
    stdio: 'ignore',
  });
  ownChild(child);
  return {
    dir,
    accessLog,
    stop: async () => {
      await signalAndWait(child, 'SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
      releaseDir();
    },
  };
}

/** nghttpx in `nsPath` on H2_PORT (no TLS: HTTP/1.1, HTTP/2 with prior knowledge, and HTTP/1.1
 *  Upgrade to h2c), in front of nginx on PORT; one process; its files in nginx's `dir`. */
function startNghttpx(nsPath: string, dir: string): { stop: () => Promise<void> } {
  const child = spawn(
    'nsenter',
    [
      `--net=${nsPath}`,
      'nghttpx',
      '--conf=/dev/null',
      '--single-process',
      `--frontend=0.0.0.0,${H2_PORT};no-tls`,
      `--backend=127.0.0.1,${PORT}`,
      `--pid-file=${dir}/nghttpx.pid`,
      `--errorlog-file=${dir}/nghttpx.log`,
      '--accesslog-file=/dev/null',
    ],
    { stdio: 'ignore' },
  );
  ownChild(child);
  return { stop: () => signalAndWait(child, 'SIGKILL') };
}

/** nghttp -u (an HTTP/1.1 Upgrade to h2c on the first URL, then the rest over HTTP/2) from `nsPath`. */
function nghttpUpgrade(nsPath: string, urls: string[]): Promise<{ out: string; exit: number | null }> {
  const child = spawn('nsenter', [`--net=${nsPath}`, 'timeout', '10', 'nghttp', '-u', ...urls], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  ownChild(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => child.once('exit', (exit) => resolve({ out, exit })));
}

t.test('nginx behind GET /public/.*: the paths it reads as /admin get 403 from the proxy and never reach it', async (t) => {
  const { eps, nsOf, importL7, reset, url } = f;
  t.teardown(reset);
  const nginx = startNginx(nsOf.web.path);
  t.teardown(nginx.stop);
  const get = (p: string) => curl(nsOf.good, url('web', PORT, p), ['--path-as-is']);
  // A "#" as sent by a raw client (curl keeps a URL's fragment to itself): the status line and body.
  const getRaw = async (p: string) => {
    const raw = new RawHttp(nsOf.good, ip4(eps.web), PORT);
    try {
      // Read until the connection closes (the marker never comes): the whole response.
      const r = await raw.exchange(`GET ${p} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n`, '\u0000', 1);
      return r.got;
    } finally {
      raw.close();
    }
  };
  await waitUntil('nginx in the web pod', async () => (await get('/public/a')).status === 200);

  // No policy yet, nothing proxied: what nginx itself makes of them. This is the bypass the proxy
  // must close (if it forwarded them, these are the answers the client would get).
  for (const p of NGINX_ADMIN) t.equal((await get(p)).body, 'admin uri=/admin\n', `nginx serves ${p} as /admin`);
  t.match(await getRaw('/admin#/../public/x'), /admin uri=\/admin\n/, 'nginx ends the path at a "#": /admin');

  await importL7(POLICY);
  const logged = fs.readFileSync(nginx.accessLog, 'utf8').length;
  const ok = await get('/public/a');
  t.same([ok.status, ok.body], [200, 'public uri=/public/a\n'], 'GET /public/a: allowed, served by nginx');
  for (const p of [...NGINX_ADMIN, '/public/..;/admin', '/admin']) {
    const r = await get(p);
    t.same([r.status, r.body], [403, 'Access denied'], `GET ${p}: 403 from the proxy`);
  }
  t.match(
    await getRaw('/admin#/../public/x'),
    /^HTTP\/1\.1 400 Bad Request[\s\S]*"#" in the request-target/,
    'GET /admin#/../public/x (/public/x after its dot segments): 400 from the proxy',
  );
  const slash = await get('/public/a%2Fb');
  t.same([slash.status, slash.body], [200, 'public uri=/public/a/b\n'], 'an encoded slash inside /public: allowed either way');
  const param = await get('/public/file;v=2');
  t.equal(param.status, 200, 'a ;parameter inside /public too');
  const seen = fs.readFileSync(nginx.accessLog, 'utf8').slice(logged).trim().split('\n');
  t.same(
    seen,
    ['GET /public/a HTTP/1.1', 'GET /public/a%2Fb HTTP/1.1', 'GET /public/file;v=2 HTTP/1.1'],
    'nginx saw only the allowed requests, as they were sent',
  );
});

t.test('nghttpx behind GET /public/.*: no Upgrade to h2c is passed on, so no HTTP/2 request rides an allowed one', async (t) => {
  const { nsOf, importL7, reset, url } = f;
  t.teardown(reset);
  const nginx = startNginx(nsOf.web.path);
  t.teardown(nginx.stop);
  const h2 = startNghttpx(nsOf.web.path, nginx.dir);
  t.teardown(h2.stop);
  const front = (p: string) => url('web', H2_PORT, p);
  await waitUntil('nghttpx in the web pod', async () => (await curl(nsOf.good, front('/public/a'))).status === 200);

  // No policy yet, nothing proxied: the upgrade on GET /public/x succeeds and /admin/secret comes over
  // HTTP/2 on the same connection. Through a proxy that passed the upgrade on and then tunnelled,
  // this is what a client allowed GET /public/x only would get.
  const open = await nghttpUpgrade(nsOf.good.path, [front('/public/x'), front('/admin/secret')]);
  t.match(open.out, /admin uri=\/admin\/secret/, 'without the rule: /admin/secret over HTTP/2 after the upgrade');

  await importL7(POLICY);
  const logged = fs.readFileSync(nginx.accessLog, 'utf8').length;
  const tried = await nghttpUpgrade(nsOf.good.path, [front('/public/x'), front('/admin/secret')]);
  t.notMatch(tried.out, /admin uri=/, `with the rule: no /admin/secret (nghttp: ${JSON.stringify(tried.out.slice(0, 200))})`);
  // curl --http2 on an http:// URL asks for the same upgrade: the request itself must still work.
  const plain = await curl(nsOf.good, front('/public/x'), ['--http2']);
  t.same(
    [plain.status, plain.body],
    [200, 'public uri=/public/x\n'],
    'curl --http2: answered over HTTP/1.1, the upgrade dropped',
  );
  const seen = fs.readFileSync(nginx.accessLog, 'utf8').slice(logged);
  t.notMatch(seen, /\/admin/, 'nginx never saw /admin');
});

t.test(
  'a Node server in the world behind a host rule: an absolute-form target naming another host than Host gets 400',
  async (t) => {
    const { nsOf, W1, importL7, reset } = f;
    t.teardown(reset);
    const post = (extra: string[]) => curl(nsOf.good, `http://${W1}/submit`, ['-X', 'POST', '-d', 'x', ...extra]);
    const forged = ['--request-target', 'http://partner-api.example/submit', '-H', 'Host: evil.example'];
    // No policy, nothing proxied: the world's server (Node's http) routes by the Host header, while a
    // host rule matches the target's authority (RFC 9112 3.2.2 says servers use that one).
    t.match(
      JSON.parse((await post(forged)).body),
      { url: 'http://partner-api.example/submit', headers: { host: 'evil.example' } },
      'Node: the Host header is evil.example',
    );
    await importL7(fixture('storefront-and-partner.yaml')); // live's egress: POST to Host partner-api.example
    const ok = await post(['--request-target', 'http://partner-api.example/submit', '-H', 'Host: partner-api.example']);
    t.equal(ok.status, 200, 'absolute-form with the same Host: allowed');
    const r = await post(forged);
    t.same(
      [r.status, r.body.trim()],
      [400, 'Host "evil.example" is not the request-target\'s authority "partner-api.example"'],
      'absolute-form partner-api.example with Host evil.example: 400 from the proxy',
    );
  },
);

t.test('nginx behind GET /public/.*: a 101 that switches to nothing opens no tunnel', async (t) => {
  const { eps, nsOf, importL7, reset, url } = f;
  t.teardown(reset);
  const nginx = startNginx(nsOf.web.path);
  t.teardown(nginx.stop);
  await waitUntil('nginx in the web pod', async () => (await curl(nsOf.good, url('web', PORT, '/public/a'))).status === 200);
  // A WebSocket handshake to an endpoint that answers 101 whatever is asked (nginx's "return 101"; an
  // httpbin's /status/101), then a request for /admin on the same connection.
  const attempt = async () => {
    const raw = new RawHttp(nsOf.good, ip4(eps.web), PORT);
    try {
      const key = 'dGhlIHNhbXBsZSBub25jZQ==';
      const first = await raw.exchange(
        `GET /public/status101 HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        '\r\n\r\n',
      );
      const second = first.closed ? { got: '' } : await raw.exchange('GET /admin HTTP/1.1\r\nHost: web\r\n\r\n', 'uri=');
      return { first: first.got, second: second.got };
    } finally {
      raw.close();
    }
  };
  // No policy, nothing proxied: nginx answers 101 and goes on speaking HTTP. A proxy that took that 101
  // for a switch would tunnel the next request past its rules: this is what the client would get.
  const open = await attempt();
  t.match(open.first, /^HTTP\/1\.1 101 /, 'nginx answers 101');
  t.match(open.second, /admin uri=\/admin/, 'and then serves /admin on the same connection');

  await importL7(POLICY);
  const logged = fs.readFileSync(nginx.accessLog, 'utf8').length;
  const tried = await attempt();
  t.same(tried, { first: '', second: '' }, 'with the rule: the 101 names no protocol, so the connection ends, nothing passed on');
  t.notMatch(fs.readFileSync(nginx.accessLog, 'utf8').slice(logged), /\/admin/, 'nginx never saw it');
});

t.test('a host rule for a suffix: a Host that is no host and port gets 400', async (t) => {
  const { nsOf, W1, importL7, reset } = f;
  t.teardown(reset);
  // live's egress to the world on port 80: any name under partner.example. A Host such as
  // "evil.test#.partner.example" matches that as text, while URL parsers (WHATWG's, Node's
  // new URL) take it for the host evil.test.
  await importL7(liveToWorld('partner-suffix', '{host: ".*\\\\.partner\\\\.example"}'));
  t.equal(new URL('http://evil.test#.partner.example/').hostname, 'evil.test', 'what a URL parser makes of it');
  const get = (host: string) => curl(nsOf.good, `http://${W1}/x`, ['-H', `Host: ${host}`]);
  const ok = await get('api.partner.example');
  t.equal(ok.status, 200, 'api.partner.example: allowed');
  const r = await get('evil.test#.partner.example');
  t.same(
    [r.status, r.body.trim()],
    [400, 'Host "evil.test#.partner.example" is not a host and port'],
    'evil.test#.partner.example: 400 from the proxy',
  );
});

t.test('a REPLACE header rule: the header reaches the server as the rule says, and no alias of it', async (t) => {
  const { nsOf, W1, importL7, reset } = f;
  t.teardown(reset);
  // X-Role must be "user" on live's requests to the world; CGI-style servers (PHP, WSGI) read
  // "X_Role" as the same HTTP_X_ROLE, so an alias must not carry "admin" past the rule.
  await importL7(liveToWorld('role-user', 'headerMatches: [{name: X-Role, value: user, mismatch: REPLACE}]'));
  const r = await curl(nsOf.good, `http://${W1}/x`, ['-H', 'X-Role: admin', '-H', 'X_Role: admin', '-H', 'x_ROLE: admin']);
  t.equal(r.status, 200);
  const seen = JSON.parse(r.body).headers as Record<string, string>;
  t.same(
    Object.entries(seen).filter(([k]) => k.replaceAll('_', '-') === 'x-role'),
    [['x-role', 'user']],
    'the server sees X-Role: user and nothing else by that CGI name',
  );
});

t.test('a header a rule requires, sent with a CGI-style alias beside it: 403', async (t) => {
  const { nsOf, W1, importL7, reset } = f;
  t.teardown(reset);
  await importL7(liveToWorld('token', 'headers: ["X-Token: s3cret"]'));
  const get = (headers: string[]) =>
    curl(
      nsOf.good,
      `http://${W1}/x`,
      headers.flatMap((h) => ['-H', h]),
    );
  t.equal((await get(['X-Token: s3cret'])).status, 200, 'X-Token: s3cret');
  const r = await get(['X-Token: s3cret', 'X_Token: other']);
  t.same([r.status, r.body], [403, 'Access denied'], 'with X_Token: other beside it (HTTP_X_TOKEN to a CGI server)');
});
