// membrane-cni executed exactly as libcni does, against a real agent and netns this test creates:
// every verb in every version, CNI_ARGS into the endpoint, CHECK catching breakage, and bad inputs.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startAgent, randomId, type TestAgent } from './lib/agent.ts';
import { createNetns, ping, linkGone } from './lib/netns.ts';
import { ensureCniBinary, invokeCni } from '../cni/test/lib/exec.ts';
import { claimPrefix24 } from './lib/subnets.ts';
import { listPendingDeletes, pendingDeletesDir } from '../shared/src/pending-deletes/index.ts';

ensureCniBinary();
const VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];
const conf = (agent: TestAgent, extra: object = {}) => ({
  cniVersion: '1.0.0',
  name: `direct-${agent.id}`,
  type: 'membrane-cni',
  agentSocket: agent.socket,
  stateDir: agent.stateDir,
  logFile: path.join(agent.stateDir, 'cni.log'),
  logLevel: 'debug',
  ...extra,
});
const inPool = (agent: TestAgent, cidr: string) => cidr.startsWith(agent.pools[0].split('.').slice(0, 3).join('.') + '.');

t.test('every verb in every version; two pods talk; DEL is idempotent', async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  for (const v of VERSIONS) {
    const a = createNetns('mbc'),
      b = createNetns('mbc');
    t.teardown(() => {
      a.remove();
      b.remove();
    });
    const ids = [`c-${randomId(6)}`, `c-${randomId(6)}`];
    const args = `IgnoreUnknown=1;K8S_POD_NAMESPACE=ns-${v};K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=${ids[0]};K8S_POD_UID=uid-1`;
    const [ra, rb] = await Promise.all([
      invokeCni('ADD', conf(agent, { cniVersion: v }), { containerId: ids[0], netns: a.path, args }),
      invokeCni('ADD', conf(agent, { cniVersion: v }), { containerId: ids[1], netns: b.path }),
    ]);
    t.equal(ra.code, 0, `ADD ${v}: ${ra.stdout}${ra.stderr}`);
    t.equal(rb.code, 0, `ADD ${v} (second pod)`);
    t.equal(ra.out.cniVersion, v, 'result in the requested version');
    const eth0 = ra.out.interfaces[ra.out.ips[0].interface];
    t.same([eth0.name, eth0.sandbox], ['eth0', a.path], 'ips point at the container interface');
    t.match(eth0.mac, /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, 'with a MAC (podman needs it)');
    t.ok(inPool(agent, ra.out.ips[0].address), `address ${ra.out.ips[0].address} from the agent's pool ${agent.pools[0]}`);
    if (v.startsWith('0.')) t.equal(ra.out.ips[0].version, '4', 'old results carry ips[].version');
    const ipA = ra.out.ips[0].address.split('/')[0],
      ipB = rb.out.ips[0].address.split('/')[0];
    t.match(await a.exec('ip', ['-4', 'addr', 'show', 'dev', 'eth0']), ipA, 'address configured in the netns');
    t.ok(await ping(a, ipB), `pod A pings pod B (${v})`);

    const ep = await agent.client.getEndpoint(ids[0], 'eth0');
    t.equal(ep.labels['k8s:io.kubernetes.pod.namespace'], `ns-${v}`, 'CNI_ARGS namespace -> label');
    t.same(
      [ep.metadata['k8s:io.kubernetes.pod.name'], ep.metadata['k8s:io.kubernetes.pod.uid'], ep.metadata['cni:network']],
      ['web', 'uid-1', `direct-${agent.id}`],
      'CNI_ARGS -> metadata',
    );

    if (v !== '0.3.0' && v !== '0.3.1') {
      const chk = await invokeCni('CHECK', conf(agent, { cniVersion: v, prevResult: ra.out }), {
        containerId: ids[0],
        netns: a.path,
        args,
      });
      t.same([chk.code, chk.stdout], [0, ''], `CHECK ${v}: ${chk.stdout}`);
    } else {
      const chk = await invokeCni('CHECK', conf(agent, { cniVersion: v, prevResult: ra.out }), {
        containerId: ids[0],
        netns: a.path,
      });
      t.equal(chk.out.code, 1, `CHECK refused for ${v}`);
    }
    for (const [i, ns] of [
      [0, a],
      [1, b],
    ] as const) {
      const d1 = await invokeCni('DEL', conf(agent, { cniVersion: v, prevResult: i ? rb.out : ra.out }), {
        containerId: ids[i],
        netns: ns.path,
      });
      t.same([d1.code, d1.stdout], [0, ''], `DEL ${v}`);
      const d2 = await invokeCni('DEL', conf(agent, { cniVersion: v }), { containerId: ids[i], netns: '' });
      t.equal(d2.code, 0, 'second DEL with empty CNI_NETNS');
    }
    t.ok(await linkGone(ep.hostIfName), 'host veth gone');
    a.remove();
    const d3 = await invokeCni('DEL', conf(agent, { cniVersion: v }), { containerId: ids[0], netns: a.path });
    t.equal(d3.code, 0, 'DEL with a netns that no longer exists');
  }
  t.same(await agent.client.listEndpoints(), [], 'no endpoint left');
  const st = await invokeCni('STATUS', conf(agent, { cniVersion: '1.1.0' }));
  t.same([st.code, st.stdout], [0, ''], 'STATUS: ready');
  const ver = await invokeCni('VERSION', { cniVersion: '1.0.0' }, { netns: 'dummy', ifName: 'dummy', path: 'dummy' });
  t.same(ver.out, { cniVersion: '1.0.0', supportedVersions: VERSIONS }, 'VERSION as podman asks it');
  const log = fs.readFileSync(path.join(agent.stateDir, 'cni.log'), 'utf8');
  t.match(log, /"msg":"endpoint created"/, 'log file written');
});

