// The datapath on the real kernel (root): two pods in netns of our own, L3 routing as in
// docs/design.md (/32 + /128, proxy_arp/proxy_ndp, gateway on a dummy), our tc programs on the host
// veths. Proves the pod-to-pod short-cut (bpf_redirect_peer), the counters, endpoint removal and
// that an agent restart keeps maps and traffic. Traffic stays between our netns and the host.
import t from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadDatapath, removePins, type Datapath, type EndpointDatapathConfig } from '../shared/src/bpf/datapath.ts';
import { TCX_LINK_PIN } from '../shared/src/bpf/layout.ts';
import { claimPrefix24 } from './lib/subnets.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
if (process.getuid?.() !== 0) {
  t.plan(0, 'needs root');
  process.exit(0);
}

const sh = (cmd: string, ...args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8' });
const ip = (...args: string[]) => sh('ip', ...args);
const quiet = (cmd: string, ...args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' });
const nsPath = (ns: string) => `/var/run/netns/${ns}`;
const inNs = (ns: string, ...args: string[]) => sh('nsenter', `--net=${nsPath(ns)}`, '--', ...args);
const setSysctl = (key: string, value: string) => fs.writeFileSync(`/proc/sys/${key.replaceAll('.', '/')}`, value);
const linkIndex = (dev: string) => Number(fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8'));
const linkMac = (dev: string) => fs.readFileSync(`/sys/class/net/${dev}/address`, 'utf8').trim();
const txPackets = (dev: string) => Number(fs.readFileSync(`/sys/class/net/${dev}/statistics/tx_packets`, 'utf8'));

function otherRoutes(addr: string): unknown[] {
  const family = addr.includes(':') ? '-6' : '-4';
  return (JSON.parse(ip('-j', family, 'route', 'show', 'match', addr)) as { dst: string }[]).filter((r) => r.dst !== 'default');
}

// Unique names and addresses so parallel runs and the host never collide.
const id = randomBytes(3).toString('hex');
let net4 = '';
let net6 = '';
for (let i = 0; i < 20 && !net4; i++) {
  const candidate4 = claimPrefix24(200, 251); // held until exit even if another process routes it
  // Hextets without leading zeros, so our text matches the canonical form the datapath lists.
  const hextet = () => randomInt(0x1000, 0x10000).toString(16);
  const candidate6 = `fd${randomInt(1, 256).toString(16).padStart(2, '0')}:${hextet()}:${hextet()}:`;
  if (!otherRoutes(`${candidate4}.2`).length && !otherRoutes(`${candidate6}:2`).length) [net4, net6] = [candidate4, candidate6];
}
if (!net4) throw new Error('no free 10.200-250.x.0/24 test subnet');
const GW4 = `${net4}.1`;
const GW6 = `${net6}:1`;
const gwDev = `mbt${id}g`;
const pinDir = `/sys/fs/bpf/mbt-${id}`;
const PORT = 7000 + randomInt(0, 1000);

interface Pod {
  ns: string;
  hostIf: string;
  ip4: string;
  ip6: string;
  endpointId: number;
  cfg?: EndpointDatapathConfig;
}
const pods: Pod[] = [
  { ns: `mbt${id}a`, hostIf: `mbt${id}a`, ip4: `${net4}.2`, ip6: `${net6}:2`, endpointId: 1 },
  { ns: `mbt${id}b`, hostIf: `mbt${id}b`, ip4: `${net4}.3`, ip6: `${net6}:3`, endpointId: 2 },
];
const [A, B] = pods;

// Echo server for pod B (UDP v4 + v6, TCP byte counter), run by `node` inside the netns.
const SERVER = `
const dgram = require('node:dgram'), net = require('node:net'), port = Number(process.env.MBT_PORT);
const s4 = dgram.createSocket('udp4'), s6 = dgram.createSocket({ type: 'udp6', ipv6Only: true });
for (const s of [s4, s6]) s.on('message', (m, r) => s.send(m, r.port, r.address));
const tcp = net.createServer((c) => { let n = 0; c.on('data', (d) => { n += d.length; }); c.on('end', () => c.end(String(n))); });
let pending = 3; const ready = () => { if (--pending === 0) console.log('ready'); };
s4.bind(port, '0.0.0.0', ready); s6.bind(port, '::', ready); tcp.listen(port, '::', ready);`;

// Client: "udp <addr> <count> <timeoutMs>" -> number of echoes; "tcp <addr> <bytes>" -> bytes the server saw.
const CLIENT = `
const dgram = require('node:dgram'), net = require('node:net'), port = Number(process.env.MBT_PORT);
const [mode, addr, n, timeout] = process.env.MBT_ARGS.split(' ');
if (mode === 'udp') {
  const s = dgram.createSocket(addr.includes(':') ? 'udp6' : 'udp4');
  let got = 0, i = 0, timer;
  const next = () => { if (i++ === Number(n)) { console.log(got); s.close(); return; }
    timer = setTimeout(next, Number(timeout)); s.send('ping' + i, port, addr); };
  // Only the echo of the datagram in flight counts: a late echo must not advance the sequence twice.
  s.on('message', (m) => { if (String(m) !== 'ping' + i) return; got++; clearTimeout(timer); next(); });
  s.on('error', () => {});
  next();
} else {
  const c = net.connect(port, addr, () => { c.end(Buffer.alloc(Number(n), 7)); });
  let answer = ''; c.on('data', (d) => { answer += d; }); c.on('end', () => console.log(answer));
  c.on('error', (e) => { console.log('error ' + e.code); });
}`;

function client(pod: Pod, args: string): string {
  const res = spawnSync('nsenter', [`--net=${nsPath(pod.ns)}`, '--', process.execPath, '-e', CLIENT], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, NODE_OPTIONS: '', MBT_PORT: String(PORT), MBT_ARGS: args },
  });
  if (res.error) throw res.error;
  return res.stdout.trim();
}
const udpEchoes = (from: Pod, to: string, count: number, timeoutMs = 2000) =>
  Number(client(from, `udp ${to} ${count} ${timeoutMs}`));

let dp: Datapath | null = null;
let server: ChildProcess | null = null;

t.before(async () => {
  if (
    !fs
      .readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .some((l) => l.split(' ')[1] === '/sys/fs/bpf' && l.split(' ')[2] === 'bpf')
  ) {
    sh('mount', '-t', 'bpf', 'bpf', '/sys/fs/bpf');
  }
  execFileSync('bash', [path.join(root, 'scripts/build-bpf.sh')], { stdio: 'inherit' });
});

// Registered first so it runs even when setup fails half-way; every step tolerates absence.
t.teardown(() => {
  if (server?.pid) server.kill('SIGKILL');
  for (const pod of pods) {
    quiet('ip', 'netns', 'del', pod.ns); // takes the veth pair, its routes and proxy entries with it
    quiet('ip', 'link', 'del', pod.hostIf);
  }
  quiet('ip', 'link', 'del', gwDev);
  dp?.close();
  removePins(pinDir);
});

t.test('setup: two pods routed through the host', async () => {
  // The gateway lives on a dummy device; this kernel has CONFIG_DUMMY unset, so fall back to ifb
  // (also a no-op device: local addresses never touch it).
  if (quiet('ip', 'link', 'add', gwDev, 'type', 'dummy').status !== 0) ip('link', 'add', gwDev, 'type', 'ifb');
  ip('addr', 'add', `${GW4}/32`, 'dev', gwDev);
  ip('-6', 'addr', 'add', `${GW6}/128`, 'dev', gwDev, 'nodad');
  ip('link', 'set', gwDev, 'up');
  for (const pod of pods) {
    ip('netns', 'add', pod.ns);
    ip('link', 'add', pod.hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod.ns);
    // forwarding=0 for IPv4 on the host veth: the host stack must NOT route pod-to-pod packets, so
    // they only arrive when the BPF redirect works. IPv6 proxy NDP needs a router interface.
    setSysctl(`net.ipv4.conf.${pod.hostIf}.forwarding`, '0');
    setSysctl(`net.ipv4.conf.${pod.hostIf}.proxy_arp`, '1');
    setSysctl(`net.ipv6.conf.${pod.hostIf}.accept_dad`, '0');
    setSysctl(`net.ipv6.conf.${pod.hostIf}.forwarding`, '1');
    setSysctl(`net.ipv6.conf.${pod.hostIf}.proxy_ndp`, '1');
    // Proxy NDP answers multicast solicitations after a random delay of up to proxy_delay (0.8 s);
    // both pods resolving the gateway could then exceed a 2 s first-packet timeout.
    setSysctl(`net.ipv6.neigh.${pod.hostIf}.proxy_delay`, '0');
    ip('link', 'set', pod.hostIf, 'up');
    inNs(pod.ns, 'sysctl', '-qw', 'net.ipv6.conf.eth0.accept_dad=0');
    inNs(pod.ns, 'ip', 'link', 'set', 'lo', 'up');
    inNs(pod.ns, 'ip', 'addr', 'add', `${pod.ip4}/32`, 'dev', 'eth0');
    inNs(pod.ns, 'ip', '-6', 'addr', 'add', `${pod.ip6}/128`, 'dev', 'eth0', 'nodad');
    inNs(pod.ns, 'ip', 'link', 'set', 'eth0', 'up');
    inNs(pod.ns, 'ip', 'route', 'add', GW4, 'dev', 'eth0', 'scope', 'link');
    inNs(pod.ns, 'ip', 'route', 'add', 'default', 'via', GW4, 'dev', 'eth0');
    inNs(pod.ns, 'ip', '-6', 'route', 'add', `${GW6}/128`, 'dev', 'eth0');
    inNs(pod.ns, 'ip', '-6', 'route', 'add', 'default', 'via', GW6, 'dev', 'eth0');
    ip('route', 'add', `${pod.ip4}/32`, 'dev', pod.hostIf, 'scope', 'link');
    ip('-6', 'route', 'add', `${pod.ip6}/128`, 'dev', pod.hostIf);
    ip('-6', 'neigh', 'add', 'proxy', GW6, 'dev', pod.hostIf);
    // Through ip, not /sys: nsenter --net keeps the host's /sys mount (its eth0 is the host's NIC).
    const containerMac = (JSON.parse(inNs(pod.ns, 'ip', '-j', 'link', 'show', 'eth0')) as { address: string }[])[0].address;
    pod.cfg = {
      hostIfindex: linkIndex(pod.hostIf),
      endpointId: pod.endpointId,
      identity: 1000 + pod.endpointId,
      flags: 0,
      hostMac: linkMac(pod.hostIf),
      containerMac,
      ips: [pod.ip4, pod.ip6],
      gateway6: GW6,
    };
  }
  server = spawn('nsenter', [`--net=${nsPath(B.ns)}`, '--', process.execPath, '-e', SERVER], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, NODE_OPTIONS: '', MBT_PORT: String(PORT) },
  });
  await new Promise<void>((resolve, reject) => {
    server!.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    server!.on('exit', (code) => reject(new Error(`echo server exited with ${code}`)));
  });
});

