// Attacks on the L7 proxy with real packets (root): the proxy must never be a way around L3/L4 policy,
// and its own traffic (it connects upstream from the node's address, host identity, never diverted)
// must never be something a pod or the world can pass for. A pod forges the mark that routes packets
// to the proxy, sends raw SYNs at the proxy's loopback listener, spoofs the proxy's source address
// towards an L7 port; the world spoofs it too; a request names another destination than the one the
// client connected to; a node process knocks at the listener. Each fails, and the same traffic done
// properly passes. Every name and address is unique to this run.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import { eth, ETH_P, ipv4, PROTO, TCP_FLAGS, tcp, withChecksum } from '../shared/src/bpf/packets.ts';
import { castOf, frame4, frame6, reasonName, waitFor } from './lib/attack-pods.ts';
import { randomId } from './lib/agent.ts';
import { curl, startHttpServer } from './lib/http.ts';
import type { TestNetns } from './lib/netns.ts';
import { sendFrames, sniff, frameInfo } from './lib/raw.ts';
import { killAll } from './lib/tcp.ts';
import { l7WorkersConnected } from './lib/l7-workers.ts';
import { createWorld, type TestWorld } from './lib/world.ts';
import type { ChildProcess } from 'node:child_process';

if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const cast = castOf(['web', 'client', 'other']);
const servers: ChildProcess[] = [];
/** The world (lib/world.ts): its netns, its one address, the host side of its veth. */
let worldNet: TestWorld | undefined;
let world: TestNetns;
let W1 = '';
let wHost = '';
let proxyPort = 0;
/** The node's address the proxy's upstream connections come from (what the server sees as peer). */
let proxySource = '';

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-l7}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}]}}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/public/.*"}]}}]
`;

t.before(async () => {
  const { web } = cast.pods;
  servers.push(await startHttpServer(web.ns, 80, 'web'));
  worldNet = await createWorld([10]);
  world = worldNet.ns;
  W1 = worldNet.ips[0];
  wHost = worldNet.link;
  await cast.pc.import(POLICY);
  proxyPort = (await l7WorkersConnected(cast.agent.client)).port;
  const r = await curl(cast.pods.client.ns, `http://${web.ip4}/public/who`);
  proxySource = (JSON.parse(r.body) as { peer: string }).peer.replace(/^::ffff:/, '');
});

t.teardown(() => {
  killAll(servers);
  worldNet?.remove();
});

/** A UDP listener on 0.0.0.0:port in ns (undefined: the node's own netns) that collects what arrives. */
async function udpSink(ns: TestNetns | undefined, port: number): Promise<{ got: () => string; stop: () => void }> {
  const script =
    'import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(("0.0.0.0", int(sys.argv[1])))\nprint("ready", flush=True)\nwhile True:\n    print(s.recv(2048).decode("latin1"), flush=True)\n';
  const child = ns
    ? spawn('nsenter', [`--net=${ns.path}`, 'python3', '-c', script, String(port)])
    : spawn('python3', ['-c', script, String(port)]);
  servers.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  await waitFor('the UDP listener', async () => (out.includes('ready') ? true : undefined));
  return { got: () => out, stop: () => child.kill('SIGKILL') };
}

t.test("a pod cannot forge the proxy's mark: it never makes a packet local to the node", async (t) => {
  // The mark sends packets to the proxy routing table, which makes every destination local: a node
  // process bound to every address would then receive what a pod sends to the world.
  const port = 20000 + crypto.randomInt(0, 10000);
  const node = await udpSink(undefined, port);
  const far = await udpSink(world, port);
  t.teardown(() => {
    node.stop();
    far.stop();
  });
  const send =
    'import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[3], 0))\ns.sendto(sys.argv[4].encode(), (sys.argv[1], int(sys.argv[2])))\n';
  const tags: string[] = [];
  for (const mark of [0x0e00, 0x0e00 | (proxyPort << 16), 0x0f00]) {
    const tag = `mark-${mark.toString(16)}-${randomId()}`;
    tags.push(tag);
    await cast.pods.client.ns.exec('python3', ['-c', send, W1, String(port), String(mark), tag]);
  }
  t.ok(
    await waitFor('the datagrams in the world', async () => (tags.every((x) => far.got().includes(x)) ? true : undefined)),
    'every datagram with a forged mark (0xe00, with the proxy port, 0xf00) went to the world, as routed',
  );
  t.notOk(
    tags.some((x) => node.got().includes(x)),
    'none was delivered to the node',
  );
  // The control, so the check above can fail: the same mark put on the pod's packets on the node's
  // side (a netfilter rule of this test) does deliver them to the node. The pod's own mark never gets
  // that far: its veth strips it on the way out of its netns.
  const table = `mbt_l7atk_${randomId(3)}`;
  execFileSync('nft', ['-f', '-'], {
    input: `add table inet ${table}
add chain inet ${table} pre { type filter hook prerouting priority mangle - 1; policy accept; }
add rule inet ${table} pre iifname "${cast.pods.client.ep.hostIfName}" udp dport ${port} meta mark set 0x0e00
`,
  });
  t.teardown(() => {
    execFileSync('nft', ['delete', 'table', 'inet', table]);
  });
  const tag = `marked-on-node-${randomId()}`;
  await cast.pods.client.ns.exec('python3', ['-c', send, W1, String(port), '0', tag]);
  t.ok(
    await waitFor('the marked datagram', async () => (node.got().includes(tag) ? true : undefined)),
    'marked on the node: delivered to the node, not the world (what a forged mark would do)',
  );
});