t.test('CHECK catches a broken attachment; GC removes what the runtime no longer lists', async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  const nss = [createNetns('mbc'), createNetns('mbc'), createNetns('mbc')];
  t.teardown(() => {
    for (const n of nss) n.remove();
  });
  const c = conf(agent, { cniVersion: '1.1.0' });
  const ids = nss.map(() => `g-${randomId(6)}`);
  const adds = [];
  for (const [i, ns] of nss.entries()) adds.push(await invokeCni('ADD', c, { containerId: ids[i], netns: ns.path }));
  t.ok(
    adds.every((r) => r.code === 0),
    'three pods added',
  );
  await nss[0].exec('ip', ['addr', 'flush', 'dev', 'eth0']);
  const chk = await invokeCni('CHECK', { ...c, prevResult: adds[0].out }, { containerId: ids[0], netns: nss[0].path });
  t.equal(chk.out.code, 102, 'CHECK fails');
  t.match(chk.out.details, adds[0].out.ips[0].address, 'and names the missing address');
  const forged = structuredClone(adds[1].out);
  forged.interfaces[1].mac = '02:00:00:00:00:99';
  const chk2 = await invokeCni('CHECK', { ...c, prevResult: forged }, { containerId: ids[1], netns: nss[1].path });
  t.equal(chk2.out.code, 102, 'CHECK fails when prevResult disagrees with the endpoint');

  const gc = await invokeCni('GC', {
    ...c,
    'cni.dev/valid-attachments': [{ containerID: ids[1], ifname: 'eth0' }],
    'cni.dev/attachments': [{ containerID: ids[1], ifname: 'eth0' }],
  });
  t.same([gc.code, gc.stdout], [0, ''], `GC: ${gc.stdout}`);
  t.same(
    (await agent.client.listEndpoints()).map((e) => e.containerId),
    [ids[1]],
    'only the valid attachment is left',
  );
  const pool = (await agent.client.ipam()).find((p) => p.name === 'default')!;
  t.same(
    pool.allocations.map((a) => a.ip),
    [adds[1].out.ips[0].address.split('/')[0]],
    'and only its address',
  );
  t.equal((await invokeCni('DEL', c, { containerId: ids[1], netns: nss[1].path })).code, 0);
});