t.test('without the datapath, pod A cannot reach pod B (the host does not forward)', async (t) => {
  t.equal(udpEchoes(A, B.ip4, 2, 500), 0);
});

t.test('attach + upsert: pods talk over the redirect, counters move, host veth B is bypassed', async (t) => {
  dp = loadDatapath({ objectPath: path.join(root, 'dist/bpf/endpoint.o'), pinDir });
  for (const pod of pods) {
    dp.upsertEndpoint(pod.cfg!);
    dp.attach(pod.cfg!.hostIfindex);
    dp.attach(pod.cfg!.hostIfindex); // idempotent
    t.ok(dp.isCurrent(pod.cfg!.hostIfindex), `${pod.hostIf} runs our programs`);
    t.same(dp.attachedProgramIds(pod.cfg!.hostIfindex), {
      ingress: dp.programIds.fromContainer,
      egress: dp.programIds.toContainer,
    });
  }
  t.same(
    dp.listEndpointIfindexes(),
    pods.map((p) => p.cfg!.hostIfindex).sort((a, b) => a - b),
  );
  t.same(dp.listLocalEndpointIps(), [A.ip4, B.ip4, A.ip6, B.ip6].sort());

  const hostBTxBefore = txPackets(B.hostIf);
  t.equal(udpEchoes(A, B.ip4, 20), 20, 'IPv4 UDP echo A -> B');
  t.equal(udpEchoes(A, B.ip6, 20), 20, 'IPv6 UDP echo A -> B');
  t.equal(client(A, `tcp ${B.ip4} ${4 << 20}`), String(4 << 20), 'IPv4 TCP 4 MiB A -> B (GSO through the redirect)');
  t.equal(client(A, `tcp ${B.ip6} ${1 << 20}`), String(1 << 20), 'IPv6 TCP 1 MiB A -> B');

  const a = dp.counters(A.cfg!.hostIfindex)!;
  const b = dp.counters(B.cfg!.hostIfindex)!;
  t.ok(a.txPackets >= 40n && a.txBytes > BigInt(5 << 20), `A tx ${a.txPackets} packets / ${a.txBytes} bytes`);
  t.ok(b.rxPackets >= 40n && b.rxBytes > BigInt(5 << 20), `B rx ${b.rxPackets} packets / ${b.rxBytes} bytes`);
  t.ok(b.txPackets >= 40n && a.rxPackets >= 40n, `B tx ${b.txPackets}, A rx ${a.rxPackets}`);
  // Redirected packets enter B's eth0 directly: the host veth B transmits only what the host itself
  // sends (ARP/NA answers), not the thousands of packets B received.
  const hostBTx = txPackets(B.hostIf) - hostBTxBefore;
  t.ok(hostBTx < 10, `host veth B transmitted ${hostBTx} packets while B received ${b.rxPackets}`);
});

