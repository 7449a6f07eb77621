import t from 'tap';
import { bigIntToIp, cidrContains, cidrsOverlap, defaultGateway, formatCidr, ipToBigInt, normalizeIp, parseCidr, usableRange } from '../src/ipam/cidr.ts';

t.test('parses and normalises CIDRs', async (t) => {
  t.equal(formatCidr(parseCidr('10.1.2.3/16')), '10.1.0.0/16', 'host bits cleared');
  t.equal(formatCidr(parseCidr('fd00:0:0:0::5/64')), 'fd00::/64');
  t.equal(formatCidr(parseCidr('2001:db8::/32')), '2001:db8::/32');
  t.throws(() => parseCidr('10.1.0.0'), /not a CIDR/);
  t.throws(() => parseCidr('10.1.0.0/33'), /longer than 32 bits/);
  t.throws(() => parseCidr('10.1.0.300/24'), /not an IP address/);
  t.throws(() => parseCidr('banana/8'), /not an IP address/);
});

t.test('v6 text form follows RFC 5952', async (t) => {
  t.equal(normalizeIp('2001:0db8:0000:0000:0000:0000:0000:0001'), '2001:db8::1');
  t.equal(normalizeIp('fd00:0:1:0:0:1:0:0'), 'fd00:0:1::1:0:0', 'first of equal-length zero runs wins');
  t.equal(normalizeIp('::'), '::');
  t.equal(normalizeIp('::ffff:10.0.0.1'), '::ffff:a00:1');
  t.equal(bigIntToIp(ipToBigInt('fe80::1'), 6), 'fe80::1');
});

t.test('usable range reserves network, broadcast and the v6 anycast address', async (t) => {
  const v4 = parseCidr('10.0.0.0/24');
  const r = usableRange(v4);
  t.equal(bigIntToIp(r.first, 4), '10.0.0.1');
  t.equal(bigIntToIp(r.last, 4), '10.0.0.254');
  t.equal(defaultGateway(v4), '10.0.0.1');
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
});