t.test("raw SYNs at the proxy's listener from a pod get no answer", async (t) => {
  const { client } = cast.pods;
  const gw4 = client.ep.ips.find((x) => x.family === 4)!.gateway;
  const gw6 = client.ep.ips.find((x) => x.family === 6)!.gateway;
  const sport = 40000 + crypto.randomInt(0, 20000);
  const cap = await sniff(client.ns, 3);
  await sendFrames(client.ns, [
    frame4(client, { dst: '127.0.0.1', proto: PROTO.TCP }, tcp(sport, proxyPort, TCP_FLAGS.SYN)),
    frame4(client, { dst: gw4, proto: PROTO.TCP }, tcp(sport + 1, proxyPort, TCP_FLAGS.SYN)),
    frame6(client, { dst: '::1', next: PROTO.TCP }, tcp(sport + 2, proxyPort, TCP_FLAGS.SYN)),
    frame6(client, { dst: gw6, next: PROTO.TCP }, tcp(sport + 3, proxyPort, TCP_FLAGS.SYN)),
  ]);
  const frames = await cap.stop();
  const answers = frames
    .filter((f) => f.dir === 'in')
    .map((f) => frameInfo(f.frame))
    .filter((i) => i && i.proto === PROTO.TCP && i.sport === proxyPort && i.flags & TCP_FLAGS.SYN);
  t.same(answers, [], `no SYN-ACK from port ${proxyPort} on 127.0.0.1, ::1 or the node's addresses`);
});

t.test("a pod cannot pass for the proxy: the node's address as its source is dropped", async (t) => {
  const { other, web } = cast.pods;
  const before = await cast.drops();
  const cap = await sniff(web.ns, 3);
  const sport = 40000 + crypto.randomInt(0, 20000);
  await sendFrames(other.ns, [
    frame4(other, { src: proxySource, dst: web.ip4, proto: PROTO.TCP }, tcp(sport, 80, TCP_FLAGS.SYN)),
  ]);
  const frames = await cap.stop();
  t.notOk(
    frames.some((f) => frameInfo(f.frame)?.sport === sport),
    `no SYN from ${proxySource}:${sport} reached the server`,
  );
  const SPOOFED = reasonName(132);
  const after = await cast.dropsReaching(before, { [SPOOFED]: 1 });
  t.ok((after[SPOOFED] ?? 0) > (before[SPOOFED] ?? 0), `dropped as ${SPOOFED}`);
  t.equal(
    (await curl(other.ns, `http://${web.ip4}/public/x`, [], { timeoutS: 2 })).status,
    0,
    'and with its own address it is not allowed at L3',
  );
});

t.test('the world cannot pass for the proxy either', async (t) => {
  const { web } = cast.pods;
  const wMac = execFileSync('cat', [`/sys/class/net/${wHost}/address`], { encoding: 'utf8' }).trim();
  const eMac = (await world.exec('cat', ['/sys/class/net/eth0/address'])).trim();
  const sport = 40000 + crypto.randomInt(0, 20000);
  const syn = (src: string) =>
    eth(
      wMac,
      eMac,
      ETH_P.IPV4,
      ipv4({ src, dst: web.ip4, proto: PROTO.TCP }, withChecksum(4, src, web.ip4, PROTO.TCP, tcp(sport, 80, TCP_FLAGS.SYN))),
    );
  const cap = await sniff(web.ns, 4);
  await sendFrames(world, [syn(proxySource), syn(W1)]);
  // The world's own SYN is diverted to the proxy (its L7 port): the proxy answers it, the server never
  // sees it either. So the check is on the server's side: no SYN with the node's source arrived.
  const frames = await cap.stop();
  t.notOk(
    frames.some((f) => {
      const i = frameInfo(f.frame);
      return i?.src === proxySource && i.sport === sport;
    }),
    `no SYN from ${proxySource}:${sport} (forged by the world) reached the server`,
  );
  const ok = await curl(world, `http://${web.ip4}/public/w`);
  t.equal(ok.status, 200, 'the world with its own address goes through the proxy');
  t.equal((await curl(world, `http://${web.ip4}/private`)).status, 403, 'and is held to the HTTP rules');
});

t.test('a request naming another destination still goes where the client connected', async (t) => {
  const { client, web, other } = cast.pods;
  servers.push(await startHttpServer(other.ns, 80, 'other'));
  for (const authority of [other.ip4, `${other.ip4}:80`]) {
    const target = `http://${authority}/public/abs`;
    // With a Host that says the same (one that says otherwise is refused: l7-server-readings.test.ts).
    const r = await curl(client.ns, `http://${web.ip4}/public/abs`, ['--request-target', target, '-H', `Host: ${authority}`]);
    t.equal(r.status, 200, `absolute-form ${target}`);
    t.match(JSON.parse(r.body), { server: 'web' }, 'answered by the destination the client connected to');
  }
  const h = await curl(client.ns, `http://${web.ip4}/public/host`, ['-H', `Host: ${other.ip4}`]);
  t.match(JSON.parse(h.body), { server: 'web' }, 'a Host header moves nothing either');
});

t.test("a node process knocking at the proxy's listener is refused", async (t) => {
  const got = await new Promise<{ data: string; closed: boolean }>((resolve) => {
    const s = net.connect(proxyPort, '127.0.0.1');
    let data = '';
    s.on('connect', () => s.write('GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n'));
    s.on('data', (d) => {
      data += d.toString();
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve({ data, closed: true }));
    setTimeout(() => {
      s.destroy();
      resolve({ data, closed: false });
    }, 5000);
  });
  t.same(got, { data: '', closed: true }, 'closed without an answer: only diverted connections are served');
  await waitFor('the proxy still serving', async () =>
    (await curl(cast.pods.client.ns, `http://${cast.pods.web.ip4}/public/after`)).status === 200 ? true : undefined,
  );
});
