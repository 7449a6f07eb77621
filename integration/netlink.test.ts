// netns + netlink + sysctl against the real kernel (root). Everything it creates carries a random hex tag
// and lives in the test's own namespaces, removed in teardown, also on failure: the host netns is never
// touched and its routes do not matter (a host without a default route runs this the same). Traffic
// only goes to addresses inside those namespaces.
//
//   netns R plays the node: mbh<tag> holds the gateways GW/32, GW6/128 (like the agent's host device)
//   netns A: eth0 = IP_A/32, IP6_A/128 --veth-- R: mbr<tag>a   (route IP_A/32 dev mbr<tag>a, proxy_arp)
//   netns B: eth0 = IP_B/32             --veth-- R: mbr<tag>b
//   A pings B through R's routing (L3, no bridge), R pings A over IPv6 (proxy_ndp).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import {
  currentThreadNetns,
  openNetns,
  threadsOutsideHostNetns,
  warmThreadPool,
  withNetns,
  type NetNs,
} from '../shared/src/netns/index.ts';
import { NetlinkError, openNetlink, type Netlink } from '../shared/src/netlink/index.ts';
import { getSysctl, setSysctl, setSysctlPath, sysctlIfPath, SysctlError } from '../shared/src/sysctl/index.ts';
import fs from 'node:fs';
import { claimPrefix24 } from './lib/subnets.ts';

const tag = randomBytes(3).toString('hex');
const nsName = { r: `mbn${tag}r`, a: `mbn${tag}a`, b: `mbn${tag}b` };
const hostIf = { a: `mbr${tag}a`, b: `mbr${tag}b` };
const gwDev = `mbh${tag}`;
const innerIf = `mbz${tag}.1`; // a dot in the name: sysctl key quoting
const innerPeer = `mbz${tag}p`;

const net = claimPrefix24(100, 250);
const gw = `${net}.1`;
const ip = { a: `${net}.5`, b: `${net}.6` };
const net6 = `fd5a:${randomInt(1, 0xffff).toString(16)}:${randomInt(1, 0xffff).toString(16)}`; // canonical text
const gw6 = `${net6}::1`;
const ip6a = `${net6}::5`;

const run = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const quiet = (cmd: string, ...args: string[]) => spawnSync(cmd, args, { stdio: 'ignore' }).status;
const inNs = (ns: string, ...args: string[]) =>
  spawnSync('nsenter', [`--net=/var/run/netns/${ns}`, ...args], { encoding: 'utf8' });

const handles: Netlink[] = [];
const nss: NetNs[] = [];

t.teardown(() => {
  for (const h of handles) h.close();
  for (const n of nss) n.close();
  // Every link lives in these namespaces and goes with them.
  for (const n of Object.values(nsName)) quiet('ip', 'netns', 'del', n);
});

for (const n of Object.values(nsName)) run('ip', 'netns', 'add', n);
await warmThreadPool();
const ns = {
  r: openNetns(`/var/run/netns/${nsName.r}`),
  a: openNetns(`/var/run/netns/${nsName.a}`),
  b: openNetns(`/var/run/netns/${nsName.b}`),
};
nss.push(ns.r, ns.a, ns.b);
/** The "node" side: a handle into R, and sysctls in R. */
const h = openNetlink(ns.r);
const setSysctlR = (key: string, value: string) => withNetns(ns.r, () => setSysctl(key, value));
const getSysctlR = (key: string) => withNetns(ns.r, () => getSysctl(key));
const inA = openNetlink(ns.a);
const inB = openNetlink(ns.b);
handles.push(h, inA, inB);

// The node's gateway device, as the agent has it: one end of a veth pair holding every gateway address.
h.vethAdd({ name: gwDev, up: true, peer: { name: `${gwDev}n`, up: true } });
const gwLink = h.linkByName(gwDev)!;
h.addrAdd(gwLink.index, `${gw}/32`, { noDad: true });
h.addrAdd(gwLink.index, `${gw6}/128`, { noDad: true });

