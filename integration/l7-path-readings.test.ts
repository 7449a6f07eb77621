// A path the proxy reads one way and the server behind it another is a way around an HTTP rule.
// Debian's nginx decodes %2F before it resolves dot segments and merges slashes, so under a rule for
// GET /public/.* "/public/..%2Fadmin" and "/public//../admin" would be allowed as written and served
// as nginx's /admin. With nginx as the real server in the pod, the test first shows nginx does serve
// /admin for them (no L7 rule yet), then that the proxy answers each with 403 and nginx never sees
// it, while an encoded slash or a ;parameter inside /public still gets through (the setup:
// lib/l7-http-file.ts).
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ownChild, ownDir, signalAndWait } from './lib/cleanup.ts';
import { curl, RawHttp } from './lib/http.ts';
import { ip4, l7HttpForFile } from './lib/l7-http-file.ts';
import { waitUntil } from '../shared/test/lib/poll.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const f = l7HttpForFile(t);
const PORT = 8081;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public-only}
spec:
  endpointSelector: {matchLabels: {tier: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {stage: live}}]
    toPorts:
    - ports: [{port: "${PORT}", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
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
