// Every verb through runCni against the fake agent (protocol layer, result versions, error mapping).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startFakeAgent, type FakeAgent } from './lib/fake-agent.ts';
import { cniCall, fakeNetns, tmpDir } from './lib/inproc.ts';
import { listPendingDeletes, pendingDeletesDir } from '../../shared/src/pending-deletes/index.ts';
import type { DelegateCall } from '../src/delegate.ts';
import { CniError } from '../src/errors.ts';

let agent: FakeAgent;
const ns = fakeNetns();
const state = tmpDir();
t.before(async () => {
  agent = await startFakeAgent();
});
t.teardown(async () => {
  await agent.close();
  ns.remove();
  fs.rmSync(state, { recursive: true, force: true });
});

const conf = (extra: object = {}) => ({
  cniVersion: '1.0.0',
  name: 'unitnet',
  type: 'membrane-cni',
  agentSocket: agent.socket,
  stateDir: state,
  ...extra,
});
const K8S_ARGS = 'IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1;K8S_POD_INFRA_CONTAINER_ID=c-add;K8S_POD_UID=u1';

t.test('ADD answers in the requested version, DEL twice and with an empty netns succeed', async (t) => {
  for (const v of ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']) {
    const cid = `c-add-${v.replace(/\./g, '')}`;
    const r = await cniCall('ADD', conf({ cniVersion: v }), { containerId: cid, netns: ns.path, args: K8S_ARGS });
    t.equal(r.code, 0, `ADD ${v}: ${r.stdout}`);
    t.equal(r.out.cniVersion, v);
    t.equal(r.out.interfaces[1].sandbox, ns.path);
    t.equal(r.out.ips[0].interface, 1);
    t.equal('version' in r.out.ips[0], v.startsWith('0.'), `ips[].version only before 1.0.0 (${v})`);
    t.equal('mtu' in r.out.interfaces[1], v === '1.1.0', `interface mtu only in 1.1.0 (${v})`);
    const posted = agent.requests.filter((q) => q.method === 'POST').pop()!.body as any;
    t.same(posted.labels, {}, 'no caller labels: the namespace travels as metadata');
    t.equal(posted.metadata['k8s:io.kubernetes.pod.namespace'], 'ns1');
    t.equal(posted.metadata['k8s:io.kubernetes.pod.name'], 'pod1');
    t.equal(posted.metadata['cni:network'], 'unitnet');
    const del = await cniCall('DEL', conf({ cniVersion: v, prevResult: r.out }), { containerId: cid, netns: ns.path });
    t.same([del.code, del.stdout], [0, ''], 'DEL prints nothing');
    t.equal(
      (await cniCall('DEL', conf({ cniVersion: v }), { containerId: cid, netns: '' })).code,
      0,
      'second DEL, empty CNI_NETNS',
    );
  }
  t.equal(agent.endpoints.size, 0);
});

t.test('ADD errors map to CNI codes and name the object', async (t) => {
  const gone = await cniCall('ADD', conf(), { containerId: 'c-e1', netns: '/run/netns/does-not-exist-mbr' });
  t.same([gone.code, gone.out.code], [1, 4]);
  t.match(gone.out.msg, /CNI_NETNS \/run\/netns\/does-not-exist-mbr/);
  const cases: [string, number, string, number][] = [
    ['pool_exhausted', 409, 'no free address', 11],
    ['network_not_found', 404, 'network "x" does not exist', 7],
    ['bad_request', 400, 'mac: invalid', 7],
    ['internal', 500, 'netlink exploded', 100],
    ['endpoint_exists', 409, 'exists elsewhere', 4],
    ['unavailable', 503, 'store: cannot write (disk full)', 11],
    ['a_kind_from_a_newer_agent', 400, 'something new', 100],
  ];
  for (const [code, status, message, want] of cases) {
    agent.failNextCreate = { status, code, message };
    const r = await cniCall('ADD', conf(), { containerId: 'c-e2', netns: ns.path });
    t.equal(r.out.code, want, `${code} -> ${want}`);
    t.match(r.out.msg, /ADD c-e2\/eth0/);
    t.match(r.out.msg, message);
  }
  const net = await cniCall('ADD', conf({ network: 'nope' }), { containerId: 'c-e3', netns: ns.path });
  t.equal(net.out.code, 7);
  t.equal(agent.endpoints.size, 0, 'nothing left behind');
});