/** Endpoint plumbing as the agent will do it (with R as the node). */
function plumb(inner: Netlink, host: string, peerMac: string, addr: string, addr6?: string) {
  // Host side created down so IPv6 DAD can be switched off before it starts (proxy NDP answers need a
  // usable link-local address at once).
  h.vethAdd({ name: host, mtu: 1450, peer: { name: 'eth0', netns: inner.netns, mac: peerMac, up: true } });
  setSysctlR(`net.ipv6.conf.${host}.accept_dad`, '0');
  const hl = h.linkByName(host)!;
  h.linkSetUp(hl.index);
  const eth0 = inner.linkByName('eth0')!;
  inner.addrAdd(eth0.index, `${addr}/32`, { noDad: true });
  inner.routeAdd({ dst: `${gw}/32`, index: eth0.index, scope: 'link' });
  inner.routeAdd({ dst: 'default', gateway: gw, index: eth0.index });
  h.routeAdd({ dst: `${addr}/32`, index: hl.index, scope: 'link' });
  setSysctlR(`net.ipv4.conf.${host}.proxy_arp`, '1');
  setSysctlR(`net.ipv4.neigh.${host}.proxy_delay`, '0'); // else proxy replies wait up to 0.8 s
  setSysctlR(`net.ipv4.conf.${host}.forwarding`, '1');
  if (addr6) {
    inner.addrAdd(eth0.index, `${addr6}/128`, { noDad: true });
    inner.routeAdd({ dst: `${gw6}/128`, index: eth0.index });
    inner.routeAdd({ dst: 'default', gateway: gw6, index: eth0.index });
    h.routeAdd({ dst: `${addr6}/128`, index: hl.index });
    setSysctlR(`net.ipv6.conf.${host}.forwarding`, '1'); // per interface only; proxy NDP requires it
    setSysctlR(`net.ipv6.conf.${host}.proxy_ndp`, '1');
    setSysctlR(`net.ipv6.neigh.${host}.proxy_delay`, '0');
    h.neighProxyAdd(hl.index, gw6);
  }
  return { host: hl, eth0 };
}

t.test('veth with the peer created directly in the netns', async (t) => {
  const { host, eth0 } = plumb(inA, hostIf.a, '02:aa:00:00:00:05', ip.a, ip6a);
  t.equal(host.kind, 'veth');
  t.equal(host.mtu, 1450);
  t.equal(eth0.name, 'eth0');
  t.equal(eth0.mac, '02:aa:00:00:00:05');
  t.equal(eth0.mtu, 1450, 'peer inherits the mtu');
  t.equal(eth0.up, true, 'peer is up');
  t.equal(h.linkByName(hostIf.a)?.up, true);
  t.equal(h.linkByName('eth0'), null, 'the peer is not in the node netns');
  t.match(
    inA
      .linkList()
      .map((l) => l.name)
      .sort(),
    ['eth0', 'lo'],
  );

  t.same(
    inA.addrList({ index: eth0.index, family: 4 }).map((a) => a.cidr),
    [`${ip.a}/32`],
  );
  t.ok(inA.addrList({ family: 6 }).some((a) => a.cidr === `${ip6a}/128` && a.index === eth0.index));
  inA.addrAdd(eth0.index, `${ip.a}/32`, { noDad: true }); // idempotent ensure
  inA.routeAdd({ dst: 'default', gateway: gw, index: eth0.index }); // replace: idempotent
  inA.routeAdd({ dst: `${gw6}/128`, index: eth0.index });
  inA.routeAdd({ dst: 'default', gateway: gw6, index: eth0.index });
  inA.addrAdd(eth0.index, `${ip6a}/128`, { noDad: true });
  t.throws(() => inA.addrAdd(eth0.index, `${ip6a}/64`), { code: 'exists' }, 'same address, other prefix: still an error');
  const routes = inA.routeList({ family: 4 });
  t.ok(routes.some((r) => r.dst === 'default' && r.gateway === gw && r.index === eth0.index && r.protocol === 4));
  t.ok(routes.some((r) => r.dst === `${gw}/32` && r.scope === 'link' && !r.gateway));
  t.ok(inA.routeList({ family: 6 }).some((r) => r.dst === 'default' && r.gateway === gw6));
  const hostRoutes = h.routeList({ index: host.index, family: 4 });
  t.same(
    hostRoutes.map((r) => [r.dst, r.scope, r.protocol]),
    [[`${ip.a}/32`, 'link', 4]],
  );
  t.equal(getSysctlR(`net.ipv4.conf.${hostIf.a}.proxy_arp`), '1');
  t.match(run('ip', '-n', nsName.r, '-6', 'neigh', 'show', 'proxy', 'dev', hostIf.a), gw6);
  t.throws(() => getSysctl(`net.ipv4.conf.${hostIf.a}.proxy_arp`), SysctlError, 'nothing of it in the host netns');
});

t.test('ping across the node (A -> B over IPv4, R -> A over IPv6)', async (t) => {
  plumb(inB, hostIf.b, '02:bb:00:00:00:06', ip.b);
  const p4 = inNs(nsName.a, 'ping', '-n', '-c', '3', '-i', '0.2', '-W', '3', ip.b);
  t.equal(p4.status, 0, `nsenter A ping ${ip.b}\n${p4.stdout}${p4.stderr}`);
  const p6 = inNs(nsName.r, 'ping', '-6', '-n', '-c', '3', '-i', '0.2', '-W', '3', '-I', gw6, ip6a);
  t.equal(p6.status, 0, `nsenter R ping -6 ${ip6a}\n${p6.stdout}${p6.stderr}`);
});

