// The agent's state against a full disk, a damaged journal, a broken endpoint and a second agent.
// Agents run inside node netns of ours; the full disk is a small tmpfs of ours, unmounted afterwards.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ip4, randomId, REPO, sleep } from './lib/agent.ts';
import { startNode, type TestNode } from './lib/node-netns.ts';
import { createNetns, ping, type TestNetns } from './lib/netns.ts';
import { nodeState } from './lib/leaks.ts';
import { tcFilters } from './lib/inspect.ts';
import { ensureCniBinary, invokeCni } from '../cni/test/lib/exec.ts';
import type { Endpoint } from '../shared/src/types.ts';

ensureCniBinary();
const conf = (node: TestNode) => ({
  cniVersion: '1.0.0',
  name: `state-${node.agent.id}`,
  type: 'membrane-cni',
  agentSocket: node.agent.socket,
});

/** A tmpfs of `size` mounted under a unique /tmp path; unmounted and removed at teardown. */
function smallDisk(t: { teardown(fn: () => unknown): void }, size: string): string {
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-disk-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, `mbr-disk-${randomId()}`, mnt]);
  t.teardown(() => {
    try {
      execFileSync('umount', [mnt]);
    } catch {
      try {
        execFileSync('umount', ['-l', mnt]);
      } catch {
        /* not mounted */
      }
    }
    fs.rmSync(mnt, { recursive: true, force: true });
  });
  return mnt;
}

