// The endpoint-create path attacked: an ADD aimed at the agent's own netns, an IPAM plugin handing
// out a live pod's address, and traffic at a pod while its ADD runs. Every agent here runs inside a
// node netns of ours (integration/lib/node-netns.ts): a mistake can only hurt that netns.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ip4, randomId, sleep } from './lib/agent.ts';
import { startNode, type TestNode } from './lib/node-netns.ts';
import { createNetns, ping, type TestNetns } from './lib/netns.ts';
import { ensureCniBinary, invokeCni } from '../cni/test/lib/exec.ts';
import { PolicyClient } from '../shared/src/policy/client.ts';
import { pollUntil } from '../shared/test/lib/poll.ts';

ensureCniBinary();
const cniConf = (node: TestNode, extra: object = {}) => ({
  cniVersion: '1.0.0',
  name: `hard-${node.agent.id}`,
  type: 'membrane-cni',
  agentSocket: node.agent.socket,
  ...extra,
});
/** membrane-cni as a runtime runs it (the agent socket is a path: the plugin's netns does not matter). */
const cniIn = (_node: TestNode, verb: string, conf: unknown, o: Parameters<typeof invokeCni>[2] = {}) => invokeCni(verb, conf, o);
const allocations = async (node: TestNode) => {
  const v = await node.agent.client.request<{
    pools: { allocations: { ip: string; owner: string }[] }[];
    external: { ip: string; owner: string }[];
  }>('GET', '/v1/ipam');
  return [...v.pools.flatMap((p) => p.allocations), ...v.external].map((a) => `${a.ip} ${a.owner}`).sort();
};

