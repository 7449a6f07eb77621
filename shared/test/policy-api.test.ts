// /v1/policy and /v1/identities over a real unix socket (engine on in-memory maps), and the CLI
// commands on top of them: import/get/delete/validate/trace/identity list, errors naming file and line.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import { createApp, serveApi } from '../src/api/server.ts';
import { AgentClient } from '../src/api/client.ts';
import { createLogger } from '../src/log.ts';
import { MemoryStore } from '../src/store/index.ts';
import { PolicyEngine } from '../src/policy/engine.ts';
import { PolicyClient } from '../src/policy/client.ts';
import { identityRouter, policyRouter } from '../src/api/policy-routes.ts';
import { registerPolicyCommands } from '../src/cli/policy.ts';
import { registerIdentityCommands } from '../src/cli/identity.ts';
import { MemoryPolicyOps, WEB_FROM_CLIENT } from './lib/policy.ts';
import type { Core } from '../src/core.ts';
import type { Endpoint } from '../src/types.ts';

t.test('API and CLI', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-polapi-'));
  const socket = path.join(dir, 'api.sock');
  const engine = await PolicyEngine.open({
    store: new MemoryStore(),
    ops: new MemoryPolicyOps(100000, 10000, [101, 102]),
    hostAddresses: () => [],
  });
  await engine.start();
  const endpoints: Endpoint[] = [];
  for (const [id, labels] of [
    [1, { app: 'web' }],
    [2, { app: 'client' }],
  ] as const) {
    const identity = await engine.identityFor(labels);
    const ep = {
      id,
      containerId: `c${id}`,
      ifName: 'eth0',
      hostIfIndex: 100 + id,
      identity,
      labels,
      metadata: {},
      ips: [{ address: `10.9.0.${id}/32`, gateway: '10.9.0.254', family: 4, subnet: '10.9.0.0/24' }],
    } as unknown as Endpoint;
    endpoints.push(ep);
    await engine.endpointAttached(ep);
  }
  // The CLI finds endpoints by name through the endpoint list before it asks the policy view.
  const core = {
    endpoints: {
      list: () => endpoints,
      get: (cid: string, ifName: string) => endpoints.find((e) => e.containerId === cid && e.ifName === ifName),
    },
  } as unknown as Core;
  const app = createApp({
    core,
    log: createLogger({ level: 'silent' }),
    version: 'test',
    check: () => [],
    status: () => ({}) as never,
    routers: [
      { path: '/v1/policy', router: policyRouter(engine, { auditMode: () => false, drops: () => ({}) }) },
      { path: '/v1/identities', router: identityRouter(engine) },
    ],
  });
  const server = await serveApi(app, socket);
  t.teardown(() => {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const client = new AgentClient({ socketPath: socket });
  const pc = new PolicyClient(client);

  const r = await pc.import(WEB_FROM_CLIENT);
  t.match(r, { revision: 1, changes: [{ name: 'web', change: 'created' }] });
  t.ok(r.enforcedMs >= 0);
  t.match(await pc.list(), {
    revision: 1,
    items: [{ name: 'web', kind: 'CiliumNetworkPolicy', rules: { ingress: 1, egress: 0 } }],
  });
  t.match(await pc.get('web'), { name: 'web', revision: 1, policy: { name: 'web' } });
  await t.rejects(pc.get('nope'), { status: 404, code: 'policy_not_found' });
  const bad = await pc.import(WEB_FROM_CLIENT.replace('port: "80"', 'port: "eighty"')).catch((e) => e);
  t.equal(bad.status, 400);
  t.match(
    bad.message,
    /<input>:8:\d+: spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: named port "eighty" is not supported/,
    'API error names field and line',
  );
  t.equal(bad.details.issues[0].line, 8);
  t.match(await pc.validate('kind: Nope'), { valid: false, issues: [{ path: 'kind' }] });
  const tr = await pc.trace({ labels: { app: 'client' } }, { labels: { app: 'web' } }, '80/tcp');
  t.equal(tr.verdict, 'allow');
  t.match(
    tr.steps.find((s) => s.direction === 'ingress'),
    { direction: 'ingress', verdict: 'allow', rule: { policy: 'web', path: 'spec.ingress[0]' } },
  );
  await t.rejects(pc.trace({ labels: {} }, { labels: {} }, '99999/tcp'), { status: 400, message: /port/ });
  t.match(await pc.endpoint('c1', 'eth0'), {
    enforcement: { ingress: 'default-deny', egress: 'allow-all' },
    policies: [{ name: 'web' }],
  });
  t.match(await pc.identities(), [{ id: 1, kind: 'reserved' }]);
  const big = Array.from(
    { length: 3000 },
    (_, i) => `  - fromCIDR: ["198.18.${i >> 8}.${i & 255}/32"]\n    toPorts: [{ports: [{port: "443"}]}]`,
  ).join('\n');
  const bigText = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: big}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
${big}
`;
  t.ok(bigText.length > 100_000);
  t.match(await pc.import(bigText), { revision: 2 }, 'large imports go as application/yaml');
  t.match(await pc.delete(['web', 'ghost']), { revision: 3, unknown: ['ghost'] });
  await t.rejects(pc.delete(['ghost']), { status: 404, code: 'policy_not_found', message: /no policy named "ghost"/ });

  // CLI on top.
  const file = path.join(dir, 'p.yaml');
  fs.writeFileSync(file, WEB_FROM_CLIENT.replace('protocol: TCP', 'protocol: TCPP'));
  const run = async (...args: string[]) => {
    const out: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string) => {
      out.push(s);
      return true;
    }) as typeof process.stdout.write;
    const program = new Command('membrane').exitOverride();
    registerPolicyCommands(program, { client: () => client });
    registerIdentityCommands(program, { client: () => client });
    try {
      await program.parseAsync(['node', 'membrane', ...args]);
      return { out: out.join(''), error: null as string | null };
    } catch (e) {
      return { out: out.join(''), error: (e as Error).message };
    } finally {
      process.stdout.write = write;
    }
  };
  t.match(
    (await run('policy', 'validate', file)).error,
    new RegExp(`${file}:8:\\d+: spec\\.ingress\\[0\\]\\.toPorts\\[0\\]\\.ports\\[0\\]\\.protocol: protocol "TCPP" is not one of`),
  );
  fs.writeFileSync(file, WEB_FROM_CLIENT);
  t.match((await run('policy', 'validate', file)).out, /valid: CiliumNetworkPolicy web/);
  t.match((await run('policy', 'import', file)).out, /revision 4: created web/);
  t.match((await run('policy', 'get')).out, /web\s+CiliumNetworkPolicy\s+1/);
  t.match((await run('policy', 'get', 'web')).out, /endpointSelector/);
  t.match(
    (await run('policy', 'trace', '--src', 'app=client', '--dst', 'app=web', '--dport', '80/tcp')).out,
    /ALLOWED: 80\/tcp[\s\S]*allowed by web spec\.ingress\[0\]/,
  );
  t.match(
    (await run('policy', 'trace', '--src', 'app=client', '--dst', 'app=web', '--dport', '22/tcp')).out,
    /DENIED[\s\S]*default deny/,
  );
  process.exitCode = 0;
  t.match((await run('identity', 'list')).out, /ID\s+KIND[\s\S]*app=web/);
  t.match((await run('policy', 'endpoint', 'c1')).out, /Selected by:.*web \[ingress\]/);
  t.match((await run('policy', 'delete', '--all')).out, /deleted web/);
});