/** Writes a file until the disk refuses even one more byte. */
function fill(file: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (const size of [1 << 20, 1 << 16, 4096, 512, 1]) {
      const b = Buffer.alloc(size, 0x61);
      try {
        for (;;) fs.writeSync(fd, b);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

t.test(
  'a full state disk: ADDs fail clearly and leave nothing, DELs still work; with room again the agent restarts and works',
  async (t) => {
    const disk = smallDisk(t, '4m');
    const logFile = path.join(os.tmpdir(), `mbr-full-${randomId()}.log`);
    t.teardown(() => fs.rmSync(logFile, { force: true }));
    const node = await startNode({ stateDir: path.join(disk, 'state'), logFile });
    t.teardown(() => node.cleanup());
    const nss: TestNetns[] = [];
    t.teardown(() => {
      for (const n of nss) n.remove();
    });
    const pod = () => {
      const ns = createNetns('mbf');
      nss.push(ns);
      return ns;
    };
    const a = pod(),
      b = pod();
    const ids = { a: `a-${randomId(6)}`, b: `b-${randomId(6)}` };
    const added = [];
    for (const [id, ns] of [
      [ids.a, a],
      [ids.b, b],
    ] as const)
      added.push(await invokeCni('ADD', conf(node), { containerId: id, netns: ns.path }));
    t.same(
      added.map((r) => r.code),
      [0, 0],
      'two pods added',
    );
    const ipA = added[0].out.ips[0].address.split('/')[0];

    fill(path.join(disk, 'filler'));
    const before = await nodeState(node.agent);
    const results = [];
    for (let i = 0; i < 12; i++) {
      const ns = pod();
      results.push({
        ns,
        r: await invokeCni('ADD', conf(node), {
          containerId: `full-${i}-${randomId(4)}`,
          netns: ns.path,
          args: `K8S_POD_NAMESPACE=ns${i}`,
        }),
      });
    }
    t.same(
      results.map((x) => x.r.out?.code),
      Array(12).fill(11),
      'twelve ADDs on the full disk: CNI error 11 (try again later)',
    );
    t.ok(
      results.every(
        (x) => /state disk is full.*ENOSPC/.test(x.r.out?.msg ?? '') && /HTTP 507 storage_full/.test(x.r.out?.details ?? ''),
      ),
      `naming the cause: ${results[0].r.out?.msg}`,
    );
    for (const { ns } of results) t.notMatch(await ns.exec('ip', ['-o', 'link']), /eth0/, `no interface left in ${ns.name}`);
    t.same(
      await nodeState(node.agent),
      before,
      'nothing partial: endpoints, addresses, links, routes, map entries and store records as before',
    );
    await t.rejects(
      node.agent.client.createNetwork({ name: `n${randomId()}`, subnets: ['10.251.3.0/24'] }),
      { status: 507, code: 'storage_full' },
      'the API answers 507',
    );

    const del = await invokeCni('DEL', conf(node), { containerId: ids.b, netns: b.path });
    t.same([del.code, del.stdout], [0, ''], 'a DEL on the full disk succeeds (deletions have reserved room)');
    const afterDel = await nodeState(node.agent);
    t.equal(afterDel.endpoints.length, 1, 'pod b is gone');
    t.equal(afterDel.records.endpoints, 1, 'also from the store');
    t.ok(await ping(a, node.agent.pools[0].replace(/0\/24$/, '1')), 'pod a still reaches its gateway');

    fs.rmSync(path.join(disk, 'filler'));
    await node.agent.restart();
    t.notMatch(fs.readFileSync(logFile, 'utf8'), /cut off a torn or corrupt tail/, 'the journal needed no repair');
    const after = await nodeState(node.agent);
    t.same(after.endpoints, afterDel.endpoints, 'the restarted agent has pod a, nothing else');
    t.same(after.addresses, afterDel.addresses, 'and its address');
    const c = pod();
    const add = await invokeCni('ADD', conf(node), { containerId: `c-${randomId(6)}`, netns: c.path });
    t.equal(add.code, 0, `an ADD works again: ${add.stdout}`);
    t.ok(await ping(c, ipA), 'and the new pod reaches pod a');
    t.equal((await invokeCni('DEL', conf(node), { containerId: ids.a, netns: a.path })).code, 0);
  },
);

t.test('a torn or corrupt journal tail: the agent starts from the records before it and cleans up after them', async (t) => {
  const node = await startNode();
  t.teardown(() => node.cleanup());
  const nss = [createNetns('mbj'), createNetns('mbj'), createNetns('mbj')];
  t.teardown(() => {
    for (const n of nss) n.remove();
  });
  const eps: Endpoint[] = [];
  for (const ns of nss)
    eps.push(await node.agent.client.createEndpoint({ containerId: `j-${randomId()}`, netns: ns.path, ifName: 'eth0' }));
  await node.agent.kill9();
  // The last record is the third endpoint's: damage it in the middle.
  const file = path.join(node.agent.stateDir, 'store', 'journal.log');
  const buf = fs.readFileSync(file);
  const lastNl = buf.lastIndexOf(0x0a);
  const start = buf.lastIndexOf(0x0a, lastNl - 1) + 1;
  t.match(buf.subarray(start, lastNl).toString(), /"op":"put","key":"endpoints\//, 'the last record is an endpoint');
  buf[start + Math.floor((lastNl - start) / 2)] ^= 0x20;
  fs.writeFileSync(file, buf);
  await node.agent.restart();
  t.match(fs.readFileSync(node.agent.logFile, 'utf8'), /cut off a torn or corrupt tail/, 'the agent says what it cut off');
  const s = await nodeState(node.agent);
  t.same(
    s.endpoints,
    eps
      .slice(0, 2)
      .map((e) => `${e.containerId}/eth0`)
      .sort(),
    'it starts with the endpoints before the damage',
  );
  t.notOk(s.links.includes(eps[2].hostIfName), "the third endpoint's link (its record was lost) is removed");
  t.notOk(
    s.addresses.some((a) => a.startsWith(`${ip4(eps[2])} `)),
    'and its address released',
  );
  t.same(
    [s.maps.endpoints_cfg, s.maps.local_endpoints, s.records.endpoints, s.records.addresses],
    [2, 2, 2, 2],
    'and its datapath entries',
  );
  t.ok(await ping(nss[0], ip4(eps[1])), 'the others work');
});

t.test(
  'restore isolates a broken endpoint: reported unhealthy, the others and the agent go on; repaired when it can be, dropped when its netns goes',
  async (t) => {
    const node = await startNode({ extraArgs: ['--endpoint-upkeep-interval', '1'] });
    t.teardown(() => node.cleanup());
    const [good, broken, doomed] = [createNetns('mbr'), createNetns('mbr'), createNetns('mbr')];
    t.teardown(() => {
      for (const n of [good, broken, doomed]) n.remove();
    });
    const c = node.agent.client;
    const g = await c.createEndpoint({ containerId: `good-${randomId()}`, netns: good.path, ifName: 'eth0' });
    const b = await c.createEndpoint({ containerId: `broken-${randomId()}`, netns: broken.path, ifName: 'eth0' });
    const d = await c.createEndpoint({ containerId: `doomed-${randomId()}`, netns: doomed.path, ifName: 'eth0' });
    await node.agent.stop();
    // While the agent is down the host veths of two pods vanish, and something else takes eth0 there.
    for (const [ep, ns] of [
      [b, broken],
      [d, doomed],
    ] as const) {
      node.ip(['link', 'del', ep.hostIfName]);
      await ns.exec('ip', ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'other0']);
    }
    await node.agent.restart();
    const listed = await c.listEndpoints();
    t.same(
      listed.map((e) => e.containerId).sort(),
      [g, b, d].map((e) => e.containerId).sort(),
      'the agent started and keeps all three',
    );
    const bad = listed
      .filter((e) => e.health?.state === 'unhealthy')
      .map((e) => e.containerId)
      .sort();
    t.same(bad, [b.containerId, d.containerId].sort(), 'two are unhealthy');
    t.match(
      listed.find((e) => e.containerId === b.containerId)?.health?.problems[0],
      /eth0 already exists in .* and is not ours/,
      'with the reason',
    );
    const status = await c.status();
    t.equal(status.unhealthyEndpoints?.length, 2, 'status reports them');
    const cli = execFileSync(
      process.execPath,
      ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), '--socket', node.agent.socket, 'endpoint', 'list'],
      { encoding: 'utf8', env: { ...process.env, NODE_EXTRA_CA_CERTS: '' } },
    );
    t.match(cli, new RegExp(`${b.id}\\s.*unhealthy`), '`membrane endpoint list` shows it');
    t.ok(await ping(good, g.ips[0].gateway), 'the healthy pod works');

    await broken.exec('ip', ['link', 'del', 'eth0']); // what was in the way is gone: repaired
    doomed.remove(); // its pod is gone: dropped
    let now: Endpoint[] = [];
    for (const end = Date.now() + 30_000; Date.now() < end; ) {
      now = await c.listEndpoints();
      if (now.length === 2 && now.every((e) => !e.health)) break;
      await sleep(250);
    }
    t.same(
      now.map((e) => [e.containerId, e.health?.state ?? 'ready']).sort(),
      [
        [g.containerId, 'ready'],
        [b.containerId, 'ready'],
      ].sort(),
      'repaired one, dropped the other',
    );
    t.ok(await ping(good, ip4(b)), 'the repaired pod is reachable');
    t.notOk(
      (await nodeState(node.agent)).addresses.some((a) => a.startsWith(`${ip4(d)} `)),
      "the dropped pod's address is released",
    );
  },
);

t.test('two agents started at once on one state dir: exactly one runs', async (t) => {
  const node = await startNode();
  t.teardown(() => node.cleanup());
  await node.agent.stop();
  const args = [
    '--import',
    'tsx',
    path.join(REPO, 'shared/src/agent/main.ts'),
    '--state-dir',
    node.agent.stateDir,
    '--socket',
    node.agent.socket,
    '--bpffs-dir',
    node.agent.bpffsDir,
    '--host-device',
    node.agent.hostDevice,
    '--pool',
    node.agent.pools[0],
    '--metrics-address',
    '127.0.0.1:0',
    '--observer-socket',
    path.join(node.agent.stateDir, 'observer.sock'),
  ];
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  for (let round = 0; round < 3; round++) {
    const procs = [0, 1].map(() => {
      const p = spawn('nsenter', [`--net=${node.ns.path}`, process.execPath, ...args], {
        env,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let err = '';
      p.stderr.on('data', (d: Buffer) => {
        err += d.toString();
      });
      const exit = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
      return { p, err: () => err, exit };
    });
    t.teardown(() => {
      for (const x of procs) x.p.kill('SIGKILL');
    });
    const first = await Promise.race(procs.map((x, i) => x.exit.then((code) => ({ i, code }))));
    const loser = procs[first.i],
      winner = procs[1 - first.i];
    t.equal(first.code, 1, `round ${round}: one agent exits`);
    t.match(loser.err(), /another membrane-agent \((pid \d+|starting)\) already uses this state dir/, 'saying which');
    let healthy = false;
    for (let i = 0; i < 120 && !healthy; i++) {
      healthy = await node.agent.client.healthz().then(
        () => true,
        () => false,
      );
      if (!healthy) await sleep(250);
    }
    t.ok(healthy && winner.p.exitCode === null, 'the other serves');
    winner.p.kill('SIGTERM');
    await winner.exit;
  }
  await node.agent.restart();
});

t.test("a second agent (its own state dir and netns) on the first one's bpffs dir refuses to start", async (t) => {
  const first = await startNode();
  t.teardown(() => first.cleanup());
  const pod = createNetns('mbs');
  t.teardown(() => pod.remove());
  const conf = { cniVersion: '1.0.0', name: `state-${first.agent.id}`, type: 'membrane-cni', agentSocket: first.agent.socket };
  const add = await invokeCni('ADD', conf, { containerId: `s-${randomId(5)}`, netns: pod.path });
  t.equal(add.code, 0, 'a pod on the first agent');
  const [ep] = await first.agent.client.listEndpoints();
  // The pins are by ifindex, and the second node's first pod would get the same one in its netns:
  // without the lock its ADD took over the first pod's link and its own veth ran no program at all.
  await t.rejects(
    startNode({ extraArgs: ['--bpffs-dir', first.agent.bpffsDir] }),
    new RegExp(`another membrane-agent already uses the bpffs dir ${first.agent.bpffsDir}`),
    'the second agent exits, naming the dir',
  );
  t.match(tcFilters(ep.hostIfName, 'ingress', first.ns.path), /from_container/, "the first pod's programs are untouched");
  t.match(tcFilters(ep.hostIfName, 'egress', first.ns.path), /to_container/);
  t.ok(await ping(pod, ep.ips[0].gateway), 'and it reaches its gateway');
  t.equal((await invokeCni('DEL', conf, { containerId: ep.containerId, netns: pod.path })).code, 0);
});
