// Pure encoding of the datapath's map keys/values (no kernel needed).
import t from 'tap';
import {
  decodeEndpointConfig,
  decodeIpKey,
  decodeLocalEndpoint,
  decodeU32Key,
  encodeEndpointConfig,
  encodeIpcacheKey,
  encodeIpKey,
  encodeLocalEndpoint,
  encodeU32Key,
  parseCpuList,
  parseIp,
  perCpuValueSize,
  sumPerCpuCounters,
  ENDPOINT_CONFIG_SIZE,
  IP_KEY_SIZE,
  LOCAL_ENDPOINT_SIZE,
} from '../src/maps/codec.ts';

t.test('IPv4 key: family 4, address in the first 4 bytes, rest zero', async (t) => {
  const key = encodeIpKey('10.200.3.7');
  t.equal(key.length, IP_KEY_SIZE);
  t.same([...key.subarray(0, 8)], [4, 0, 0, 0, 10, 200, 3, 7]);
  t.ok(key.subarray(8).every((b) => b === 0));
  t.equal(decodeIpKey(key), '10.200.3.7');
});

t.test('IPv6 key round-trips in canonical form', async (t) => {
  const cases: [string, string][] = [
    ['fd00::1', 'fd00::1'],
    ['FD00:0:0:0:0:0:0:1', 'fd00::1'],
    ['::', '::'],
    ['::1', '::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs wins
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero hextet is not compressed
    ['::ffff:10.1.2.3', '::ffff:a01:203'],
    ['1:2:3:4:5:6:7.8.9.10', '1:2:3:4:5:6:708:90a'],
    ['fe80::', 'fe80::'],
  ];
  for (const [input, canonical] of cases) {
    const key = encodeIpKey(input);
    t.equal(key[0], 6, `${input} family`);
    t.equal(decodeIpKey(key), canonical, input);
  }
  t.same([...encodeIpKey('fd00::1').subarray(4)], [0xfd, 0, ...Array(13).fill(0), 1]);
});

t.test('invalid addresses are rejected with the input in the message', async (t) => {
  for (const bad of ['10.0.0.0/24', '10.0.0.256', 'fe80::1%eth0', '', 'host', '1::2::3']) {
    t.throws(() => parseIp(bad), { name: 'AddressError' }, bad);
  }
  t.throws(() => decodeIpKey(Buffer.alloc(IP_KEY_SIZE)), /unknown family 0/);
});

t.test('ipcache LPM key counts family+pad bits in prefixlen', async (t) => {
  const k4 = encodeIpcacheKey('10.1.0.0/16');
  t.equal(k4.length, 24);
  t.equal(k4.readUInt32LE(0), 48);
  t.equal(k4[4], 4);
  t.same([...k4.subarray(8, 12)], [10, 1, 0, 0]);
  t.equal(encodeIpcacheKey('fd00::/64').readUInt32LE(0), 96);
  t.equal(encodeIpcacheKey('10.1.2.3').readUInt32LE(0), 64, 'plain address = host prefix');
  t.throws(() => encodeIpcacheKey('10.0.0.0/33'), /prefix length/);
});

t.test('endpoint_config layout matches struct endpoint_config', async (t) => {
  const v = {
    endpointId: 7,
    identity: 0x01020304,
    flags: 5,
    hostMac: '02:00:00:00:00:01',
    containerMac: '02:00:00:00:00:02',
    ifindex: 42,
    policyRevision: 9,
  };
  const buf = encodeEndpointConfig(v);
  t.equal(buf.length, ENDPOINT_CONFIG_SIZE);
  t.equal(buf.readUInt32LE(0), 7);
  t.equal(buf.readUInt32LE(4), 0x01020304);
  t.equal(buf.readUInt32LE(8), 5);
  t.same([...buf.subarray(12, 18)], [2, 0, 0, 0, 0, 1], 'host_mac at 12');
  t.same([...buf.subarray(18, 24)], [2, 0, 0, 0, 0, 2], 'container_mac at 18');
  t.equal(buf.readUInt32LE(24), 42, 'ifindex at 24');
  t.equal(buf.readUInt32LE(28), 9, 'policy_revision at 28');
  t.ok(
    buf.subarray(32).every((b) => b === 0),
    'no addresses: address fields and reserved zero',
  );
  t.same(decodeEndpointConfig(buf), { ...v, ips: [] });
  t.throws(() => encodeEndpointConfig({ ...v, endpointId: -1 }), /endpointId/);
  t.throws(() => encodeEndpointConfig({ ...v, identity: 2 ** 32 }), /identity/);

  // The addresses anti-spoofing compares with: the first of each family, flags say which are there.
  const a = encodeEndpointConfig({ ...v, ips: ['10.1.2.3', 'fd00::7', '10.1.2.4'], gateway6: 'fd00::1' });
  t.same([...a.subarray(32, 36)], [10, 1, 2, 3], 'ipv4 at 32');
  t.equal(a.subarray(36, 52).toString('hex'), 'fd000000000000000000000000000007', 'ipv6 at 36');
  t.equal(a.subarray(52, 68).toString('hex'), 'fd000000000000000000000000000001', 'gateway6 at 52');
  t.equal(a.readUInt32LE(8), 5 | 0x100 | 0x200 | 0x400, 'flags: policy bits kept, has v4, has v6, extra addresses');
  t.ok(
    a.subarray(68).every((b) => b === 0),
    'reserved zero',
  );
  t.same(decodeEndpointConfig(a), { ...v, flags: 0x705, ips: ['10.1.2.3', 'fd00::7'], gateway6: 'fd00::1' });
  t.equal(
    encodeEndpointConfig({ ...v, flags: 0x7ff, ips: ['fd00::7'] }).readUInt32LE(8),
    0x2ff,
    'stale address bits are recomputed',
  );
  t.throws(() => encodeEndpointConfig({ ...v, gateway6: '10.0.0.1' }), /gateway6 must be an IPv6 address/);
});

t.test('local_endpoint layout matches struct local_endpoint', async (t) => {
  const v = { hostIfindex: 12, endpointId: 3, containerMac: '02:00:00:00:00:0a', hostMac: '02:00:00:00:00:0b' };
  const buf = encodeLocalEndpoint(v);
  t.equal(buf.length, LOCAL_ENDPOINT_SIZE);
  t.equal(buf.readUInt32LE(0), 12);
  t.equal(buf.readUInt32LE(4), 3);
  t.same([...buf.subarray(8, 14)], [2, 0, 0, 0, 0, 0x0a], 'container_mac at 8');
  t.same([...buf.subarray(14, 20)], [2, 0, 0, 0, 0, 0x0b], 'host_mac at 14');
  t.same(decodeLocalEndpoint(buf), v);
});

t.test('u32 keys', async (t) => {
  t.equal(decodeU32Key(encodeU32Key(0xfffffffe)), 0xfffffffe);
  t.throws(() => encodeU32Key(1.5));
});

t.test('possible CPU list parsing', async (t) => {
  t.equal(parseCpuList('0\n'), 1);
  t.equal(parseCpuList('0-1\n'), 2);
  t.equal(parseCpuList('0-3,8-11'), 8);
  t.equal(parseCpuList('0,2,4-5'), 4);
  t.throws(() => parseCpuList('0-'), /invalid CPU list/);
});

t.test('per-CPU value size rounds each slot up to 8 bytes', async (t) => {
  t.equal(perCpuValueSize(32, 2), 64);
  t.equal(perCpuValueSize(20, 3), 72);
  t.equal(perCpuValueSize(1, 1), 8);
});

t.test('per-CPU counters are summed across CPUs', async (t) => {
  const cpus = 3;
  const buf = Buffer.alloc(perCpuValueSize(32, cpus));
  for (let cpu = 0; cpu < cpus; cpu++) {
    buf.writeBigUInt64LE(BigInt(cpu + 1), cpu * 32); // rx_packets
    buf.writeBigUInt64LE(100n * BigInt(cpu + 1), cpu * 32 + 8); // rx_bytes
    buf.writeBigUInt64LE(10n, cpu * 32 + 16); // tx_packets
    buf.writeBigUInt64LE(2n ** 40n, cpu * 32 + 24); // tx_bytes: beyond 32 bits
  }
  t.same(sumPerCpuCounters(buf, cpus), { rxPackets: 6n, rxBytes: 600n, txPackets: 30n, txBytes: 3n * 2n ** 40n });
  t.throws(() => sumPerCpuCounters(buf.subarray(0, 40), cpus), /too small/);
});
