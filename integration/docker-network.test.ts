// `docker network create -d <membrane plugin>` for real: a private dockerd, the agent hosting the plugin,
// busybox containers. Connectivity (ping + TCP, IPv4 + IPv6, gateway), labels in `membrane endpoint
// list`, the membrane IPAM driver, two networks per container, MTU, nothing left after network rm,
// and clear docker errors for bad options.
import t from 'tap';
import { linkExists } from './lib/netns.ts';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { dockerFixture, dockerSubnet, dockerSubnet6, eventually, type DockerTestEnv } from './lib/docker-env.ts';
import { BB_IMAGE_LABEL } from './lib/bbimage.ts';
import { mapEntries, hostRouteTo } from './lib/inspect.ts';
import { REPO } from './lib/agent.ts';
import type { Endpoint } from '../shared/src/types.ts';

// Real dockerd + containers: minutes under load, more than tap's default per-file timeout.
t.setTimeout(15 * 60_000);

const { env } = dockerFixture(t);

function membraneCli(e: DockerTestEnv, args: string[]): string {
  return execFileSync(
    process.execPath,
    ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), '--socket', e.agent.socket, ...args],
    { encoding: 'utf8', cwd: REPO },
  );
}

t.test('two containers ping and TCP each other and the gateway, v4 and v6; labels reach membrane', async (t) => {
  const e = await env(t);
  const s4 = dockerSubnet(),
    s6 = dockerSubnet6();
  const net = await e.network(['--subnet', s4.cidr, '--ipv6', '--subnet', s6.cidr]);
  const web = await e.run(
    ['--network', net, '--label', 'app=web', '--label', 'team=blue'],
    ['nc', '-ll', '-p', '7000', '-e', 'cat'],
  );
  const cli = await e.run(['--network', net, '--label', 'app=client']);
  const a = await e.addressOf(web, net),
    b = await e.addressOf(cli, net);
  t.match(a.ip, new RegExp(`^${s4.prefix.replace(/\./g, '\\.')}\\.\\d+$`), 'docker IPAM address in the subnet');
  t.ok(a.ip6.startsWith(s6.prefix), 'IPv6 address in the subnet');
  t.ok(await e.pingEventually(cli, a.ip), 'client -> web IPv4');
  t.ok(await e.ping(web, b.ip), 'web -> client IPv4');
  t.ok(await e.ping(cli, s4.gateway), 'client -> gateway IPv4');
  t.ok(await e.ping(cli, a.ip6), 'client -> web IPv6');
  t.ok(await e.ping(cli, s6.gateway), 'client -> gateway IPv6');
  const tcp = await e.exec(cli, ['sh', '-c', `echo hello-membrane | nc -w 3 ${a.ip} 7000`]);
  t.match(tcp.stdout, /hello-membrane/, `TCP echo over IPv4 (${tcp.stderr.trim()})`);
  const tcp6 = await e.exec(cli, ['sh', '-c', `echo hello-v6 | nc -w 3 ${a.ip6} 7000`]);
  t.match(tcp6.stdout, /hello-v6/, `TCP echo over IPv6 (${tcp6.stderr.trim()})`);

  const eth0 = (await e.exec(cli, ['ip', '-o', 'addr', 'show', 'eth0'])).stdout;
  t.match(eth0, new RegExp(`inet ${b.ip.replace(/\./g, '\\.')}/24`), 'dockerd configured eth0 with its /24');
  t.equal((await e.dockerTry(['network', 'inspect', 'docker_gwbridge'])).code, 1, 'no docker_gwbridge: Join returned a Gateway');
  t.match((await e.exec(cli, ['ip', 'route', 'show', 'default'])).stdout, new RegExp(`default via ${s4.gateway}`));

  const labelled = await eventually(async () => {
    const eps = await e.agent.client.listEndpoints();
    return eps.length === 2 && eps.every((x) => x.docker?.containerName && !x.labelsPending);
  });
  t.ok(labelled, 'both endpoints labelled');
  const eps = await e.agent.client.listEndpoints();
  const webEp = eps.find((x) => x.docker?.containerName === web)!;
  t.ok(webEp, 'web endpoint found by its container name');
  const webId = (await e.docker(['inspect', '-f', '{{.Id}}', web])).trim();
  t.same(
    webEp.labels,
    {
      'container:app': 'web',
      'container:team': 'blue',
      [`container:${BB_IMAGE_LABEL.key}`]: BB_IMAGE_LABEL.value,
    },
    'container labels and image labels, in the container: source (no per-container id or name in them)',
  );
  t.equal(webEp.docker?.endpointId, a.endpointId, 'the Docker endpoint id is kept as such');
  t.equal(webEp.containerId, webId, 'with the container id alongside');
  t.equal(webEp.docker?.containerName, web, 'and the container name');
  t.same(webEp.ips.map((i) => i.address.split('/')[0]).sort(), [a.ip, a.ip6].sort());
  t.equal(webEp.mac, a.mac, 'docker inspect shows the MAC membrane chose');
  const list = membraneCli(e, ['endpoint', 'list']);
  t.match(list, /container:app=web/, '`membrane endpoint list` shows the container labels');
});