t.test('exhausted pool: ADD says try again later, STATUS says not available', async (t) => {
  const small = await startFakeAgent({ poolSize: 1 });
  t.teardown(() => small.close());
  const c = (extra: object = {}) => conf({ agentSocket: small.socket, ...extra });
  t.equal((await cniCall('ADD', c(), { containerId: 'p1', netns: ns.path })).code, 0);
  const r = await cniCall('ADD', c(), { containerId: 'p2', netns: ns.path });
  t.equal(r.out.code, 11);
  const s = await cniCall('STATUS', c({ cniVersion: '1.1.0' }));
  t.equal(s.out.code, 50);
  t.match(s.out.msg, /exhausted/);
});

t.test('agent down: ADD fails fast with 11, DEL is queued durably, STATUS says 50', async (t) => {
  const down = conf({ agentSocket: path.join(state, 'no-agent.sock') });
  const add = await cniCall('ADD', down, { containerId: 'c-down', netns: ns.path });
  t.equal(add.out.code, 11);
  t.match(add.out.msg, /membrane agent not reachable/);
  t.match(add.out.details, /no socket there/, 'fails at connect, without waiting for a deadline');
  const del = await cniCall('DEL', down, { containerId: 'c-down', netns: ns.path });
  t.same([del.code, del.stdout], [0, '']);
  t.notOk(fs.existsSync(path.join(state, 'cni-pending-deletes')), "not under the config's stateDir");
  const q = listPendingDeletes(pendingDeletesDir(path.join(state, 'no-agent.sock')));
  t.same(
    q.map((e) => [e.entry?.containerId, e.entry?.ifName, e.entry?.cniNetwork]),
    [['c-down', 'eth0', 'unitnet']],
  );
  const st = await cniCall('STATUS', { ...down, cniVersion: '1.1.0' });
  t.equal(st.out.code, 50);
  const st2 = await cniCall('STATUS', conf({ cniVersion: '1.1.0' }));
  t.equal(st2.code, 0, 'STATUS ok with the agent up');
  t.equal((await cniCall('STATUS', conf({ cniVersion: '1.0.0' }))).out.code, 1, 'STATUS needs 1.1.0');
});

t.test('DEL with the agent down and an unwritable queue is an I/O error, not a silent success', async (t) => {
  const blocked = conf({ agentSocket: path.join(state, 'unwritable-file-as-dir', 'none.sock') });
  fs.writeFileSync(path.join(state, 'unwritable-file-as-dir'), '');
  const r = await cniCall('DEL', blocked, { containerId: 'c-q' });
  t.equal(r.out.code, 5, 'queue not writable -> I/O error, not silent success');
});

t.test('ADD timeout: 11, and the agent is asked to undo', async (t) => {
  agent.delayMs = 400;
  t.teardown(() => {
    agent.delayMs = 0;
  });
  const r = await cniCall('ADD', conf({ addTimeoutMs: 150 }), { containerId: 'c-slow', netns: ns.path });
  t.equal(r.out.code, 11);
  t.ok(
    agent.requests.some((q) => q.method === 'DELETE' && q.url.includes('c-slow')),
    'delete sent after the timeout',
  );
});

