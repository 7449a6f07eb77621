// cilium-dbg's verbs on a real agent: status --brief (OK, and a degraded part named)/--verbose, version, -o yaml/json and
// --no-headers, endpoint get by numeric id (and policy endpoint/audit), endpoint labels (changing them changes the identity),
// identity get, and the bpf verbs reading the real maps (a live connection in the conntrack table
// and gone after a flush, policy entries after an import, endpoint addresses in the ipcache, policy
// drops in the datapath counters). Pods are netns of our own; every name is unique.
import t from 'tap';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { ip4, randomId, REPO, startAgent, type TestAgent } from './lib/agent.ts';
import { createNetns, type TestNetns } from './lib/netns.ts';
import { type CliResult, membrane } from './lib/cli.ts';
import { probe } from './lib/probe.ts';
import { killAll, startEchoServer } from './lib/tcp.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import type { Endpoint } from '../shared/src/types.ts';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}
// Every verb is a fresh Node process through tsx (1-3 s each on a loaded 2-vCPU machine): more than
// the default 300 s file budget when other integration files run alongside.
t.setTimeout(10 * 60_000);

const execFileP = promisify(execFile);
const PORT = 7600 + Math.floor(Math.random() * 300);
const run = randomId(3);
let agent: TestAgent;
const nss: TestNetns[] = [];
const servers: Awaited<ReturnType<typeof startEchoServer>>[] = [];
let client: Endpoint, server: Endpoint;
let nsClient: TestNetns;

function cli(...args: string[]): Promise<CliResult> {
  return membrane(['--socket', agent.socket, ...args]);
}

t.before(async () => {
  agent = await startAgent();
  nsClient = createNetns('mbcli');
  const nsServer = createNetns('mbcli');
  nss.push(nsClient, nsServer);
  client = await agent.client.createEndpoint({
    containerId: `cli-client-${run}`,
    netns: nsClient.path,
    ifName: 'eth0',
    labels: { app: 'client', run },
  });
  server = await agent.client.createEndpoint({
    containerId: `cli-server-${run}`,
    netns: nsServer.path,
    ifName: 'eth0',
    labels: { app: 'server', run },
  });
  servers.push(await startEchoServer(nsServer, PORT, '0.0.0.0'));
});

t.teardown(async () => {
  killAll(servers);
  await agent?.cleanup();
  for (const n of nss) n.remove();
});

t.test('status: table, --brief, --verbose, -o yaml; version', async (t) => {
  const plain = await cli('status');
  t.equal(plain.code, 0, plain.err);
  t.match(plain.out, /^Agent: +Ok +\S+ \(node .+, up \S+\)\nEndpoints: +2\n/);
  t.match(plain.out, /\nPolicy: +revision \d+, 0 policies, audit mode off\n/);
  t.match(plain.out, /\nObserver: +.*observer\.sock, 4096 flows kept\n/);
  t.equal((await cli('status', '--brief')).out, 'OK\n');
  // A real degraded part: this agent's own host device (every gateway address) taken down.
  execFileSync('ip', ['link', 'set', agent.hostDevice, 'down']);
  try {
    const degraded = await cli('status', '--brief');
    t.same(
      [degraded.code, degraded.out],
      [1, `DEGRADED: Datapath: host device ${agent.hostDevice} is down\n`],
      '--brief names the degraded part and fails',
    );
    t.match(
      (await cli('status')).out,
      new RegExp(`^Agent: +Degraded .*\\n  Datapath: +host device ${agent.hostDevice} is down\\n`),
      'the table says it too',
    );
  } finally {
    execFileSync('ip', ['link', 'set', agent.hostDevice, 'up']);
  }
  t.equal((await cli('status', '--brief')).out, 'OK\n', 'OK again once the device is up');
  const verbose = await cli('status', '--verbose');
  t.match(verbose.out, /\nConntrack: +\d+\/\d+ entries \([\d.]+%\)\n/);
  t.match(verbose.out, /\nDrops by reason:\n/);
  const yaml = parseYaml((await cli('status', '-o', 'yaml')).out) as { endpoints: number; nodeName: string };
  t.equal(yaml.endpoints, 2);
  t.ok(yaml.nodeName);
  const v = await cli('version');
  t.match(v.out, /^Client: \S+\nDaemon: \S+\n$/);
  t.same(Object.keys(JSON.parse((await cli('version', '-o', 'json')).out)), ['client', 'daemon']);
  const down = await execFileP(
    process.execPath,
    ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), '--socket', '/nonexistent/agent.sock', 'status', '--brief'],
    { cwd: REPO },
  ).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  t.equal(down.code, 1, '--brief fails when the agent is not there');
  t.match(down.stderr, /cannot reach the membrane agent/);
});