t.test('docker network rm leaves no link, route, address or map entry behind', async (t) => {
  const e = await env(t);
  const s4 = dockerSubnet(),
    s6 = dockerSubnet6();
  const maps = () => ({
    cfg: mapEntries(e.agent.bpffsDir, 'endpoints_cfg'),
    local: mapEntries(e.agent.bpffsDir, 'local_endpoints'),
  });
  const before = maps();
  const net = await e.network(['--subnet', s4.cidr, '--ipv6', '--subnet', s6.cidr]);
  const c1 = await e.run(['--network', net]),
    c2 = await e.run(['--network', net]);
  const a1 = await e.addressOf(c1, net),
    a2 = await e.addressOf(c2, net);
  t.ok(await e.pingEventually(c1, a2.ip));
  const eps: Endpoint[] = await e.agent.client.listEndpoints();
  t.equal(eps.length, 2);
  t.ok(
    eps.every((x) => linkExists(x.hostIfName)),
    'host veths exist while running',
  );
  t.not(hostRouteTo(a1.ip), '', 'host route to the container while running');
  const hostAddrs = () => execFileSync('ip', ['-o', 'addr', 'show', 'dev', e.agent.hostDevice], { encoding: 'utf8' });
  t.match(
    hostAddrs(),
    new RegExp(`${s4.gateway.replace(/\./g, '\\.')}/32`),
    'gateway on the host device while the network exists',
  );
  t.ok(maps().local > before.local, 'map entries while running');

  await e.docker(['rm', '-f', c1, c2]);
  await e.docker(['network', 'rm', net]);
  e.containers.clear();
  e.networks.clear();
  t.same(await e.agent.client.listEndpoints(), [], 'no endpoint left');
  t.notOk(
    (await e.agent.client.listNetworks()).some((n) => n.name.startsWith('docker-')),
    'no core network left',
  );
  t.same(
    (await e.agent.client.ipam()).flatMap((p) => p.allocations),
    [],
    'no allocation left',
  );
  for (const ep of eps) {
    t.ok(await eventually(() => !linkExists(ep.hostIfName)), `host veth ${ep.hostIfName} gone`);
    t.notOk(linkExists(ep.ifName), `temp interface ${ep.ifName} gone`);
  }
  for (const ip of [a1.ip, a2.ip, a1.ip6, a2.ip6]) t.equal(hostRouteTo(ip), '', `no host route to ${ip}`);
  t.notMatch(hostAddrs(), new RegExp(s4.gateway.replace(/\./g, '\\.') + '/'), 'IPv4 gateway address removed');
  t.notMatch(hostAddrs(), new RegExp(s6.gateway + '/'), 'IPv6 gateway address removed');
  t.same(maps(), before, 'map entries back to where they were');
});

t.test('--ipam-driver membrane: gateway, --ip, --ip-range, release on rm', async (t) => {
  const e = await env(t);
  const s4 = dockerSubnet();
  const net = await e.network([
    '--ipam-driver',
    e.plugin,
    '--subnet',
    s4.cidr,
    '--ip-range',
    `${s4.prefix}.128/25`,
    '--gateway',
    `${s4.prefix}.254`,
  ]);
  const fixed = await e.run(['--network', net, '--ip', `${s4.prefix}.50`]);
  const auto = await e.run(['--network', net]);
  t.equal((await e.addressOf(fixed, net)).ip, `${s4.prefix}.50`, '--ip honoured');
  t.equal((await e.addressOf(auto, net)).ip, `${s4.prefix}.128`, 'first address of --ip-range');
  t.ok(await e.pingEventually(auto, `${s4.prefix}.50`), 'containers talk');
  t.ok(await e.ping(auto, `${s4.prefix}.254`), 'the --gateway answers');
  const owners = (await e.agent.client.ipam()).flatMap((p) => p.allocations.map((a) => a.ip)).sort();
  t.same(owners, [`${s4.prefix}.128`, `${s4.prefix}.50`], 'the core IPAM holds the container addresses');
  const dup = await e.dockerTry(['run', '--rm', '--network', net, '--ip', `${s4.prefix}.50`, e.image, 'true']);
  t.not(dup.code, 0);
  t.match(
    dup.stderr,
    /address 10\.\d+\.\d+\.50 is already in use on this network \(pick another --ip\)/,
    `clear error for a taken --ip: ${dup.stderr.trim()}`,
  );
  await e.docker(['rm', '-f', fixed]);
  e.containers.delete(fixed);
  t.same(
    (await e.agent.client.ipam()).flatMap((p) => p.allocations.map((a) => a.ip)),
    [`${s4.prefix}.128`],
    'released on rm',
  );
  await e.docker(['rm', '-f', auto]);
  e.containers.delete(auto);
  await e.docker(['network', 'rm', net]);
  e.networks.delete(net);
  t.same(
    await e.agent.client.ipam().then((p) => p.filter((x) => x.name.startsWith('docker-'))),
    [],
    'pool gone with the network',
  );
});

