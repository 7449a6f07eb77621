// shared/src/net: address, prefix, MAC and interface-name text; host byte order. Pure.
import t from 'tap';
import {
  AddressError,
  addressOnly,
  bigIntToIp,
  cidrContains,
  cidrCovers,
  cidrsOverlap,
  defaultGateway,
  familyOf,
  formatCidr,
  formatIp,
  formatMac,
  hostPrefix,
  ifNameProblem,
  interfaceMac,
  ipBytes,
  ipToBigInt,
  isUsable,
  normalizeCidr,
  normalizeIfAddr,
  normalizeIp,
  normalizeMac,
  parseCidr,
  parseIfAddr,
  parseMac,
  randomMac,
  readHostU32,
  usableRange,
  validIfName,
  writeHostU32,
} from '../src/net/index.ts';

t.test('networks: host bits cleared, prefix required unless bare addresses are allowed', async (t) => {
  t.equal(formatCidr(parseCidr('10.1.2.3/16')), '10.1.0.0/16', 'host bits cleared');
  t.equal(formatCidr(parseCidr('fd00:0:0:0::5/64')), 'fd00::/64');
  t.equal(formatCidr(parseCidr('2001:db8::/32')), '2001:db8::/32');
  t.equal(formatCidr(parseCidr('10.1.0.5', { allowBare: true })), '10.1.0.5/32');
  t.throws(() => parseCidr('10.1.0.0'), /not a CIDR \(expected ADDRESS\/PREFIX/);
  t.throws(() => parseCidr('10.1.0.0/33'), /longer than 32 bits/);
  t.throws(() => parseCidr('10.1.0.300/24'), /not an IP address/);
  t.throws(() => parseCidr('banana/8'), AddressError);
  t.throws(() => parseCidr('fe80::1%eth0/64'), /not an IP address/, 'zones are not addresses');
  t.equal(normalizeCidr('198.18.0.5'), '198.18.0.5/32');
  t.equal(normalizeCidr('10.1.2.3/16'), '10.1.0.0/16');
  t.equal(normalizeCidr('0.0.0.0/0'), '0.0.0.0/0');
  t.equal(normalizeCidr('FD00::5'), 'fd00::5/128');
  t.throws(() => normalizeCidr('10.0.0.256/8'), AddressError);
});

t.test('interface addresses keep their host bits', async (t) => {
  t.same(parseIfAddr('10.1.0.5/24'), { ip: '10.1.0.5', prefix: 24, family: 4 });
  t.same(parseIfAddr('10.1.0.5'), { ip: '10.1.0.5', prefix: 32, family: 4 }, 'bare address = host prefix');
  t.same(parseIfAddr('FD00:0:0::0005/128'), { ip: 'fd00::5', prefix: 128, family: 6 }, 'v6 normalised');
  t.same(parseIfAddr('::/0'), { ip: '::', prefix: 0, family: 6 });
  for (const bad of [
    '',
    '10.1.0.5/33',
    '10.1.0.256/32',
    'fd00::/129',
    '10.1.0.5/',
    '10.1.0.5/3a',
    'x',
    'fe80::1%eth0/64',
    '10.1.0.5/-1',
  ])
    t.throws(() => parseIfAddr(bad), AddressError, `rejects "${bad}"`);
  t.equal(normalizeIfAddr('2001:DB8:0:0:1:0:0:1/64'), '2001:db8::1:0:0:1/64');
  t.equal(addressOnly('10.1.0.5/24'), '10.1.0.5');
  t.equal(hostPrefix('10.1.0.5'), '10.1.0.5/32');
  t.equal(hostPrefix('fd00::5'), 'fd00::5/128');
});

t.test('address text: families, bytes and the RFC 5952 form', async (t) => {
  t.equal(familyOf('10.0.0.1'), 4);
  t.equal(familyOf('::1'), 6);
  t.equal(familyOf('nope'), null);
  t.equal(familyOf('fe80::1%eth0'), null, 'a zone is not part of an address');
  t.same([...ipBytes('10.1.0.5')], [10, 1, 0, 5]);
  t.same([...ipBytes('::ffff:1.2.3.4')].slice(10), [0xff, 0xff, 1, 2, 3, 4], 'embedded IPv4');
  const cases: [string, string][] = [
    ['::', '::'],
    ['::1', '::1'],
    ['fd00::5', 'fd00::5'],
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group is not compressed
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], // longest run wins
    ['fe80:0000:0000:0000:00ff:fe00:0002:0000', 'fe80::ff:fe00:2:0'],
    ['1:2:3:4:5:6:7::', '1:2:3:4:5:6:7:0'],
    ['::ffff:10.0.0.1', '::ffff:a00:1'],
    ['2001:db8::', '2001:db8::'], // a trailing zero run
  ];
  for (const [input, want] of cases) {
    t.equal(formatIp(ipBytes(input)), want, input);
    t.equal(normalizeIp(input), want, `normalizeIp ${input}`);
  }
  t.equal(formatIp(Uint8Array.from([192, 0, 2, 1])), '192.0.2.1');
  t.throws(() => formatIp(new Uint8Array(5)), AddressError);
  t.throws(() => normalizeIp('10.0.0.300'), /"10.0.0.300" is not an IP address/);
  t.equal(bigIntToIp(ipToBigInt('fe80::1'), 6), 'fe80::1');
  t.equal(bigIntToIp(ipToBigInt('10.1.2.3'), 4), '10.1.2.3');
});