t.test('endpoint list -o yaml / --no-headers; get by numeric id; labels', async (t) => {
  const list = parseYaml((await cli('endpoint', 'list', '-o', 'yaml')).out) as Endpoint[];
  t.same(list.map((e) => e.id).sort(), [client.id, server.id].sort());
  const bare = await cli('endpoint', 'list', '--no-headers');
  t.notMatch(bare.out, /^ID /);
  t.equal(bare.out.trim().split('\n').length, 2);
  const byId = await cli('endpoint', 'get', String(server.id));
  t.equal(byId.code, 0, byId.err);
  t.match(byId.out, new RegExp(`^ID: +${server.id}\\nContainer: +cli-server-${run}\\n`));
  t.equal(JSON.parse((await cli('endpoint', 'get', String(client.id), '-o', 'json')).out).containerId, `cli-client-${run}`);
  t.equal(
    JSON.parse((await cli('endpoint', 'get', `cli-client-${run}`, 'eth0', '-o', 'json')).out).id,
    client.id,
    'container id and interface still work',
  );
  const missing = await cli('endpoint', 'get', '99999');
  t.equal(missing.code, 1);
  t.match(missing.err, /no endpoint is named "99999"/);
  t.match((await cli('endpoint', 'labels', String(client.id))).out, /^LABELS\napi:app=client\napi:run=/);
  const changed = await cli('endpoint', 'labels', String(client.id), '-a', 'tier=front', '-d', 'run');
  t.equal(changed.code, 0, changed.err);
  t.match(changed.out, /api:tier=front/);
  const after = await agent.client.getEndpoint(`cli-client-${run}`, 'eth0');
  t.same(after.labels, { 'api:app': 'client', 'api:tier': 'front' });
  t.not(after.identity, client.identity, 'new labels, new identity');
  client = after;
  const bad = await cli('endpoint', 'labels', String(client.id), '-d', 'nope');
  t.equal(bad.code, 1);
  t.match(bad.err, /has no label "nope"/);
});

