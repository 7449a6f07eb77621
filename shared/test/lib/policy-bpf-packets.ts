// The hand-made frames and endpoints of policy-bpf.test.ts: SRC on lo (ifindex 1, where
// BPF_PROG_TEST_RUN runs) and DST only in the maps, and IPv4/IPv6 TCP frames between them built
// byte by byte (checksum fields left zero).
import type { Endpoint } from '../../src/types.ts';
import { endpointRecord } from './endpoint-record.ts';

const mac = (s: string) => Buffer.from(s.split(':').map((h) => parseInt(h, 16)));
// Redirects to DST are recorded, not done.
export const SRC = { id: 21, ifindex: 1, ip: '10.252.0.1', ip6: 'fd00:fc::1', labels: { app: 'a' } };
export const DST = { id: 22, ifindex: 900002, ip: '10.252.0.2', ip6: 'fd00:fc::2', labels: { app: 'b' } };

export function endpoint(e: typeof SRC, identity: number): Endpoint {
  return endpointRecord(e.id, {
    hostIfIndex: e.ifindex,
    labels: e.labels,
    identity,
    ips: [
      { address: `${e.ip}/32`, gateway: '10.252.0.254', family: 4, subnet: '10.252.0.0/24' },
      { address: `${e.ip6}/128`, gateway: 'fd00:fc::fe', family: 6, subnet: 'fd00:fc::/64' },
    ],
  });
}

const v4 = (ip: string) => Buffer.from(ip.split('.').map(Number));
export function ipv4(src: string, dst: string, proto: number, l4: Buffer, ttl = 64): Buffer {
  const eth = Buffer.concat([mac('02:00:00:00:00:01'), mac('02:00:00:00:00:02'), Buffer.from([0x08, 0x00])]);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + l4.length, 2);
  ip[8] = ttl;
  ip[9] = proto;
  v4(src).copy(ip, 12);
  v4(dst).copy(ip, 16);
  return Buffer.concat([eth, ip, l4]);
}
export function tcp(sport: number, dport: number, flags: number, seq = 1000, ack = 0): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt32BE(seq, 4);
  h.writeUInt32BE(ack, 8);
  h[12] = 0x50;
  h[13] = flags;
  return h;
}
export const SYN = 0x02,
  ACK = 0x10,
  FIN = 0x01,
  RST = 0x04;
export function ipv6(src: string, dst: string, next: number, l4: Buffer, hopLimit = 64): Buffer {
  const eth = Buffer.concat([mac('02:00:00:00:00:01'), mac('02:00:00:00:00:02'), Buffer.from([0x86, 0xdd])]);
  const ip = Buffer.alloc(40);
  ip[0] = 0x60;
  ip.writeUInt16BE(l4.length, 4);
  ip[6] = next;
  ip[7] = hopLimit;
  const a = (s: string) => {
    const b = Buffer.alloc(16);
    b[0] = 0xfd;
    b[3] = 0xfc;
    b[15] = Number(s.split('::')[1]);
    return b;
  };
  a(src).copy(ip, 8);
  a(dst).copy(ip, 24);
  return Buffer.concat([eth, ip, l4]);
}
