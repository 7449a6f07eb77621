// The tc programs run against crafted packets with BPF_PROG_TEST_RUN (root + bpffs needed; skipped
// otherwise). Checks the router behaviour of from_container: redirect verdict, TTL/hop-limit
// decrement with a still-valid IPv4 checksum, L2 rewrite, counters; and the pass-through cases.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { type Datapath, loadDatapath, removePins } from '../src/bpf/datapath.ts';
import { mapCount, mapKeys, mapUpdate, objGet, progTestRun } from '../src/bpf/libbpf.ts';
import { possibleCpus } from '../src/bpf/pins.ts';

const TC_ACT_OK = 0;
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function bpffsMounted(): boolean {
  return fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === '/sys/fs/bpf' && l.split(' ')[2] === 'bpf');
}
if (process.getuid?.() !== 0 || !bpffsMounted()) {
  t.plan(0, 'needs root and bpffs at /sys/fs/bpf');
  process.exit(0);
}

// Source endpoint on lo (ifindex 1: the device BPF_PROG_TEST_RUN uses), destination on an ifindex
// that only exists in the map (the test run records the redirect but never performs it).
const SRC = {
  hostIfindex: 1,
  endpointId: 11,
  identity: 1001,
  flags: 0,
  hostMac: '02:00:00:00:0a:01',
  containerMac: '02:00:00:00:0a:02',
  ips: ['10.251.0.1', 'fd00:fb::1'],
};
const DST = {
  hostIfindex: 900001,
  endpointId: 12,
  identity: 1002,
  flags: 0,
  hostMac: '02:00:00:00:0b:01',
  containerMac: '02:00:00:00:0b:02',
  ips: ['10.251.0.2', 'fd00:fb::2'],
};

function mac(s: string): Buffer {
  return Buffer.from(s.split(':').map((h) => parseInt(h, 16)));
}