t.test('policy endpoint and policy audit name the endpoint as endpoint get does', async (t) => {
  const view = await cli('policy', 'endpoint', String(server.id));
  t.equal(view.code, 0, view.err);
  t.match(view.out, new RegExp(`^Identity: +${server.identity} \\(`, 'm'), 'by numeric id');
  t.match(view.out, /^Selected by: +- \(no policy selects it: allow all\)$/m);
  t.equal(
    (await cli('policy', 'endpoint', `cli-server-${run}`, 'eth0')).out,
    view.out,
    'by container id and interface, the same view',
  );
  const on = await cli('policy', 'audit', String(server.id), '--mode', 'on');
  t.equal(on.code, 0, on.err);
  t.equal(on.out, `endpoint ${server.id} (cli-server-${run}/eth0): audit on\n`);
  t.match((await cli('policy', 'endpoint', String(server.id))).out, /^Policy: +.*, audit mode \(/m, 'the view shows audit mode');
  t.equal(
    (await cli('policy', 'audit', String(server.id), '--mode', 'default')).out,
    `endpoint ${server.id} (cli-server-${run}/eth0): audit off\n`,
  );
  const missing = await cli('policy', 'audit', '99999', '--mode', 'on');
  t.equal(missing.code, 1);
  t.match(missing.err, /no endpoint is named "99999"/);
});

t.test('identity get', async (t) => {
  const r = await cli('identity', 'get', String(client.identity));
  t.equal(r.code, 0, r.err);
  t.match(r.out, new RegExp(`^ID +LABELS\\n${client.identity} +api:app=client\\n +api:tier=front\\n$`));
  t.match((await cli('identity', 'get', '2')).out, /2 +reserved:world/);
  t.equal(JSON.parse((await cli('identity', 'get', String(server.identity), '-o', 'json')).out).id, server.identity);
  const none = await cli('identity', 'get', '77777');
  t.equal(none.code, 1);
  t.match(none.err, /no identity 77777/);
  t.match((await cli('identity', 'get', 'x')).err, /identity "x" is not a number/);
});

// Connects, gets one echo, then holds the connection open without traffic (nothing re-creates its
// conntrack entries after a flush, and no RST closes them first).
const IDLE = `
const s = require('net').connect(Number(process.argv[2]), process.argv[1]);
s.on('connect', () => s.write('ping'));
s.once('data', () => process.stdout.write('up\\n'));
s.on('error', (e) => { process.stdout.write('error ' + e.code + '\\n'); process.exit(1); });
setInterval(() => {}, 1000);
`;

t.test('bpf ct list shows a live connection; bpf ct flush removes it', async (t) => {
  const idle = nsClient.spawn(process.execPath, ['-e', IDLE, ip4(server), String(PORT)]);
  t.teardown(() => {
    idle.kill('SIGKILL');
  });
  const up = await new Promise<string>((resolve) => {
    idle.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim()));
    setTimeout(() => resolve('timeout'), 10_000);
  });
  t.equal(up, 'up', 'the connection is up');
  const pattern = new RegExp(
    `TCP +\\S+ +${ip4(client).replace(/\./g, '\\.')}:\\d+ +${ip4(server).replace(/\./g, '\\.')}:${PORT} +ESTABLISHED +\\d+s +\\d+/\\d+`,
  );
  const list = await cli('bpf', 'ct', 'list');
  t.match(list.out, /^PROTO +SCOPE +SOURCE +DESTINATION +STATE +EXPIRES +PACKETS +BYTES +ENDPOINT +IDENTITIES +FLAGS\n/);
  t.match(list.out, pattern);
  const json = JSON.parse((await cli('bpf', 'ct', 'list', '-o', 'json')).out) as { dport: number; owner: number }[];
  t.ok(json.some((e) => e.dport === PORT && (e.owner === client.id || e.owner === server.id)));
  const flushed = await cli('bpf', 'ct', 'flush');
  t.match(flushed.out, /^Flushed [1-9]\d* entries from the conntrack table\n$/);
  t.notMatch((await cli('bpf', 'ct', 'list')).out, pattern, 'gone after the flush');
});

t.test('bpf policy get, bpf ipcache list, bpf metrics list', async (t) => {
  const pc = new PolicyClient(agent.client);
  t.teardown(() => pc.delete('all'));
  await pc.import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cli-${run}}
spec:
  endpointSelector: {matchLabels: {app: server, run: "${run}"}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "${PORT}", protocol: TCP}]}]