t.test('to_container counts host -> container traffic', async (t) => {
  const before = dp!.counters(A.cfg!.hostIfindex)!;
  // Nobody listens on the gateway: the host answers with ICMP port unreachable through A's egress hook.
  udpEchoes(A, GW4, 1, 300);
  const after = dp!.counters(A.cfg!.hostIfindex)!;
  t.ok(after.rxPackets > before.rxPackets, `A rx ${before.rxPackets} -> ${after.rxPackets}`);
  t.ok(after.txPackets > before.txPackets, `A tx ${before.txPackets} -> ${after.txPackets}`);
});

t.test('remove endpoint: entries gone, traffic to it stops; re-add restores it', async (t) => {
  dp!.removeEndpoint(B.cfg!.hostIfindex, B.cfg!.ips);
  dp!.removeEndpoint(B.cfg!.hostIfindex, B.cfg!.ips); // idempotent
  t.same(dp!.listLocalEndpointIps(), [A.ip4, A.ip6].sort());
  t.same(dp!.listEndpointIfindexes(), [A.cfg!.hostIfindex]);
  t.equal(dp!.counters(B.cfg!.hostIfindex), null);
  t.equal(udpEchoes(A, B.ip4, 2, 500), 0, 'no redirect and no host forwarding: unreachable');
  dp!.upsertEndpoint(B.cfg!);
  t.same(dp!.counters(B.cfg!.hostIfindex), { rxPackets: 0n, rxBytes: 0n, txPackets: 0n, txBytes: 0n }, 'fresh counters');
  t.equal(udpEchoes(A, B.ip4, 5), 5);
});