t.test('errors name the object', async (t) => {
  const again = () => h.vethAdd({ name: hostIf.a, peer: { name: 'eth0', netns: ns.a } });
  t.throws(again, { name: 'NetlinkError', code: 'exists', op: 'veth add' });
  try {
    again();
  } catch (e) {
    t.match((e as Error).message, `veth add ${hostIf.a} (peer eth0 in /var/run/netns/${nsName.a}): File exists`);
  }
  t.throws(() => inA.addrAdd(999999, `${ip.a}/32`), {
    code: 'not_found',
    message: `addr add ${ip.a}/32 ifindex 999999: No such device`,
  });
  const eth0 = inA.linkByName('eth0')!;
  t.throws(() => inA.routeAdd({ dst: `${net}.77/32`, gateway: '10.99.99.99', index: eth0.index }), {
    name: 'NetlinkError',
    op: 'route add',
    message: /^route add [\d.]+\/32 via 10\.99\.99\.99 dev eth0: Network is unreachable/,
  });
  t.throws(() => inA.addrAdd(eth0.index, 'not-an-ip'), { code: 'invalid', op: 'addr add' });
  t.throws(() => h.vethAdd({ name: 'x'.repeat(16), peer: { name: 'eth0' } }), { code: 'invalid' });
  const e = (() => {
    try {
      inA.addrAdd(999999, `${ip.a}/32`);
    } catch (err) {
      return err;
    }
  })();
  t.ok(e instanceof NetlinkError);
  t.equal(h.linkByName(`mbq${tag}x`), null, 'missing link -> null');
  t.equal(h.linkByIndex(999999), null);
});

t.test('delete returns false the second time', async (t) => {
  const hostA = h.linkByName(hostIf.a)!;
  t.equal(h.neighProxyDel(hostA.index, gw6), true);
  t.equal(h.neighProxyDel(hostA.index, gw6), false);
  t.equal(h.routeDel({ dst: `${ip.a}/32`, index: hostA.index }), true);
  t.equal(h.routeDel({ dst: `${ip.a}/32`, index: hostA.index }), false);
  const eth0 = inA.linkByName('eth0')!;
  t.equal(inA.addrDel(eth0.index, `${ip6a}/128`), true);
  t.equal(inA.addrDel(eth0.index, `${ip6a}/128`), false);
  t.equal(h.linkDel(hostIf.b), true);
  t.equal(h.linkDel(hostIf.b), false);
  t.equal(inB.linkByName('eth0'), null, 'deleting the host end removed the peer');
});

t.test('withNetns restores the thread netns even when fn throws', async (t) => {
  const self = () => fs.statSync('/proc/thread-self/ns/net', { bigint: true }).ino;
  const before = self();
  t.throws(
    () =>
      withNetns(ns.a, () => {
        throw new Error('inside');
      }),
    { message: 'inside' },
  );
  t.equal(self(), before);
  t.equal(self(), fs.fstatSync(currentThreadNetns().fd, { bigint: true }).ino);
  t.same(threadsOutsideHostNetns(), []);
});

t.test('sysctl inside a netns, interface name with a dot', async (t) => {
  inA.vethAdd({ name: innerIf, peer: { name: innerPeer, up: true } }); // both ends inside A (handle's netns)
  t.equal(inA.linkByName(innerIf)?.up, false);
  t.equal(inA.linkByName(innerPeer)?.up, true, 'peer brought up in the same netns');
  const key = `net.ipv4.conf.${innerIf.replace('.', '/')}.proxy_arp`;
  withNetns(ns.a, () => setSysctl(key, '1'));
  t.equal(
    withNetns(ns.a, () => getSysctl(key)),
    '1',
  );
  t.equal(inNs(nsName.a, 'cat', `/proc/sys/net/ipv4/conf/${innerIf}/proxy_arp`).stdout.trim(), '1');
  withNetns(ns.a, () => setSysctlPath(sysctlIfPath(4, innerIf, 'proxy_arp'), '0'));
  t.equal(inNs(nsName.a, 'cat', `/proc/sys/net/ipv4/conf/${innerIf}/proxy_arp`).stdout.trim(), '0');
  t.throws(() => getSysctl(key), SysctlError, 'not visible from the host netns');
  t.throws(() => setSysctl(key, '1'), { code: 'not_found', message: `sysctl ${key}=1: no such key` });
});