t.test('usable range reserves network, broadcast and the v6 anycast address', async (t) => {
  const v4 = parseCidr('10.0.0.0/24');
  const r = usableRange(v4);
  t.equal(bigIntToIp(r.first, 4), '10.0.0.1');
  t.equal(bigIntToIp(r.last, 4), '10.0.0.254');
  t.equal(defaultGateway(v4), '10.0.0.1');
  t.ok(isUsable(v4, '10.0.0.7'));
  t.notOk(isUsable(v4, '10.0.0.255'), 'broadcast');
  t.notOk(isUsable(v4, '10.0.1.1'), 'outside');
  const p2p = usableRange(parseCidr('10.0.0.0/31'));
  t.equal(bigIntToIp(p2p.first, 4), '10.0.0.0', '/31 has no network address (RFC 3021)');
  const v6 = usableRange(parseCidr('fd00::/120'));
  t.equal(bigIntToIp(v6.first, 6), 'fd00::1');
  t.equal(bigIntToIp(v6.last, 6), 'fd00::ff');
});

t.test('containment and overlap', async (t) => {
  const c = parseCidr('10.1.0.0/16');
  t.ok(cidrContains(c, '10.1.255.255'));
  t.notOk(cidrContains(c, '10.2.0.0'));
  t.notOk(cidrContains(c, 'fd00::1'), 'other family');
  t.ok(cidrsOverlap(c, parseCidr('10.1.5.0/24')));
  t.notOk(cidrsOverlap(c, parseCidr('10.2.0.0/16')));
  t.notOk(cidrsOverlap(c, parseCidr('fd00::/8')));
  t.ok(cidrCovers(c, parseCidr('10.1.5.0/24')));
  t.ok(cidrCovers(c, c), 'a network covers itself');
  t.notOk(cidrCovers(parseCidr('10.1.5.0/24'), c), 'a sub-network does not cover its parent');
});

t.test('MACs', async (t) => {
  t.same([...parseMac('02:AB:cd:0:1:ff')], [2, 0xab, 0xcd, 0, 1, 0xff], 'one or two digits per group');
  t.same([...parseMac('02-42-ac-11-00-02')], [2, 0x42, 0xac, 0x11, 0, 2]);
  t.equal(formatMac(Uint8Array.from([2, 0x42, 0xac, 0x11, 0, 2])), '02:42:ac:11:00:02');
  t.equal(normalizeMac('AE-BB-CC-DD-EE-FF'), 'ae:bb:cc:dd:ee:ff');
  for (const bad of ['', 'zz', '02:42:ac:11:00', '02:42:ac:11:00:02:03', '0g:42:ac:11:00:02', '123:ab:cd:00:01:ff'])
    t.throws(() => parseMac(bad), /is not a MAC address/, `rejects "${bad}"`);
  t.throws(() => interfaceMac('01:00:5e:00:00:01'), /multicast/);
  const m = randomMac();
  t.match(m, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
  t.equal(parseInt(m.slice(0, 2), 16) & 3, 2, 'unicast, locally administered');
});

t.test('interface names follow the kernel (and libcni)', async (t) => {
  for (const ok of ['eth0', 'mbr0123456789a', 'a', 'eth0.100', 'x-y_z', 'eth0@x']) t.ok(validIfName(ok), ok);
  for (const bad of ['', '.', '..', 'a/b', 'a b', 'a:b', 'mbr0123456789abc', 'tab\there', 'ü'.repeat(8)])
    t.notOk(validIfName(bad), JSON.stringify(bad));
  t.equal(ifNameProblem('eth:0'), 'may not contain "/", ":" or whitespace');
  t.equal(ifNameProblem('..'), 'may not be "." or ".."');
  t.equal(ifNameProblem('a'.repeat(16)), 'is longer than 15 bytes');
  // found by the API fuzzer: netlink refuses these with EINVAL (an internal error, not the caller's)
  for (const bad of ['\0', 'eth\0', '%s%s%s', 'eth%d'])
    t.equal(ifNameProblem(bad), 'may not contain NUL or "%"', JSON.stringify(bad));
});

t.test('host byte order round trip', async (t) => {
  const b = Buffer.alloc(4);
  writeHostU32(b, 0, 0x01020304);
  t.equal(readHostU32(b, 0), 0x01020304);
});