function ipv4Checksum(hdr: Buffer): number {
  let sum = 0;
  for (let i = 0; i < hdr.length; i += 2) sum += hdr.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function ipv4Packet(dst: string, ttl: number, id = 0x1234): Buffer {
  const eth = Buffer.concat([mac(SRC.hostMac), mac(SRC.containerMac), Buffer.from([0x08, 0x00])]);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + 4, 2);
  ip.writeUInt16BE(id, 4);
  ip[8] = ttl;
  ip[9] = 17;
  Buffer.from(SRC.ips[0].split('.').map(Number)).copy(ip, 12);
  Buffer.from(dst.split('.').map(Number)).copy(ip, 16);
  ip.writeUInt16BE(ipv4Checksum(ip), 10);
  const udp = Buffer.from([0x30, 0x39, 0x00, 0x35, 0x00, 12, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
  return Buffer.concat([eth, ip, udp]);
}

function ipv6Packet(dstLast: number, hopLimit: number): Buffer {
  const eth = Buffer.concat([mac(SRC.hostMac), mac(SRC.containerMac), Buffer.from([0x86, 0xdd])]);
  const ip6 = Buffer.alloc(40);
  ip6[0] = 0x60;
  ip6.writeUInt16BE(12, 4);
  ip6[6] = 17;
  ip6[7] = hopLimit;
  Buffer.from([0xfd, 0, 0, 0xfb, ...Array(11).fill(0), 1]).copy(ip6, 8);
  Buffer.from([0xfd, 0, 0, 0xfb, ...Array(11).fill(0), dstLast]).copy(ip6, 24);
  return Buffer.concat([eth, ip6, Buffer.from([0x30, 0x39, 0x00, 0x35, 0x00, 12, 0, 0, 1, 2, 3, 4])]);
}

execFileSync('bash', [path.join(root, 'scripts/build-bpf.sh')], { stdio: 'inherit' });
const pinDir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
let dp: Datapath;
let fromFd = -1;
let toFd = -1;
t.before(() => {
  dp = loadDatapath({ objectPath: path.join(root, 'dist/bpf/endpoint.o'), pinDir });
  dp.upsertEndpoint(SRC);
  dp.upsertEndpoint(DST);
  fromFd = objGet(path.join(pinDir, 'prog_from_container'));
  toFd = objGet(path.join(pinDir, 'prog_to_container'));
});
t.teardown(() => {
  for (const fd of [fromFd, toFd]) if (fd >= 0) fs.closeSync(fd);
  dp?.close();
  removePins(pinDir);
});

t.test('IPv4 to a local endpoint: TTL-1, checksum valid, L2 rewritten, redirected, counted', async (t) => {
  const before = { src: dp.counters(SRC.hostIfindex)!, dst: dp.counters(DST.hostIfindex)! };
  const pkt = ipv4Packet(DST.ips[0], 64);
  const { retval, data } = progTestRun(fromFd, pkt);
  t.equal(retval, TC_ACT_REDIRECT);
  t.same([...data.subarray(0, 6)], [...mac(DST.containerMac)], 'dst MAC = destination container');
  t.same([...data.subarray(6, 12)], [...mac(DST.hostMac)], 'src MAC = destination host veth');
  const ip = data.subarray(14, 34);
  t.equal(ip[8], 63, 'TTL decremented');
  t.equal(ipv4Checksum(ip), 0, 'header checksum still valid');
  t.same(data.subarray(34), pkt.subarray(34), 'payload untouched');
  const after = { src: dp.counters(SRC.hostIfindex)!, dst: dp.counters(DST.hostIfindex)! };
  t.equal(after.src.txPackets - before.src.txPackets, 1n, 'source tx counted');
  t.equal(after.src.txBytes - before.src.txBytes, BigInt(pkt.length));
  t.equal(after.dst.rxPackets - before.dst.rxPackets, 1n, 'destination rx counted');
  t.equal(after.dst.rxBytes - before.dst.rxBytes, BigInt(pkt.length));
  const timing = progTestRun(fromFd, pkt, { repeat: 100000 });
  t.comment(`from_container redirect path: ${timing.durationNs} ns/packet`);
});

t.test('IPv4 checksum stays valid across TTL values (carry cases)', async (t) => {
  for (const ttl of [2, 3, 128, 255]) {
    const { retval, data } = progTestRun(fromFd, ipv4Packet(DST.ips[0], ttl));
    t.equal(retval, TC_ACT_REDIRECT);
    t.equal(data[14 + 8], ttl - 1);
    t.equal(ipv4Checksum(data.subarray(14, 34)), 0, `ttl ${ttl}`);
  }
  // The program sums the change itself (fib.h csum_replace16): every header checksum the IP id can
  // produce, so the end-around carry and the 0x0000/0xffff boundary are all met.
  let bad = 0;
  for (let id = 0; id < 0x10000; id += 7) {
    const { data } = progTestRun(fromFd, ipv4Packet(DST.ips[0], 2 + (id % 254), id));
    if (ipv4Checksum(data.subarray(14, 34)) !== 0) bad++;
  }
  t.equal(bad, 0, 'checksum valid for 9,363 IP ids and TTLs');
});

t.test('expiring, non-local and hairpin IPv4 packets go to the stack untouched', async (t) => {
  for (const [what, pkt] of [
    ['ttl 1', ipv4Packet(DST.ips[0], 1)],
    ['ttl 0', ipv4Packet(DST.ips[0], 0)],
    ['not local', ipv4Packet('10.251.0.99', 64)],
    ['to itself', ipv4Packet(SRC.ips[0], 64)],
  ] as const) {
    const { retval, data } = progTestRun(fromFd, pkt);
    t.equal(retval, TC_ACT_OK, what);
    t.same(data, pkt, `${what}: unchanged`);
  }
});

t.test('IPv6 to a local endpoint: hop limit-1, L2 rewritten, redirected', async (t) => {
  const pkt = ipv6Packet(2, 64);
  const { retval, data } = progTestRun(fromFd, pkt);
  t.equal(retval, TC_ACT_REDIRECT);
  t.same([...data.subarray(0, 12)], [...mac(DST.containerMac), ...mac(DST.hostMac)]);
  t.equal(data[14 + 7], 63);
  t.same(data.subarray(22), pkt.subarray(22), 'addresses and payload untouched');
  const expiring = ipv6Packet(2, 1);
  const expired = progTestRun(fromFd, expiring);
  t.equal(expired.retval, TC_ACT_OK, 'hop limit 1 goes to the stack');
  t.same(expired.data, expiring, 'hop limit 1: unchanged');
  t.equal(progTestRun(fromFd, ipv6Packet(99, 64)).retval, TC_ACT_OK, 'not local');
});

t.test("ARP passes untouched when it speaks for the endpoint's own address", async (t) => {
  const arp = (sha: string, spa: string) =>
    Buffer.concat([
      Buffer.alloc(6, 0xff),
      mac(SRC.containerMac),
      Buffer.from([0x08, 0x06]),
      Buffer.from([0, 1, 8, 0, 6, 4, 0, 1]),
      mac(sha),
      Buffer.from(spa.split('.').map(Number)),
      Buffer.alloc(6),
      Buffer.from([10, 251, 0, 254]),
    ]);
  for (const [what, pkt] of [
    ['own address', arp(SRC.containerMac, SRC.ips[0])],
    ['probe from 0.0.0.0', arp(SRC.containerMac, '0.0.0.0')],
  ] as const) {
    const { retval, data } = progTestRun(fromFd, pkt);
    t.equal(retval, TC_ACT_OK, what);
    t.same(data, pkt, `${what}: unchanged`);
  }
  t.equal(progTestRun(fromFd, arp(SRC.containerMac, DST.ips[0])).retval, TC_ACT_SHOT, "another endpoint's address: dropped");
  t.equal(progTestRun(fromFd, arp(DST.containerMac, SRC.ips[0])).retval, TC_ACT_SHOT, 'another sender MAC: dropped');
});

t.test('to_container counts rx for its interface and passes', async (t) => {
  const before = dp.counters(SRC.hostIfindex)!;
  const pkt = ipv4Packet(SRC.ips[0], 64);
  const { retval, data } = progTestRun(toFd, pkt);
  t.equal(retval, TC_ACT_OK);
  t.same(data, pkt);
  const after = dp.counters(SRC.hostIfindex)!;
  t.equal(after.rxPackets - before.rxPackets, 1n);
  t.equal(after.rxBytes - before.rxBytes, BigInt(pkt.length));
});

t.test('an unconfigured interface is not counted and forwards nothing (fail closed)', async (t) => {
  dp.removeEndpoint(SRC.hostIfindex, SRC.ips);
  t.equal(dp.counters(SRC.hostIfindex), null);
  const noConfig = () => dp.dropCounters()[165]?.packets ?? 0n;
  const before = noConfig();
  t.equal(
    progTestRun(fromFd, ipv4Packet(DST.ips[0], 64)).retval,
    TC_ACT_SHOT,
    'from_container drops: nobody to check the source against',
  );
  t.equal(progTestRun(toFd, ipv4Packet(SRC.ips[0], 64)).retval, TC_ACT_SHOT, 'to_container drops too');
  t.equal(noConfig(), before + 2n, 'counted as NO_CONFIGURATION');
  t.equal(dp.counters(SRC.hostIfindex), null, 'no counter entry created by the program');
  dp.upsertEndpoint(SRC);
});

t.test('an endpoint id given to a new endpoint starts from zero, whatever its slot held', async (t) => {
  const NEXT = { ...SRC, hostIfindex: 900004, endpointId: 14, ips: ['10.251.0.4'] };
  t.teardown(() => dp.removeEndpoint(NEXT.hostIfindex, NEXT.ips));
  // A previous owner's counts (or a packet in flight after its removal) left in id 14's slot.
  const fd = objGet(path.join(pinDir, 'ep_counters'));
  const slot = Buffer.alloc(32 * possibleCpus(), 0xff);
  mapUpdate(fd, 'ep_counters', Buffer.from(Uint32Array.of(14).buffer), slot);
  fs.closeSync(fd);
  dp.upsertEndpoint(NEXT);
  t.same(dp.counters(NEXT.hostIfindex), { rxPackets: 0n, rxBytes: 0n, txPackets: 0n, txBytes: 0n }, 'fresh counters');
  const pkt = ipv4Packet(SRC.ips[0], 64);
  dp.removeEndpoint(SRC.hostIfindex, SRC.ips);
  dp.upsertEndpoint({ ...SRC, endpointId: NEXT.endpointId }); // lo counted under id 14 now
  t.teardown(() => {
    dp.removeEndpoint(SRC.hostIfindex, SRC.ips);
    dp.upsertEndpoint(SRC);
  });
  t.equal(progTestRun(toFd, pkt).retval, TC_ACT_OK);
  t.equal(dp.counters(NEXT.hostIfindex)!.rxPackets, 1n, 'counted in the slot its config names');
});

t.test('an id beyond ep_counters (kept from an agent that gave out larger ids) is configured, just not counted', async (t) => {
  const BIG = { ...DST, hostIfindex: 900005, endpointId: 5000, ips: ['10.251.0.5'] };
  t.teardown(() => dp.removeEndpoint(BIG.hostIfindex, BIG.ips));
  dp.upsertEndpoint(BIG);
  t.ok(dp.listEndpointIfindexes().includes(BIG.hostIfindex));
  t.equal(dp.counters(BIG.hostIfindex), null);
});

t.test('a pinned map with another layout is refused, or replaced on request', async (t) => {
  const dir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  t.teardown(() => removePins(dir));
  fs.mkdirSync(dir);
  execFileSync('bpftool', [
    'map',
    'create',
    `${dir}/endpoints_cfg`,
    'type',
    'hash',
    'key',
    '4',
    'value',
    '8',
    'entries',
    '16',
    'name',
    'endpoints_cfg',
  ]);
  const objectPath = path.join(root, 'dist/bpf/endpoint.o');
  t.throws(
    () => loadDatapath({ objectPath, pinDir: dir }),
    /pinned map .*endpoints_cfg cannot be reused .*value_size pinned=8 object=80, max_entries pinned=16 object=4096/,
  );
  const replaced = loadDatapath({ objectPath, pinDir: dir, replaceIncompatiblePins: true });
  t.equal(replaced.mapPressure().endpoints_cfg.max, 4096);
  replaced.close();
});

t.test("an event ring pinned with another size (an older agent's) is replaced: it holds nothing to keep", async (t) => {
  const dir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  t.teardown(() => removePins(dir));
  fs.mkdirSync(dir);
  execFileSync('bpftool', [
    'map',
    'create',
    `${dir}/events`,
    'type',
    'ringbuf',
    'key',
    '0',
    'value',
    '0',
    'entries',
    String(1 << 20),
    'name',
    'events',
  ]);
  const loaded = loadDatapath({ objectPath: path.join(root, 'dist/bpf/endpoint.o'), pinDir: dir });
  const info = JSON.parse(execFileSync('bpftool', ['-j', 'map', 'show', 'pinned', `${dir}/events`], { encoding: 'utf8' })) as {
    max_entries: number;
  };
  t.equal(info.max_entries, 1 << 22, "the pin is the object's 4 MiB ring now");
  loaded.close();
});

t.test('removeEndpoint(0, ips) drops only those addresses (shared host interface)', async (t) => {
  dp.removeEndpoint(0, [DST.ips[1]]);
  t.notOk(dp.listLocalEndpointIps().includes(DST.ips[1]));
  t.ok(dp.listLocalEndpointIps().includes(DST.ips[0]));
  t.ok(dp.listEndpointIfindexes().includes(DST.hostIfindex), 'per-interface config kept');
  t.not(dp.counters(DST.hostIfindex), null, 'counters kept');
  dp.upsertEndpoint(DST);
});

t.test('publishing through a local_endpoints index (restore) drops lost addresses, never another endpoint’s', async (t) => {
  t.teardown(() => {
    dp.removeEndpoint(OTHER.hostIfindex, OTHER.ips);
    dp.upsertEndpoint(DST);
  });
  const OTHER = { ...DST, hostIfindex: 900002, endpointId: 13, ips: [DST.ips[1]] };
  const index = dp.indexLocalEndpoints();
  dp.publishEndpoint({ ...DST, ips: [DST.ips[0]] }, index);
  t.notOk(dp.listLocalEndpointIps().includes(DST.ips[1]), 'the address it no longer has is gone');
  t.ok(dp.listLocalEndpointIps().includes(DST.ips[0]), 'the address it has stays');
  t.ok(dp.listLocalEndpointIps().includes(SRC.ips[0]), "another interface's address stays");
  // The index still says DST had both; the map changed under it: DST.ips[1] belongs to OTHER now.
  dp.publishEndpoint(DST, index);
  dp.upsertEndpoint(OTHER);
  dp.publishEndpoint({ ...DST, ips: [DST.ips[0]] }, index);
  t.ok(dp.listLocalEndpointIps().includes(DST.ips[1]), 'an address that points at another interface by now is left alone');
});

t.test('mapCount counts what mapKeys lists (hash and LPM trie), bounded by its limit', async (t) => {
  const dir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true })); // two plain maps, not a datapath's pins
  fs.mkdirSync(dir);
  const create = (name: string, type: string, key: number, flags: string[]) =>
    execFileSync('bpftool', [
      'map',
      'create',
      `${dir}/${name}`,
      'type',
      type,
      'key',
      String(key),
      'value',
      '4',
      'entries',
      '512',
      'name',
      name,
      ...flags,
    ]);
  create('h', 'hash', 4, []);
  create('lpm', 'lpm_trie', 8, ['flags', '1']); // BPF_F_NO_PREALLOC, which LPM tries require
  const h = objGet(`${dir}/h`),
    lpm = objGet(`${dir}/lpm`);
  t.teardown(() => {
    for (const fd of [h, lpm]) fs.closeSync(fd);
  });
  t.equal(mapCount(h, 'h', 4, 513), 0, 'empty');
  for (let i = 0; i < 300; i++) {
    const k = Buffer.alloc(4);
    k.writeUInt32LE(i * 7919);
    mapUpdate(h, 'h', k, Buffer.alloc(4));
    const p = Buffer.alloc(8);
    p.writeUInt32LE(32, 0); // prefix length, then the address
    p.writeUInt32BE(0x0a000000 + i, 4);
    mapUpdate(lpm, 'lpm', p, Buffer.alloc(4));
  }
  t.equal(mapCount(h, 'h', 4, 513), 300);
  t.equal(mapCount(h, 'h', 4, 513), mapKeys(h, 'h', 4, 513).length);
  t.equal(mapCount(lpm, 'lpm', 8, 513), 300);
  t.equal(mapCount(h, 'h', 4, 10), 10, 'stops at the limit');
});
