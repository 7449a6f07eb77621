import t from 'tap';
import { decodeTraceEvent, encodeTraceEvent, formatAddr, TRACE_EVENT_SIZE } from '../src/flows/event.ts';
import { dropReasonName, hubbleDropCode } from '../src/flows/codes.ts';

t.test('decodes the C layout byte by byte (little-endian host, ports in network order)', async (t) => {
  const b = Buffer.alloc(TRACE_EVENT_SIZE);
  b.writeBigUInt64LE(123456789012345n, 0); // ts_ns
  b.writeUInt16LE(2, 8); // type DROP
  b.writeUInt16LE(1, 10); // reason policy denied
  b.writeUInt32LE(17, 12); // ifindex
  b.writeUInt32LE(42, 16); // endpoint_id
  b.writeUInt32LE(300, 20);
  b.writeUInt32LE(2, 24); // identities
  b[28] = 4;
  b[29] = 6;
  b[30] = 1;
  b[31] = 1; // family, proto, verdict, direction
  b.writeUInt16BE(43210, 32);
  b.writeUInt16BE(8080, 34);
  b.writeUInt32LE(60, 36);
  Buffer.from([10, 1, 2, 3]).copy(b, 40);
  Buffer.from([192, 168, 0, 9]).copy(b, 56);
  b.writeUInt32LE(0x1403, 72); // rule_id
  b[76] = 0x12;
  b[77] = 1; // SYN|ACK, audit
  b.writeBigUInt64LE(7n, 80);
  b.writeBigUInt64LE(4096n, 88);
  t.same(decodeTraceEvent(b), {
    tsNs: 123456789012345,
    type: 2,
    reason: 1,
    ifindex: 17,
    endpointId: 42,
    srcIdentity: 300,
    dstIdentity: 2,
    family: 4,
    proto: 6,
    verdict: 1,
    direction: 1,
    sport: 43210,
    dport: 8080,
    len: 60,
    saddr: '10.1.2.3',
    daddr: '192.168.0.9',
    ruleId: 0x1403,
    tcpFlags: 0x12,
    flags: 1,
    packets: 7,
    bytes: 4096,
  });
});

t.test('encode and decode are inverse, at an offset inside a larger buffer', async (t) => {
  const e = {
    tsNs: 5,
    type: 3,
    reason: 0,
    ifindex: 9,
    endpointId: 1,
    srcIdentity: 256,
    dstIdentity: 16777217,
    family: 6,
    proto: 17,
    verdict: 0,
    direction: 0,
    sport: 53,
    dport: 5353,
    len: 0,
    saddr: 'fd00:1::2',
    daddr: '::1',
    ruleId: 0,
    tcpFlags: 0,
    flags: 0,
    packets: 2 ** 40 + 3,
    bytes: 2 ** 45,
  };
  const big = Buffer.concat([Buffer.alloc(8), encodeTraceEvent(e), Buffer.alloc(8)]);
  t.same(decodeTraceEvent(big, 8), e);
  const late = encodeTraceEvent({ tsNs: 2 ** 53 + 2 });
  t.equal(decodeTraceEvent(late).tsNs, 2 ** 53 + 2, "beyond 2^53 ns of uptime the ns stay within the double's step");
  t.throws(() => decodeTraceEvent(Buffer.alloc(95)), /needs 96 bytes/);
});

t.test('IPv6 text follows RFC 5952', async (t) => {
  const v6 = (ip: string) => formatAddr(encodeTraceEvent({ family: 6, saddr: ip }), 40, 6);
  t.equal(v6('fd00:0:0:0:0:0:0:5'), 'fd00::5');
  t.equal(v6('2001:db8:0:1:0:0:0:1'), '2001:db8:0:1::1');
  t.equal(v6('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1', 'first of equal zero runs');
  t.equal(v6('2001:db8:1:2:3:4:0:6'), '2001:db8:1:2:3:4:0:6', 'a single zero word is not compressed');
  t.equal(v6('::'), '::');
});

t.test("datapath drop reasons are reported under Hubble's codes and names", async (t) => {
  t.equal(dropReasonName(1), 'POLICY_DENIED');
  t.equal(dropReasonName(132), 'INVALID_SOURCE_IP', 'a spoofed source is Hubble\'s "Invalid source ip"');
  t.equal(dropReasonName(130), 'INVALID_SOURCE_MAC');
  t.equal(dropReasonName(33), 'REASON_33');
  t.equal(dropReasonName(157), 'IP_FRAGMENTATION_NOT_SUPPORTED', "codes from 130 up are Hubble's already");
  t.equal(hubbleDropCode(1), 133);
  t.equal(hubbleDropCode(1, true), 181, 'a deny rule is POLICY_DENY');
  t.equal(hubbleDropCode(133, true), 181);
  t.equal(hubbleDropCode(134), 134);
  t.equal(hubbleDropCode(155), 155);
  t.equal(hubbleDropCode(175), 175);
  t.equal(hubbleDropCode(40), 0, 'an unknown small code is DROP_REASON_UNKNOWN');
});