t.test("the agent's own netns is refused, whatever path names it, and nothing in it changes", async (t) => {
  const node = await startNode();
  t.teardown(() => node.cleanup());
  const up = await node.upstream();
  const pid = node.agent.pid()!;
  // A bind mount of the agent's netns under a name of ours, as `ip netns add` would make one.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-nsbind-'));
  const bound = path.join(dir, 'net');
  fs.writeFileSync(bound, '');
  execFileSync('mount', ['--bind', `/proc/${pid}/ns/net`, bound]);
  t.teardown(() => {
    try {
      execFileSync('umount', [bound]);
    } catch {
      /* not mounted */
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  // (an IPv6 link-local address may finish duplicate address detection meanwhile: not our doing)
  const addrs = () => node.ip(['-o', 'addr', 'show']).replaceAll(' tentative', '');
  const before = {
    routes: node.ip(['route', 'show']),
    addrs: addrs(),
    links: node.ip(['-o', 'link', 'show']).replace(/\s+\\.*$/gm, ''),
  };
  t.match(before.routes, `default via ${up.gateway}`, 'the node netns has its default route');

  for (const netns of [node.ns.path, `/proc/${pid}/ns/net`, `/proc/${pid}/task/${pid}/ns/net`, bound]) {
    await t.rejects(
      node.agent.client.createEndpoint({ containerId: `own-${randomId()}`, netns, ifName: 'eth0' }),
      { status: 400, code: 'netns_not_allowed', message: /agent's own network namespace/ },
      `API refuses ${netns}`,
    );
    await t.rejects(
      node.agent.client.createEndpoint({ containerId: `own-${randomId()}`, netns, ifName: 'eth9' }),
      { status: 400, code: 'netns_not_allowed' },
      `also with an interface name that does not exist there (${netns})`,
    );
  }
  const cni = await invokeCni('ADD', cniConf(node), { containerId: `own-${randomId()}`, netns: `/proc/${pid}/ns/net` });
  t.equal(cni.out?.code, 4, `membrane-cni ADD: CNI error 4 (invalid CNI_NETNS): ${cni.stdout}`);
  t.match(cni.out?.msg, /own network namespace/, 'naming the reason');

  t.equal(node.ip(['route', 'show']), before.routes, 'routes of the agent netns unchanged (its default route survives)');
  t.equal(addrs(), before.addrs, 'addresses unchanged');
  t.equal(node.ip(['-o', 'link', 'show']).replace(/\s+\\.*$/gm, ''), before.links, 'links unchanged');
  t.same(await node.agent.client.listEndpoints(), [], 'no endpoint');
  t.same(await allocations(node), [], 'no address held');

  // A pod netns next to it works, so the refusals above are about the netns and nothing else.
  const pod = createNetns('mbp');
  t.teardown(() => pod.remove());
  const ep = await node.agent.client.createEndpoint({ containerId: `pod-${randomId()}`, netns: pod.path, ifName: 'eth0' });
  t.ok(await ping(pod, ep.ips[0].gateway), 'a real pod reaches its gateway on the node');
  t.match(node.ip(['route', 'show']), `default via ${up.gateway}`, 'and the node keeps its default route');
});

t.test("a delegated static IPAM handing out pod A's address fails; A keeps its address and connectivity", async (t) => {
  const node = await startNode();
  t.teardown(() => node.cleanup());
  const nsA = createNetns('mbp'),
    nsB = createNetns('mbp'),
    nsX = createNetns('mbp'),
    nsY = createNetns('mbp');
  t.teardown(() => {
    for (const n of [nsA, nsB, nsX, nsY]) n.remove();
  });
  const ids = { a: `a-${randomId(6)}`, b: `b-${randomId(6)}`, x: `x-${randomId(6)}`, y: `y-${randomId(6)}` };
  const ra = await cniIn(node, 'ADD', cniConf(node), { containerId: ids.a, netns: nsA.path });
  const rb = await cniIn(node, 'ADD', cniConf(node), { containerId: ids.b, netns: nsB.path });
  t.equal(ra.code, 0, ra.stdout);
  t.equal(rb.code, 0, rb.stdout);
  const a = ra.out.ips[0].address.split('/')[0];
  t.ok(await ping(nsB, a), `B pings A (${a}) before`);
  const before = await allocations(node);

  const stolen = cniConf(node, { ipam: { type: 'static', addresses: [{ address: `${a}/24` }] } });
  const rx = await cniIn(node, 'ADD', stolen, { containerId: ids.x, netns: nsX.path });
  t.equal(rx.code, 1, `the ADD fails: ${rx.stdout}`);
  t.equal(rx.out.code, 11, 'address_in_use -> CNI 11');
  t.match(
    rx.out.msg,
    new RegExp(`${a.replaceAll('.', '\\.')} is already (used by endpoint ${ids.a}|in use)`),
    'naming the address and its holder',
  );
  t.notMatch(await nsX.exec('ip', ['-o', 'link']), /eth0/, 'no interface left in the attacker netns');
  t.same(await allocations(node), before, 'IPAM unchanged');
  t.equal((await node.agent.client.listEndpoints()).length, 2, 'no endpoint added');
  t.ok(await ping(nsB, a), 'B still pings A');
  t.ok(await ping(nsA, rb.out.ips[0].address.split('/')[0]), 'and A pings B');

  // A static address of its own (outside the agent's pools) works, and is unique on the node.
  const own = `10.${1 + Math.floor(Math.random() * 60)}.${Math.floor(Math.random() * 250)}.9`;
  const mine = cniConf(node, { ipam: { type: 'static', addresses: [{ address: `${own}/24` }] } });
  const ry = await cniIn(node, 'ADD', mine, { containerId: ids.y, netns: nsY.path });
  t.equal(ry.code, 0, `a free static address is accepted: ${ry.stdout}`);
  t.ok((await allocations(node)).includes(`${own} ep:${ids.y}/eth0`), 'and recorded under its endpoint');
  t.ok(await ping(nsY, a), 'the static pod reaches A');
  const again = await cniIn(node, 'ADD', mine, { containerId: `z-${randomId(6)}`, netns: nsX.path });
  t.equal(again.out?.code, 11, 'a second pod with the same static address is refused');
  t.equal((await cniIn(node, 'DEL', mine, { containerId: ids.y, netns: nsY.path })).code, 0);
  t.notOk(
    (await allocations(node)).some((l) => l.startsWith(`${own} `)),
    'DEL released it',
  );
  for (const [id, ns] of [
    [ids.a, nsA],
    [ids.b, nsB],
  ] as const)
    t.equal((await cniIn(node, 'DEL', cniConf(node), { containerId: id, netns: ns.path })).code, 0);
  t.same(await allocations(node), [], 'nothing held at the end');
});

// In the target's netns: prints "ready", then one line per IPv4 frame received from one of the
// watched sources for the target address (on any interface, eth0 appears during the ADD).
const SNIFF = `
import socket, sys
target = socket.inet_aton(sys.argv[1]); srcs = set(socket.inet_aton(a) for a in sys.argv[2:])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
print('ready', flush=True)
while True:
    data, addr = s.recvfrom(65535)
    if addr[2] == 4 or len(data) < 34 or data[12:14] != b'\\x08\\x00': continue
    if data[30:34] == target and data[26:30] in srcs:
        print('hit', socket.inet_ntoa(data[26:30]), data[23], flush=True)
`;
// From an attacker: UDP datagrams and TCP SYNs (new connections) at the target as fast as a loop can.
const FLOOD = `
const dgram = require('dgram'), net = require('net');
const [ip, ms] = process.argv.slice(1);
const u = dgram.createSocket('udp4'); u.on('error', () => {});
let udp = 0, syn = 0;
const a = setInterval(() => { for (let i = 0; i < 4; i++) { u.send('x', 9999, ip, () => {}); udp++; } }, 1);
const b = setInterval(() => { const s = net.connect({ host: ip, port: 8888 }); s.on('error', () => {}); s.setTimeout(50, () => s.destroy()); syn++; }, 2);
process.stdout.write('go\\n');
setTimeout(() => { clearInterval(a); clearInterval(b); process.stdout.write(JSON.stringify({ udp, syn }) + '\\n'); process.exit(0); }, Number(ms));
`;

function runIn(ns: TestNetns, cmd: string, args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn('nsenter', [`--net=${ns.path}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const until = (re: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (re.test(out)) {
          clearInterval(iv);
          resolve();
        }
      };
      const iv = setInterval(check, 5);
      child.once('exit', () => {
        clearInterval(iv);
        if (re.test(out)) resolve();
        else reject(new Error(`${cmd} exited: ${out}`));
      });
    });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    out: () => out,
    until,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
    exited,
  };
}

t.test('traffic at a pod while its ADD runs: nothing its policy denies gets in, no flow survives', async (t) => {
  const node = await startNode();
  t.teardown(() => node.cleanup());
  const world = await node.world();
  const c = node.agent.client;
  const mk = async (app: string) => {
    const ns = createNetns('mbp');
    t.teardown(() => ns.remove());
    return {
      ns,
      ep: await c.createEndpoint({ containerId: `${app}-${randomId()}`, netns: ns.path, ifName: 'eth0', labels: { app } }),
    };
  };
  const attacker = await mk('attacker'),
    friend = await mk('friend');
  await new PolicyClient(c).import(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: target-only-friends}
spec:
  endpointSelector: {matchLabels: {app: target}}
  ingress: [{fromEndpoints: [{matchLabels: {app: friend}}]}]
`);
  const pool = node.agent.pools[0].split('/')[0].split('.').slice(0, 3).join('.');
  const sources = [ip4(attacker.ep), world.ip];
  const ITER = Number(process.env.WINDOW_ITERATIONS ?? 12);
  let hits: string[] = [],
    sent = 0,
    friendSeen = 0;
  for (let i = 0; i < ITER; i++) {
    const target = createNetns('mbt');
    const addr = `${pool}.${200 + i}`;
    const cid = `target-${i}-${randomId()}`;
    try {
      const sniffer = runIn(target, 'python3', ['-c', SNIFF, addr, ...sources, ip4(friend.ep)]);
      await sniffer.until(/ready/);
      const floods = [attacker.ns, world.ns].map((ns) => runIn(ns, process.execPath, ['-e', FLOOD, addr, '900']));
      await Promise.all(floods.map((f) => f.until(/go/)));
      await sleep(50);
      const ep = await c.createEndpoint({
        containerId: cid,
        netns: target.path,
        ifName: 'eth0',
        labels: { app: 'target' },
        ips: [addr],
      });
      await Promise.all(floods.map((f) => f.exited));
      for (const f of floods) {
        const m = /\{.*\}/.exec(f.out());
        if (m) {
          const n = JSON.parse(m[0]);
          sent += n.udp + n.syn;
        }
      }
      // The friend is let in: the sniffer sees what arrives.
      await friend.ns.exec('python3', [
        '-c',
        `import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'hi', ('${addr}', 9999)) for _ in range(3)]`,
      ]);
      // The sniffer first works through the flood queued on its socket: on a loaded machine that takes
      // a while, so wait (15 s at most) for the friend's datagram to show up before stopping it.
      const friendHit = new RegExp(`^hit ${ip4(friend.ep).replace(/\./g, '\\.')} `, 'm');
      await pollUntil(() => friendHit.test(sniffer.out()), 15_000, 50);
      await sniffer.stop();
      const lines = sniffer
        .out()
        .split('\n')
        .filter((l) => l.startsWith('hit '));
      hits = hits.concat(lines.filter((l) => sources.includes(l.split(' ')[1])).map((l) => `iteration ${i}: ${l}`));
      if (lines.some((l) => l.split(' ')[1] === ip4(friend.ep))) friendSeen++;
      // Entries that would let an attacker's packets into the target: made at its ingress, or a
      // pod-to-pod (LOCAL) entry with it as the receiver. (The attackers' own egress entries are theirs.)
      const ct = await c.request<{ entries: { saddr: string; daddr: string; scope: number; owner: number; peer: number }[] }>(
        'GET',
        '/v1/bpf/ct',
      );
      const flows = ct.entries.filter(
        (e) =>
          ((e.scope === 0 && e.owner === ep.id) || (e.scope === 2 && e.peer === ep.id)) &&
          (sources.includes(e.saddr) || sources.includes(e.daddr)),
      );
      hits = hits.concat(flows.map((f) => `iteration ${i}: conntrack scope ${f.scope} ${f.saddr} -> ${f.daddr}`));
    } finally {
      await c.deleteEndpoint(cid, 'eth0').catch(() => undefined);
      target.remove();
    }
  }
  t.ok(sent > ITER * 500, `the attackers sent ${sent} packets and SYNs during ${ITER} ADDs`);
  t.equal(friendSeen, ITER, 'every time, the friend got in once the ADD was done (the sniffer sees arrivals)');
  t.same(hits, [], 'no attacker packet reached a target, no attacker flow exists');
});