t.test('CHECK', async (t) => {
  const add = await cniCall('ADD', conf(), { containerId: 'c-chk', netns: ns.path });
  t.teardown(() => cniCall('DEL', conf(), { containerId: 'c-chk' }));
  const ok = await cniCall('CHECK', conf({ prevResult: add.out }), { containerId: 'c-chk', netns: ns.path });
  t.same([ok.code, ok.stdout], [0, '']);
  const wrong = structuredClone(add.out);
  wrong.ips[0].address = '10.250.0.99/32';
  const bad = await cniCall('CHECK', conf({ prevResult: wrong }), { containerId: 'c-chk', netns: ns.path });
  t.equal(bad.out.code, 102);
  t.match(bad.out.details, /10\.250\.0\.99\/32/);
  const noRoute = structuredClone(add.out);
  noRoute.routes = noRoute.routes.filter((r: any) => r.dst !== '0.0.0.0/0');
  const nr = await cniCall('CHECK', conf({ prevResult: noRoute }), { containerId: 'c-chk', netns: ns.path });
  t.match(nr.out.details, /route 0\.0\.0\.0\/0 via 10\.250\.0\.1 is missing from prevResult/);
  agent.datapathProblems = ['BPF program is not attached to mbrX'];
  const dp = await cniCall('CHECK', conf({ prevResult: add.out }), { containerId: 'c-chk', netns: ns.path });
  agent.datapathProblems = [];
  t.equal(dp.out.code, 102);
  t.match(dp.out.msg, /BPF program/);
  const unknown = await cniCall('CHECK', conf({ prevResult: add.out }), { containerId: 'c-none', netns: ns.path });
  t.equal(unknown.out.code, 102);
  t.match(unknown.out.msg, /no such endpoint/);
  t.equal((await cniCall('CHECK', conf(), { containerId: 'c-chk', netns: ns.path })).out.code, 7, 'no prevResult');
  t.equal(
    (await cniCall('CHECK', conf({ cniVersion: '0.3.1', prevResult: add.out }), { containerId: 'c-chk', netns: ns.path })).out
      .code,
    1,
  );
});

t.test("GC removes only this network's endpoints missing from the valid list", async (t) => {
  for (const cid of ['g1', 'g2', 'g3']) t.equal((await cniCall('ADD', conf(), { containerId: cid, netns: ns.path })).code, 0);
  t.equal((await cniCall('ADD', conf({ name: 'othernet' }), { containerId: 'g4', netns: ns.path })).code, 0);
  const gc = await cniCall(
    'GC',
    conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [{ containerID: 'g2', ifname: 'eth0' }] }),
  );
  t.same([gc.code, gc.stdout], [0, '']);
  t.same([...agent.endpoints.keys()].sort(), ['g2/eth0', 'g4/eth0']);
  const old = await cniCall('GC', conf({ cniVersion: '1.1.0', 'cni.dev/attachments': [] }));
  t.equal(old.code, 0, 'falls back to cni.dev/attachments');
  t.same([...agent.endpoints.keys()], ['g4/eth0']);
  t.equal((await cniCall('GC', conf({ cniVersion: '1.1.0' }))).out.code, 7, 'no list -> 7');
  await cniCall('DEL', conf({ name: 'othernet' }), { containerId: 'g4' });
});

t.test('VERSION answers whatever stdin holds', async (t) => {
  t.same((await cniCall('VERSION', 'not json')).out, {
    cniVersion: '1.1.0',
    supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'],
  });
  t.equal((await cniCall('VERSION', { cniVersion: '0.4.0' })).out.cniVersion, '0.4.0');
  t.equal((await cniCall('NOPE', conf())).out.code, 4, 'unknown command');
  t.equal((await cniCall('ADD', conf(), { env: { CNI_COMMAND: undefined } })).out.code, 4, 'no CNI_COMMAND');
});