t.test('bad inputs get the right error code on stdout, and a failed ADD leaves nothing behind', async (t) => {
  const agent = await startAgent({
    pools: [`${claimPrefix24(200, 250)}.0/30`],
  });
  t.teardown(() => agent.cleanup());
  const ns = createNetns('mbc'),
    ns2 = createNetns('mbc');
  t.teardown(() => {
    ns.remove();
    ns2.remove();
  });
  const c = conf(agent);
  const cid = `b-${randomId(6)}`;

  const bad = await invokeCni('ADD', '{"cniVersion": "1.0.0", "name": ', { containerId: cid, netns: ns.path });
  t.same([bad.code, bad.out.code], [1, 6], 'malformed JSON -> 6');
  const noEnv = await invokeCni('ADD', c, { containerId: '', netns: '', ifName: '' });
  t.equal(noEnv.out.code, 4, 'missing env vars -> 4');
  t.match(noEnv.out.msg, /CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME/, 'naming them');
  const noCmd = await invokeCni('ADD', c, { env: { CNI_COMMAND: undefined } });
  t.equal(noCmd.out.code, 4, 'missing CNI_COMMAND -> 4');
  const ver = await invokeCni('ADD', { ...c, cniVersion: '0.9.9' }, { containerId: cid, netns: ns.path });
  t.equal(ver.out.code, 1, 'unknown cniVersion -> 1');
  t.match(ver.out.details, /plugin supports/);
  const netns = await invokeCni('ADD', c, { containerId: cid, netns: `/var/run/netns/mbc-missing-${randomId()}` });
  t.equal(netns.out.code, 4, 'bad netns path -> 4');
  t.match(netns.out.msg, /CNI_NETNS/);
  const unsupported = await invokeCni('ADD', { ...c, ipMasq: true }, { containerId: cid, netns: ns.path });
  t.equal(unsupported.out.code, 2, 'unsupported field -> 2');
  t.match(unsupported.out.msg, /ipMasq=true/);
  t.ok(
    [bad, noEnv, ver, netns].every((r) => r.stderr.includes('membrane-cni:')),
    'humans get a line on stderr',
  );

  // eth0 already exists in the netns (not ours): ADD must fail and leave nothing behind
  await ns2.exec('ip', ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
  const clash = await invokeCni('ADD', c, { containerId: `x-${randomId(6)}`, netns: ns2.path });
  t.equal(clash.code, 1, `ADD onto an existing eth0 fails: ${clash.stdout}`);
  t.same(await agent.client.listEndpoints(), [], 'no endpoint left by the failed ADD');
  t.same((await agent.client.ipam())[0].allocations, [], 'no address left by the failed ADD');
  t.equal((await invokeCni('DEL', c, { containerId: 'x', netns: ns2.path })).code, 0, 'the DEL after a failed ADD succeeds');

  const first = await invokeCni('ADD', c, { containerId: cid, netns: ns.path });
  t.equal(first.code, 0, '/30 pool: one address');
  const full = await invokeCni('ADD', c, { containerId: `f-${randomId(6)}`, netns: ns2.path });
  t.equal(full.out.code, 11, 'exhausted pool -> 11 (try again later)');
  t.match(full.out.msg, /pool|address/i);
  const st = await invokeCni('STATUS', { ...c, cniVersion: '1.1.0' });
  t.equal(st.out.code, 50, 'STATUS with an exhausted pool -> 50');
  t.equal((await invokeCni('DEL', c, { containerId: cid, netns: ns.path })).code, 0);
});

t.test('agent down: ADD fails fast, DEL is queued durably, the agent drains the queue at start', async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  const ns = createNetns('mbc');
  t.teardown(() => ns.remove());
  const c = conf(agent);
  const cid = `d-${randomId(6)}`;
  const add = await invokeCni('ADD', c, { containerId: cid, netns: ns.path });
  t.equal(add.code, 0);
  await agent.stop();

  const add2 = await invokeCni('ADD', c, { containerId: `d2-${randomId(6)}`, netns: ns.path });
  t.equal(add2.out.code, 11, 'ADD with the agent down -> 11');
  t.match(add2.out.msg, /membrane agent not reachable/);
  const st = await invokeCni('STATUS', { ...c, cniVersion: '1.1.0' });
  t.equal(st.out.code, 50, 'STATUS with the agent down -> 50');
  const del = await invokeCni('DEL', c, { containerId: cid, netns: ns.path });
  t.same([del.code, del.stdout], [0, ''], 'DEL with the agent down succeeds');
  const queued = listPendingDeletes(pendingDeletesDir(agent.socket));
  t.same(
    queued.map((q) => q.entry?.containerId),
    [cid],
    'and is queued next to the agent socket',
  );

  await agent.restart();
  t.same(await agent.client.listEndpoints(), [], 'the restarted agent finished the queued DEL');
  t.same(listPendingDeletes(pendingDeletesDir(agent.socket)), [], 'queue drained');
});