t.test('agent restart: pinned maps and attachments survive, re-attach swaps programs in place', async (t) => {
  const old = dp!;
  const oldIds = old.programIds;
  const bBefore = old.counters(B.cfg!.hostIfindex)!;
  old.close();
  dp = null;
  t.equal(udpEchoes(A, B.ip4, 5), 5, 'traffic flows with no agent running');
  // The same object again: its pinned programs are reused (no verifier run), attachments stay current.
  const same = loadDatapath({ objectPath: path.join(root, 'dist/bpf/endpoint.o'), pinDir });
  t.same(same.programIds, oldIds, 'same object: the pinned programs are reused');
  t.ok(same.isCurrent(A.cfg!.hostIfindex), 'and the endpoints run them already');
  same.close();
  // Another object (an upgrade; here the same bytes plus one): loaded anew, swapped in by re-attach.
  const upgraded = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-obj-')), 'endpoint.o');
  fs.writeFileSync(upgraded, Buffer.concat([fs.readFileSync(path.join(root, 'dist/bpf/endpoint.o')), Buffer.alloc(1)]));
  t.teardown(() => fs.rmSync(path.dirname(upgraded), { recursive: true, force: true }));
  dp = loadDatapath({ objectPath: upgraded, pinDir });
  t.same(dp.listLocalEndpointIps(), [A.ip4, B.ip4, A.ip6, B.ip6].sort(), 'local endpoints kept');
  t.same(
    dp.listEndpointIfindexes(),
    pods.map((p) => p.cfg!.hostIfindex).sort((a, b) => a - b),
  );
  const bAfter = dp.counters(B.cfg!.hostIfindex)!;
  t.ok(bAfter.rxPackets >= bBefore.rxPackets + 5n, 'counters kept and still counting');
  t.same(
    dp.attachedProgramIds(A.cfg!.hostIfindex),
    { ingress: oldIds.fromContainer, egress: oldIds.toContainer },
    'old programs still attached',
  );
  t.notOk(dp.isCurrent(A.cfg!.hostIfindex), 'not current until re-attached');
  dp.upsertEndpoint(B.cfg!); // restore re-sync: same endpoint keeps its counters
  t.ok(dp.counters(B.cfg!.hostIfindex)!.rxPackets >= bAfter.rxPackets, 're-sync keeps counters');
  for (const pod of pods) dp.attach(pod.cfg!.hostIfindex);
  t.ok(
    pods.every((p) => dp!.isCurrent(p.cfg!.hostIfindex)),
    'current after re-attach',
  );
  t.equal(udpEchoes(A, B.ip4, 5), 5);
  t.equal(udpEchoes(A, B.ip6, 5), 5);
  const pressure = dp.mapPressure();
  t.same(pressure.local_endpoints, { entries: 4, max: 8192 });
  t.same(pressure.endpoints_cfg, { entries: 2, max: 4096 });
});

