// Pure helpers of the netlink/sysctl modules: no kernel, no native code (address text: net.test.ts).
import t from 'tap';
import { constants } from 'node:os';
import { scopeName } from '../src/netlink/parse.ts';
import { codeFromErrno, codeFromNle, extackMessage, NetlinkError, NLE } from '../src/netlink/errors.ts';
import { sysctlIfPath, sysctlKeyToPath, SysctlError } from '../src/sysctl/index.ts';

const E = constants.errno;

t.test('route scope names', async (t) => {
  t.equal(scopeName(253), 'link');
  t.equal(scopeName(0), 'universe');
  t.equal(scopeName(17), '17');
});

t.test('error mapping', async (t) => {
  t.equal(codeFromErrno(E.EEXIST), 'exists');
  t.equal(codeFromErrno(-E.EEXIST), 'exists', 'sign does not matter');
  t.equal(codeFromErrno(E.ENOENT), 'not_found');
  t.equal(codeFromErrno(E.ENODEV), 'not_found');
  t.equal(codeFromErrno(E.ESRCH), 'not_found');
  t.equal(codeFromErrno(E.EADDRNOTAVAIL), 'not_found');
  t.equal(codeFromErrno(E.EBUSY), 'busy');
  t.equal(codeFromErrno(E.EINVAL), 'invalid');
  t.equal(codeFromErrno(E.EOPNOTSUPP), 'invalid');
  t.equal(codeFromErrno(E.EPERM), 'permission');
  t.equal(codeFromErrno(E.ENETUNREACH), 'other');
  t.equal(codeFromNle(-NLE.EXIST), 'exists');
  t.equal(codeFromNle(NLE.OBJ_NOTFOUND), 'not_found');
  t.equal(codeFromNle(NLE.NODEV), 'not_found');
  t.equal(codeFromNle(NLE.BUSY), 'busy');
  t.equal(codeFromNle(NLE.INVAL), 'invalid');
  t.equal(codeFromNle(NLE.PERM), 'permission');
  t.equal(codeFromNle(NLE.NOACCESS), 'permission');
  t.equal(codeFromNle(NLE.FAILURE), 'other');
});

t.test('NetlinkError', async (t) => {
  const e = new NetlinkError({
    op: 'veth add',
    object: 'mbr1a2b3c (peer eth0 in /var/run/netns/x)',
    reason: 'File exists',
    errno: E.EEXIST,
    nle: -NLE.EXIST,
  });
  t.equal(e.message, 'veth add mbr1a2b3c (peer eth0 in /var/run/netns/x): File exists');
  t.equal(e.code, 'exists');
  t.equal(e.nle, NLE.EXIST);
  t.equal(e.name, 'NetlinkError');
  t.ok(e instanceof Error);
  const r = new NetlinkError({
    op: 'route add',
    object: '10.1.0.5/32 dev mbr1',
    reason: 'Network is unreachable',
    errno: E.ENETUNREACH,
    detail: 'Nexthop has invalid gateway',
  });
  t.equal(r.message, 'route add 10.1.0.5/32 dev mbr1: Network is unreachable (Nexthop has invalid gateway)');
  t.equal(r.code, 'other');
  const l = new NetlinkError({ op: 'link get', object: 'x', reason: 'Object not found', nle: -NLE.OBJ_NOTFOUND });
  t.equal(l.code, 'not_found', 'falls back to the NLE code without an errno');
  t.equal(
    new NetlinkError({ op: 'a', object: 'b', reason: 'c', errno: E.EEXIST, code: 'invalid' }).code,
    'invalid',
    'explicit code wins',
  );
});

t.test('extackMessage', async (t) => {
  const build = (flags: number, text?: string) => {
    const tlv =
      text === undefined
        ? Buffer.alloc(0)
        : (() => {
            const body = Buffer.from(`${text}\0`);
            const len = 4 + body.length;
            const b = Buffer.alloc((len + 3) & ~3);
            b.writeUInt16LE(len, 0);
            b.writeUInt16LE(1, 2); // NLMSGERR_ATTR_MSG
            body.copy(b, 4);
            return b;
          })();
    const echoed = Buffer.alloc(16);
    echoed.writeUInt32LE(40, 0); // original request was 40 bytes, but the ack is capped
    const hdr = Buffer.alloc(20);
    hdr.writeUInt32LE(16 + 4 + 16 + tlv.length, 0);
    hdr.writeUInt16LE(2, 4); // NLMSG_ERROR
    hdr.writeUInt16LE(flags, 6);
    hdr.writeInt32LE(-E.ENETUNREACH, 16);
    return new Uint8Array(Buffer.concat([hdr, echoed, tlv]));
  };
  t.equal(extackMessage(build(0x300, 'Nexthop has invalid gateway')), 'Nexthop has invalid gateway');
  t.equal(extackMessage(build(0x100, 'ignored without ACK_TLVS')), undefined);
  t.equal(extackMessage(build(0x300)), undefined, 'no TLVs');
  t.equal(extackMessage(new Uint8Array(8)), undefined, 'short buffer');
});

t.test('sysctl keys', async (t) => {
  t.equal(sysctlKeyToPath('net.ipv4.ip_forward'), '/proc/sys/net/ipv4/ip_forward');
  t.equal(sysctlKeyToPath('net.ipv4.conf.mbr1a2b.proxy_arp'), '/proc/sys/net/ipv4/conf/mbr1a2b/proxy_arp');
  t.equal(
    sysctlKeyToPath('net.ipv4.conf.eth0/100.proxy_arp'),
    '/proc/sys/net/ipv4/conf/eth0.100/proxy_arp',
    "'/' stands for '.'",
  );
  t.equal(sysctlIfPath(6, 'eth0.100', 'proxy_ndp'), '/proc/sys/net/ipv6/conf/eth0.100/proxy_ndp');
  for (const bad of ['', '.net', 'net..ipv4', '/etc/passwd'])
    t.throws(() => sysctlKeyToPath(bad), SysctlError, JSON.stringify(bad));
  t.throws(() => sysctlIfPath(4, '..', 'x'), SysctlError);
  t.throws(() => sysctlIfPath(4, 'eth0', '../x'), SysctlError);
});