t.test('delegated IPAM: same stdin, ips to the agent as externalIpam, released on failure and DEL', async (t) => {
  const calls: DelegateCall[] = [];
  let failWith: CniError | undefined;
  const exec = (c: DelegateCall) => {
    calls.push(c);
    if (failWith) throw failWith;
    if (c.verb === 'ADD')
      return {
        stdout: JSON.stringify({
          cniVersion: '1.0.0',
          ips: [{ address: '10.77.0.9/24', gateway: '10.77.0.1' }],
          dns: { nameservers: ['10.77.0.1'] },
        }),
      };
    if (c.verb === 'VERSION') return { stdout: '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' };
    return { stdout: '' };
  };
  const c = conf({ ipam: { type: 'host-local', ranges: [[{ subnet: '10.77.0.0/24' }]] } });
  const add = await cniCall('ADD', c, { containerId: 'c-ipam', netns: ns.path, exec });
  t.equal(add.code, 0, add.stdout);
  t.same(
    add.out.ips.map((i: any) => i.address),
    ['10.77.0.9/32'],
  );
  t.same(add.out.dns, { nameservers: ['10.77.0.1'] });
  t.equal(calls[0].stdin.toString(), JSON.stringify(c), 'the IPAM plugin gets our exact stdin');
  const posted = agent.requests.filter((q) => q.method === 'POST').pop()!.body as any;
  t.same([posted.ips, posted.externalIpam], [['10.77.0.9'], true]);
  t.equal((await cniCall('CHECK', { ...c, prevResult: add.out }, { containerId: 'c-ipam', netns: ns.path, exec })).code, 0);
  t.equal(calls.at(-1)!.verb, 'CHECK', 'CHECK forwarded to IPAM');

  calls.length = 0;
  agent.failNextCreate = { status: 500, code: 'internal', message: 'boom' };
  const failed = await cniCall('ADD', c, { containerId: 'c-ipam2', netns: ns.path, exec });
  t.equal(failed.out.code, 100);
  t.same(
    calls.map((x) => x.verb),
    ['ADD', 'DEL'],
    'allocation released after the failed ADD',
  );

  calls.length = 0;
  const gc = await cniCall('GC', { ...c, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] }, { exec });
  t.equal(gc.code, 0, gc.stdout);
  const del = calls.find((x) => x.verb === 'DEL')!;
  t.same(
    [del.env?.CNI_CONTAINERID, JSON.parse(del.stdin.toString()).cniVersion],
    ['c-ipam', '1.0.0'],
    'GC released the address in a version host-local speaks',
  );
  t.notOk(
    calls.some((x) => x.verb === 'GC'),
    'no GC for a delegate that predates it',
  );

  calls.length = 0;
  const down = await cniCall('DEL', { ...c, agentSocket: path.join(state, 'gone.sock') }, { containerId: 'c-ipam', exec });
  t.equal(down.code, 0);
  t.same(
    calls.map((x) => x.verb),
    ['DEL'],
    'IPAM DEL even with the agent down',
  );

  failWith = new CniError(11, 'delegated plugin host-local ADD failed: no IP addresses available in range set');
  const full = await cniCall('ADD', c, { containerId: 'c-ipam3', netns: ns.path, exec });
  t.same(
    [full.out.code, full.out.msg],
    [11, 'delegated plugin host-local ADD failed: no IP addresses available in range set'],
    'IPAM error passed through',
  );
});

t.test('log file gets the story, stdout only the result', async (t) => {
  const logFile = path.join(state, 'logs', 'cni.log');
  const add = await cniCall('ADD', conf({ logFile, logLevel: 'debug' }), { containerId: 'c-log', netns: ns.path });
  await cniCall('DEL', conf({ logFile }), { containerId: 'c-log' });
  t.equal(add.code, 0);
  const lines = fs
    .readFileSync(logFile, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.ok(lines.some((l) => l.verb === 'ADD' && l.msg === 'endpoint created' && l.containerId === 'c-log'));
  t.ok(lines.some((l) => l.verb === 'DEL' && l.msg === 'endpoint deleted'));
  const err = await cniCall('ADD', conf({ logFile }), { containerId: 'c-log', netns: '/nonexistent/ns' });
  t.match(err.stderr, /CNI_NETNS \/nonexistent\/ns cannot be opened/, 'errors also on stderr');
});