t.test('one container on two membrane networks; -o membrane.mtu', async (t) => {
  const e = await env(t);
  const sa = dockerSubnet(),
    sb = dockerSubnet();
  const na = await e.network(['--subnet', sa.cidr, '-o', 'membrane.mtu=1400']);
  const nb = await e.network(['--ipam-driver', e.plugin, '--subnet', sb.cidr]);
  const both = await e.run(['--network', na]);
  await e.docker(['network', 'connect', nb, both]);
  const onlyA = await e.run(['--network', na]),
    onlyB = await e.run(['--network', nb]);
  t.ok(await e.pingEventually(onlyA, (await e.addressOf(both, na)).ip), 'peer on network A reaches it');
  t.ok(await e.pingEventually(onlyB, (await e.addressOf(both, nb)).ip), 'peer on network B reaches it');
  t.ok(await e.ping(both, (await e.addressOf(onlyB, nb)).ip), 'it reaches network B');
  const links = (await e.exec(both, ['ip', '-o', 'link'])).stdout;
  t.match(links, /eth0.*mtu 1400/, 'eth0 on network A has the MTU of -o membrane.mtu');
  t.match(links, /eth1.*mtu 1500/, 'eth1 on network B has the default MTU');
  t.equal((await e.agent.client.listEndpoints()).length, 4);
});

t.test('bad options give a clear docker error and leave nothing behind', async (t) => {
  const e = await env(t);
  const s = dockerSubnet();
  const create = (args: string[]) => e.dockerTry(['network', 'create', '-d', e.plugin, ...args, `bad${Date.now() % 100000}`]);
  const unknown = await create(['--subnet', s.cidr, '-o', 'membrane.bogus=1']);
  t.not(unknown.code, 0);
  t.match(unknown.stderr, /unknown option -o membrane.bogus; membrane networks accept: membrane.mtu/, unknown.stderr.trim());
  const mtu = await create(['--subnet', s.cidr, '-o', 'membrane.mtu=9']);
  t.match(mtu.stderr, /-o membrane.mtu=9 is not a valid MTU/, mtu.stderr.trim());
  const agentPool = e.agent.pools[0].split(',')[0];
  const overlap = await create(['--subnet', agentPool]);
  t.not(overlap.code, 0);
  t.match(overlap.stderr, /overlaps subnet .* of membrane network "default"/, overlap.stderr.trim());
  const first = await e.network(['--ipam-driver', e.plugin, '--subnet', s.cidr]);
  const overlap2 = await create(['--ipam-driver', e.plugin, '--subnet', `${s.prefix}.128/25`]);
  t.match(
    overlap2.stderr,
    new RegExp(`overlaps subnet ${s.cidr.replace(/\./g, '\\.')} of Docker network`),
    overlap2.stderr.trim(),
  );
  const badCidr = await create(['--ipam-driver', e.plugin, '--subnet', '10.250.0.0/33']);
  t.not(badCidr.code, 0);
  t.match(badCidr.stderr, /10\.250\.0\.0\/33/, `invalid CIDR named: ${badCidr.stderr.trim()}`);
  const noSubnet = await create(['--ipam-driver', e.plugin]);
  t.match(noSubnet.stderr, /membrane IPAM needs an explicit IPv4 subnet: add --subnet CIDR/, noSubnet.stderr.trim());
  const nets = (await e.agent.client.listNetworks()).map((n) => n.name).filter((n) => n.startsWith('docker-'));
  t.equal(nets.length, 1, `only the good network exists in membrane (${nets.join(', ')})`);
  const dockerNets = (await e.docker(['network', 'ls', '--filter', `driver=${e.plugin}`, '--format', '{{.Name}}']))
    .trim()
    .split('\n');
  t.same(dockerNets, [first], 'and in docker');
});
