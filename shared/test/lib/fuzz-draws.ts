// The packet fuzzer's draws: a seeded generator (mulberry32) and what every kind of frame is built
// from: a random choice, an L4 header, an IP header, a source or destination an endpoint could use or
// forge, the Ethernet frame for a hook, and the hook a packet meets first. The kinds of frames are in
// fuzz-packets.ts. Every draw order matters: a seed replays a run only if the sequence is unchanged.
import { echo, eth, ETH_P, icmp, ipv4, ipv6, tcp, udp } from '../../src/bpf/packets.ts';
import { seededFloat } from './seeded.ts';

export interface FuzzEndpoint {
  ifindex: number;
  id: number;
  mac: string;
  hostMac: string;
  ip4: string[];
  ip6: string;
  sends: boolean;
}

export interface Shot {
  hook: 'from' | 'to';
  ifindex: number;
  frame: Buffer;
  what: string;
}

export interface Sent {
  family: 4 | 6;
  proto: number;
  src: string;
  dst: string;
  sport: number;
  dport: number;
  seq: number;
  id: number;
}

/** mulberry32 (seeded.ts): small, fast, good enough to pick packets. */
export const rng = seededFloat;

/** BPF_PROG_TEST_RUN refuses an IPv4 frame without a whole IPv4 header, an IPv6 one without its fixed
 *  header (EINVAL): the datapath's own checks for those (INVALID_PACKET) are unreachable from here. */
export function minFrame(f: Buffer): number {
  const type = f.readUInt16BE(12);
  return type === ETH_P.IPV4 ? 34 : type === ETH_P.IPV6 ? 54 : 14;
}

export const PORTS = [22, 53, 80, 443, 1000, 1001, 5353, 8080];
export const FLAGS = [0x02, 0x02, 0x12, 0x10, 0x10, 0x18, 0x11, 0x14, 0x04, 0x01, 0x00, 0x03, 0x29];
export const PROTOS = [6, 6, 6, 17, 17, 1, 58, 132, 47];

export class FuzzDraws {
  protected readonly r: () => number;
  protected readonly recent: Sent[] = [];

  constructor(
    seed: number,
    protected readonly eps: FuzzEndpoint[],
    protected readonly world4: string[],
    protected readonly world6: string[],
    protected readonly host4: string,
  ) {
    this.r = rng(seed);
  }

  protected pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.r() * xs.length)];
  }
  protected chance(p: number): boolean {
    return this.r() < p;
  }
  protected int(n: number): number {
    return Math.floor(this.r() * n);
  }

  protected remember(s: Sent): void {
    this.recent.push(s);
    if (this.recent.length > 48) this.recent.shift();
  }

  protected l4(family: 4 | 6, proto: number, sport: number, dport: number, flags: number, seq: number): Buffer {
    switch (proto) {
      case 6:
        return tcp(sport, dport, flags, seq);
      case 17:
        return udp(sport, dport, Buffer.alloc(this.int(24)));
      case 132:
        return Buffer.concat([udp(sport, dport).subarray(0, 4), Buffer.alloc(8 + this.int(8))]);
      case 1:
      case 58: {
        const types = family === 4 ? [8, 0, 13, 3, 11] : [128, 129, 135, 136, 133, 134, 137, 143, 130, 1];
        const type = this.pick(types);
        return type === 8 || type === 0 || type === 128 || type === 129
          ? echo(type, sport)
          : icmp(type, this.int(4), 0, Buffer.alloc(this.int(32)));
      }
      default:
        return Buffer.alloc(this.int(20));
    }
  }

  protected ip(
    family: 4 | 6,
    src: string,
    dst: string,
    proto: number,
    payload: Buffer,
    o: { ttl?: number; id?: number; mf?: boolean; offset?: number } = {},
  ): Buffer {
    return family === 4
      ? ipv4(
          {
            src,
            dst,
            proto: family === 4 && proto === 58 && this.chance(0.7) ? 1 : proto,
            ttl: o.ttl ?? this.pick([64, 64, 64, 2, 1, 0, 255]),
            id: o.id,
            mf: o.mf,
            offset: o.offset,
          },
          payload,
        )
      : ipv6(
          {
            src,
            dst,
            next: proto === 1 && this.chance(0.7) ? 58 : proto,
            hopLimit: o.ttl ?? this.pick([64, 64, 255, 255, 1, 2, 0]),
          },
          payload,
        );
  }

  protected destination(family: 4 | 6, self: FuzzEndpoint): string {
    const others = this.eps.filter((e) => e !== self);
    const r = this.r();
    if (family === 4) {
      if (r < 0.45) return this.pick(this.pick(others).ip4);
      if (r < 0.8) return this.pick(this.world4);
      if (r < 0.9) return this.host4;
      return this.pick(self.ip4);
    }
    if (r < 0.45) return this.pick(others).ip6;
    if (r < 0.75) return this.pick(this.world6);
    return this.pick(['fe80::1', 'ff02::1', 'ff02::1:ff00:1', 'ff02::16', 'fd00:f6::fe', self.ip6]);
  }

  protected source(family: 4 | 6, self: FuzzEndpoint): string {
    const r = this.r();
    if (r < 0.88) return family === 4 ? this.pick(self.ip4) : self.ip6;
    if (family === 4) return this.pick([...this.pick(this.eps).ip4, this.pick(this.world4), '0.0.0.0']);
    return this.pick(['fe80::1', '::', this.pick(this.eps).ip6, this.pick(this.world6)]);
  }

  protected frameOf(e: FuzzEndpoint, hook: 'from' | 'to', l3: Buffer, family: 4 | 6): Buffer {
    const type = family === 4 ? ETH_P.IPV4 : ETH_P.IPV6;
    return hook === 'from' ? eth(e.hostMac, e.mac, type, l3) : eth(e.mac, e.hostMac, type, l3);
  }

  /** The hook a packet from `src` to `dst` meets first: the sender's from_container, else the receiver's to_container. */
  protected hookFor(src: string, dst: string, senders: FuzzEndpoint[]): { hook: 'from' | 'to'; e: FuzzEndpoint } | undefined {
    const sender = senders.find((e) => e.ip4.includes(src) || e.ip6 === src);
    if (sender) return { hook: 'from', e: sender };
    const receiver = senders.find((e) => e.ip4.includes(dst) || e.ip6 === dst);
    return receiver && { hook: 'to', e: receiver };
  }
}