`);
  const entries = await cli('bpf', 'policy', 'get', String(server.id));
  t.equal(entries.code, 0, entries.err);
  t.match(
    entries.out,
    /^POLICY +DIRECTION +IDENTITY +LABELS \(source:key\[=value\]\) +PORT\/PROTO +PROXY PORT +BYTES +PACKETS +RULE\n/,
  );
  t.match(
    entries.out,
    new RegExp(`Allow +Ingress +${client.identity} +api:app=client,api:tier=front +${PORT}/TCP +- +\\d+ +\\d+ +0x[0-9a-f]+`),
  );
  t.equal(
    (await cli('bpf', 'policy', 'get', String(client.id), '--no-headers')).out,
    '',
    'the client is selected by no policy: no entries',
  );
  t.match((await cli('bpf', 'policy', 'get', '--all')).out, new RegExp(`\\n${server.id} +Allow +Ingress`));
  t.match((await cli('bpf', 'policy', 'get')).err, /name an endpoint id, or pass --all/);
  t.match((await cli('bpf', 'policy', 'get', '99999')).err, /no endpoint with id 99999/);

  const ipcache = await cli('bpf', 'ipcache', 'list');
  t.match(ipcache.out, /^IP PREFIX\/ADDRESS +IDENTITY\n/);
  t.match(ipcache.out, new RegExp(`${ip4(server).replace(/\./g, '\\.')}/32 +${server.identity}\\n`));
  const ipJson = JSON.parse((await cli('bpf', 'ipcache', 'list', '-o', 'json')).out) as { prefix: string; identity: number }[];
  t.ok(ipJson.some((e) => e.prefix === `${ip4(client)}/32` && e.identity === client.identity));
  t.same(
    JSON.parse((await cli('bpf', 'tunnel', 'list', '-o', 'json')).out),
    { config: { tunnelIfindex: 0, underlay: 4 }, entries: [] },
    'bpf tunnel list on a single node: no overlay device, no entries',
  );
  t.equal((await cli('bpf', 'tunnel', 'list')).out, 'TUNNEL  VALUE  NODE  NODE ID\n', 'and a table of just its header');

  // A denied connection (wrong port) shows up as a policy drop in the datapath's counters.
  t.equal(await probe(nsClient, ip4(server), PORT + 1), 'timeout');
  const metrics = await cli('bpf', 'metrics', 'list');
  t.match(metrics.out, /^REASON +DIRECTION +PACKETS +BYTES\nSuccess +EGRESS +[1-9]\d* +[1-9]\d*\nSuccess +INGRESS +\d+ +\d+\n/);
  t.match(metrics.out, /\nPolicy denied +- +[1-9]\d* +[1-9]\d*\n/);
  const m = JSON.parse((await cli('bpf', 'metrics', 'list', '-o', 'json')).out) as { drops: { reason: string }[] };
  t.ok(m.drops.some((d) => d.reason === 'POLICY_DENIED'));
});

t.test('policy import: a JSON rule array as cilium-dbg takes it, and -n for documents without a namespace', async (t) => {
  const pc = new PolicyClient(agent.client);
  t.teardown(() => pc.delete('all'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-cli-pol-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const rules = path.join(dir, 'rules.json');
  fs.writeFileSync(
    rules,
    JSON.stringify([
      {
        labels: [{ key: 'name', value: `rules-${run}`, source: 'unspec' }],
        description: 'server accepts the client',
        endpointSelector: { matchLabels: { app: 'server', run } },
        ingress: [{ fromEndpoints: [{ matchLabels: { app: 'client' } }], toPorts: [{ ports: [{ protocol: 'TCP' }] }] }],
      },
    ]),
  );
  const imported = await cli('policy', 'import', rules);
  t.equal(imported.code, 0, imported.err);
  t.match(imported.out, new RegExp(`^revision \\d+: created rules-${run}\\n`));
  t.match((await cli('policy', 'get')).out, new RegExp(`rules-${run} +CiliumClusterwideNetworkPolicy`));
  t.equal(await probe(nsClient, ip4(server), PORT, 5000), 'ok', 'client -> server on any TCP port (a port-less toPorts entry)');
  const cnp = path.join(dir, 'cnp.yaml');
  fs.writeFileSync(
    cnp,
    `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ns-${run}}\nspec: {endpointSelector: {}}\n`,
  );
  t.match((await cli('policy', 'import', '-n', 'shop', cnp)).out, new RegExp(`created shop/ns-${run}`), '-n shop');
  t.match((await cli('policy', 'import', cnp)).out, new RegExp(`created ns-${run}\\n`), 'no -n: the default namespace');
  const noName = path.join(dir, 'noname.json');
  fs.writeFileSync(noName, '[{"endpointSelector": {}}]');
  const bad = await cli('policy', 'validate', noName);
  t.equal(bad.code, 1);
  t.match(bad.err, /noname\.json:1:2: \[0\]\.labels: a rule needs a name/);
  t.match((await cli('policy', 'import', '-n', 'Bad_NS', cnp)).err, /namespace "Bad_NS" is not a valid namespace name/);
});

t.test('completion bash completes verbs, flags and flag values', async (t) => {
  const script = (await cli('completion', 'bash')).out;
  const complete = async (words: string[]) => {
    const { stdout } = await execFileP('bash', [
      '-c',
      `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _membrane; echo "\${COMPREPLY[*]}"`,
    ]);
    return stdout.trim().split(' ');
  };
  t.same(await complete(['membrane', 'bpf', '']), ['ct', 'policy', 'ipcache', 'tunnel', 'metrics', '--help']);
  t.same(await complete(['membrane', 'bpf', 'ct', 'l']), ['list']);
  t.same(await complete(['membrane', 'endpoint', 'list', '-o', '']), ['json', 'yaml', 'table']);
  t.ok(await complete(['membrane', 'observe', '--to-']).then((w) => w.includes('--to-namespace')));
  t.match((await cli('completion', 'zsh')).err, /only bash/);
});