t.test('detach is best effort and reversible', async (t) => {
  dp!.detach(A.cfg!.hostIfindex);
  t.same(dp!.attachedProgramIds(A.cfg!.hostIfindex), {});
  t.equal(udpEchoes(A, B.ip4, 2, 500), 0, 'no redirect once detached');
  dp!.detach(A.cfg!.hostIfindex);
  t.doesNotThrow(() => dp!.detach(0x7ffffff0), 'missing link');
  t.same(dp!.attachedProgramIds(0x7ffffff0), {});
  t.throws(
    () => dp!.attach(0x7ffffff0),
    /bpf_link_create tcx ingress hook of no device \(ifindex 2147483632\) in .*ENODEV/,
    'errors name op, hook, device and reason',
  );
  dp!.attach(A.cfg!.hostIfindex);
  t.equal(udpEchoes(A, B.ip4, 3), 3);
});

t.test('pins: one per map and program, removed by removePins', async (t) => {
  t.same(
    fs
      .readdirSync(pinDir)
      .filter((n) => !TCX_LINK_PIN.test(n))
      .map((n) => n.replace(/^prog_stamp_[0-9a-f]+$/, 'prog_stamp_'))
      .sort(),
    [
      'conntrack',
      'ct_owned',
      'ct_reclaimed',
      'ct_server_ports',
      'datapath_config',
      'dns_answers',
      'dns_answers_scratch',
      'dns_cache_config',
      'dns_cache_hits',
      'drop_counters',
      'endpoints_cfg',
      'ep_counters',
      'event_bucket',
      'events',
      'events_lost',
      'fragments',
      'ipcache',
      'local_endpoints',
      'overlay_config',
      'policy',
      'prog_from_container',
      'prog_from_host_device',
      'prog_from_tunnel',
      'prog_from_underlay',
      'prog_proxy_steer',
      'prog_stamp_',
      'prog_to_container',
      'prog_to_tunnel',
      'proxy_config',
      'proxy_listeners',
      'proxy_tcp_divert',
      'proxy_udp_dst',
      'tunnel_map',
    ],
  );
  t.same(
    fs
      .readdirSync(pinDir)
      .filter((n) => TCX_LINK_PIN.test(n))
      .sort(),
    pods.flatMap((p) => [`link_tcx_${p.cfg!.hostIfindex}_egress`, `link_tcx_${p.cfg!.hostIfindex}_ingress`]).sort(),
    "and one tcx link per endpoint's hook",
  );
  t.throws(
    () => loadDatapath({ objectPath: path.join(root, 'dist/bpf/endpoint.o'), pinDir: '/tmp/mbt-not-bpffs' }),
    /not on a bpffs mount/,
  );
  dp!.close();
  dp = null;
  removePins(pinDir);
  t.notOk(fs.existsSync(pinDir));
});