t.test('delegated IPAM: host-local from CNI_PATH allocates, the agent plumbs, DEL/GC/failed ADD release', async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.cleanup());
  const subnet = `${claimPrefix24(200, 250)}.0/28`;
  const dataDir = path.join(agent.stateDir, 'host-local');
  const c = conf(agent, { ipam: { type: 'host-local', ranges: [[{ subnet }]], dataDir } });
  const held = () => {
    try {
      return fs
        .readdirSync(path.join(dataDir, c.name))
        .filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))
        .sort();
    } catch {
      return [];
    }
  };
  const a = createNetns('mbc'),
    b = createNetns('mbc'),
    clash = createNetns('mbc');
  t.teardown(() => {
    a.remove();
    b.remove();
    clash.remove();
  });
  const ids = [`i-${randomId(6)}`, `i-${randomId(6)}`];
  const ra = await invokeCni('ADD', c, { containerId: ids[0], netns: a.path });
  const rb = await invokeCni('ADD', c, { containerId: ids[1], netns: b.path });
  t.equal(ra.code, 0, ra.stdout);
  const prefix = subnet.split('.').slice(0, 3).join('.') + '.';
  t.ok(ra.out.ips[0].address.startsWith(prefix), `address ${ra.out.ips[0].address} from host-local's range ${subnet}`);
  t.same(
    held(),
    [ra.out.ips[0].address, rb.out.ips[0].address].map((x: string) => x.split('/')[0]).sort(),
    'host-local holds both',
  );
  const ep = await agent.client.getEndpoint(ids[0], 'eth0');
  t.ok(ep.externalIpam, 'endpoint created with externalIpam');
  t.same((await agent.client.ipam())[0].allocations, [], "the agent's pool is untouched");
  t.ok(await ping(a, rb.out.ips[0].address.split('/')[0]), 'the two pods talk');
  const chk = await invokeCni('CHECK', { ...c, prevResult: ra.out }, { containerId: ids[0], netns: a.path });
  t.equal(chk.code, 0, `CHECK (also host-local's CHECK): ${chk.stdout}`);

  await clash.exec('ip', ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
  const before = held();
  const failed = await invokeCni('ADD', c, { containerId: `i-${randomId(6)}`, netns: clash.path });
  t.equal(failed.code, 1, 'ADD onto an existing eth0 fails');
  t.same(held(), before, "and host-local's allocation was released");

  t.equal((await invokeCni('DEL', c, { containerId: ids[0], netns: a.path })).code, 0);
  t.same(held(), [rb.out.ips[0].address.split('/')[0]], 'DEL released the address in host-local');
  const gc = await invokeCni('GC', { ...c, cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] });
  t.same([gc.code, gc.stdout], [0, ''], `GC (host-local only speaks up to 1.0.0): ${gc.stdout}`);
  t.same(held(), [], "GC released the stale attachment's address through host-local");
  t.same(await agent.client.listEndpoints(), [], 'and deleted its endpoint');
});

t.test('dual stack: IPv4 /32 and IPv6 /128 in the result, ips[].version "6" before 1.0.0, pods talk over IPv6', async (t) => {
  const agent = await startAgent({ ipv6: true });
  t.teardown(() => agent.cleanup());
  const a = createNetns('mbc'),
    b = createNetns('mbc');
  t.teardown(() => {
    a.remove();
    b.remove();
  });
  const ids = [`v6-${randomId(6)}`, `v6-${randomId(6)}`];
  const ra = await invokeCni('ADD', conf(agent, { cniVersion: '0.4.0' }), { containerId: ids[0], netns: a.path });
  const rb = await invokeCni('ADD', conf(agent, { cniVersion: '1.1.0' }), { containerId: ids[1], netns: b.path });
  t.equal(ra.code, 0, ra.stdout);
  t.same(ra.out.ips.map((i: { version: string }) => i.version).sort(), ['4', '6'], '0.4.0: one address per family, with version');
  t.ok(
    ra.out.ips.some((i: { address: string }) => /:.*\/128$/.test(i.address)),
    'IPv6 /128',
  );
  t.ok(
    ra.out.routes.some((r: { dst: string }) => r.dst === '::/0'),
    'IPv6 default route',
  );
  const v6b = rb.out.ips.find((i: { address: string }) => i.address.includes(':')).address.split('/')[0];
  t.ok(await ping(a, v6b), `pod A pings pod B over IPv6 (${v6b})`);
  const chk = await invokeCni('CHECK', conf(agent, { cniVersion: '0.4.0', prevResult: ra.out }), {
    containerId: ids[0],
    netns: a.path,
  });
  t.equal(chk.code, 0, `CHECK: ${chk.stdout}`);
  for (const [i, ns] of [a, b].entries())
    t.equal((await invokeCni('DEL', conf(agent), { containerId: ids[i], netns: ns.path })).code, 0);
  t.same(await agent.client.listEndpoints(), []);
});
