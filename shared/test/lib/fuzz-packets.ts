// The packet fuzzer's generator: random and mutated IPv4/IPv6/TCP/UDP/ICMP/SCTP/ARP frames, fragments,
// IPv6 extension chains, spoofed sources, replies to and continuations of earlier packets, ICMP errors
// quoting them, NDP/MLD, truncations and flipped bytes; each aimed at one endpoint's from_container
// (sent by it) or to_container (delivered to it). Seeded: a failure is replayed with FUZZ_SEED.
import { arp, eth, ETH_P, EXT, ah6, ext6, frag6, icmp, ipv6 } from '../../src/bpf/packets.ts';
import { FLAGS, FuzzDraws, minFrame, PORTS, PROTOS, type FuzzEndpoint, type Sent, type Shot } from './fuzz-draws.ts';

export { minFrame, rng, type FuzzEndpoint, type Shot } from './fuzz-draws.ts';

export class PacketFuzzer extends FuzzDraws {
  /** One frame for some endpoint's hook. */
  next(): Shot {
    const senders = this.eps.filter((e) => e.sends);
    const roll = this.r();
    let shot: Shot;
    if (roll < 0.3 || !this.recent.length) shot = this.fresh(this.pick(senders));
    else if (roll < 0.55) shot = this.reply(this.pick(this.recent), senders);
    else if (roll < 0.68) shot = this.again(this.pick(this.recent), senders);
    else if (roll < 0.76) shot = this.inbound(this.pick(senders));
    else if (roll < 0.83) shot = this.icmpError(senders);
    else if (roll < 0.9) shot = this.fragment(this.pick(senders));
    else if (roll < 0.94) shot = this.chain(this.pick(senders));
    else shot = this.odd(this.pick(senders));
    return this.mutate(shot);
  }
  private fresh(e: FuzzEndpoint): Shot {
    const family: 4 | 6 = this.chance(0.6) ? 4 : 6;
    const proto = this.pick(PROTOS),
      src = this.source(family, e),
      dst = this.destination(family, e);
    const s: Sent = {
      family,
      proto,
      src,
      dst,
      sport: this.pick(PORTS) + this.int(3),
      dport: this.pick(PORTS),
      seq: this.int(4),
      id: this.int(65536),
    };
    this.remember(s);
    return {
      hook: 'from',
      ifindex: e.ifindex,
      frame: this.frameOf(
        e,
        'from',
        this.ip(family, src, dst, proto, this.l4(family, proto, s.sport, s.dport, this.pick(FLAGS), s.seq)),
        family,
      ),
      what: 'fresh',
    };
  }
  private reply(s: Sent, senders: FuzzEndpoint[]): Shot {
    const at = this.hookFor(s.dst, s.src, senders) ?? { hook: 'to' as const, e: this.pick(senders) };
    const l4 = this.l4(s.family, s.proto, s.dport, s.sport, this.pick([0x12, 0x10, 0x11, 0x14, 0x04, 0x18, 0x02]), s.seq + 7);
    return {
      hook: at.hook,
      ifindex: at.e.ifindex,
      frame: this.frameOf(at.e, at.hook, this.ip(s.family, s.dst, s.src, s.proto, l4, { ttl: 64 }), s.family),
      what: 'reply',
    };
  }

  private again(s: Sent, senders: FuzzEndpoint[]): Shot {
    const at = this.hookFor(s.src, s.dst, senders) ?? { hook: 'from' as const, e: this.pick(senders) };
    const l4 = this.l4(
      s.family,
      s.proto,
      s.sport,
      s.dport,
      this.pick([0x10, 0x18, 0x11, 0x02, 0x04]),
      this.chance(0.5) ? s.seq : s.seq + 1,
    );
    return {
      hook: at.hook,
      ifindex: at.e.ifindex,
      frame: this.frameOf(at.e, at.hook, this.ip(s.family, s.src, s.dst, s.proto, l4, { ttl: 64 }), s.family),
      what: 'again',
    };
  }

  private inbound(e: FuzzEndpoint): Shot {
    const family: 4 | 6 = this.chance(0.6) ? 4 : 6;
    const src =
      family === 4
        ? this.pick([...this.world4, this.host4, ...this.pick(this.eps).ip4])
        : this.pick([...this.world6, 'fe80::ff', 'fd00:f6::fe', this.pick(this.eps).ip6]);
    const dst = family === 4 ? this.pick(e.ip4) : this.pick([e.ip6, e.ip6, 'ff02::1']);
    const proto = this.pick(PROTOS);
    const s: Sent = {
      family,
      proto,
      src,
      dst,
      sport: this.pick(PORTS),
      dport: this.pick(PORTS),
      seq: this.int(4),
      id: this.int(65536),
    };
    this.remember(s);
    return {
      hook: 'to',
      ifindex: e.ifindex,
      frame: this.frameOf(
        e,
        'to',
        this.ip(family, src, dst, proto, this.l4(family, proto, s.sport, s.dport, this.pick(FLAGS), s.seq)),
        family,
      ),
      what: 'inbound',
    };
  }

  private icmpError(senders: FuzzEndpoint[]): Shot {
    const s = this.pick(this.recent);
    const quoted = this.ip(s.family, s.src, s.dst, s.proto, this.l4(s.family, s.proto, s.sport, s.dport, 0x10, s.seq), {
      ttl: 64,
    }).subarray(0, s.family === 4 ? 28 : 48);
    const type = s.family === 4 ? this.pick([3, 11, 12]) : this.pick([1, 2, 3, 4]);
    const body = icmp(type, this.int(4), 0, quoted);
    // From the quoted packet's destination (or a router) back to its source, or from somewhere else.
    const from = this.chance(0.7)
      ? s.dst
      : this.pick(
          s.family === 4 ? [...this.world4, this.host4, ...this.pick(this.eps).ip4] : [...this.world6, this.pick(this.eps).ip6],
        );
    const to = this.chance(0.85) ? s.src : this.pick(s.family === 4 ? this.pick(this.eps).ip4 : [this.pick(this.eps).ip6]);
    const at = this.hookFor(from, to, senders) ?? { hook: 'to' as const, e: this.pick(senders) };
    return {
      hook: at.hook,
      ifindex: at.e.ifindex,
      frame: this.frameOf(at.e, at.hook, this.ip(s.family, from, to, s.family === 4 ? 1 : 58, body, { ttl: 64 }), s.family),
      what: 'icmp error',
    };
  }

  private fragment(e: FuzzEndpoint): Shot {
    const family: 4 | 6 = this.chance(0.6) ? 4 : 6;
    const recent = this.recent.filter((s) => s.family === family && (e.ip4.includes(s.src) || e.ip6 === s.src));
    const s: Sent =
      recent.length && this.chance(0.6)
        ? this.pick(recent)
        : {
            family,
            proto: this.pick([6, 17, 17, 1, 58]),
            src: this.source(family, e),
            dst: this.destination(family, e),
            sport: this.pick(PORTS),
            dport: this.pick(PORTS),
            seq: 0,
            id: this.int(65536),
          };
    this.remember(s);
    const whole = Buffer.concat([this.l4(family, s.proto, s.sport, s.dport, this.pick(FLAGS), s.seq), Buffer.alloc(64)]);
    const firstOne = this.chance(0.5);
    const cut = firstOne ? this.pick([4, 8, 8, 16, 24, 40]) : 0;
    const offset = firstOne ? 0 : this.pick([1, 2, 3, 5, 8]);
    const part = firstOne ? whole.subarray(0, cut) : whole.subarray(offset * 8);
    const id = this.chance(0.8) ? s.id : this.int(65536);
    if (family === 4) {
      return {
        hook: 'from',
        ifindex: e.ifindex,
        frame: this.frameOf(
          e,
          'from',
          this.ip(4, s.src, s.dst, s.proto, part, { ttl: 64, id, mf: firstOne || this.chance(0.5), offset }),
          4,
        ),
        what: 'fragment',
      };
    }
    const next = s.proto;
    const payload = Buffer.concat([frag6(next, offset, firstOne || this.chance(0.5), id), part]);
    return {
      hook: 'from',
      ifindex: e.ifindex,
      frame: this.frameOf(e, 'from', ipv6({ src: s.src, dst: s.dst, next: EXT.FRAGMENT, hopLimit: 64 }, payload), 6),
      what: 'fragment6',
    };
  }

  private chain(e: FuzzEndpoint): Shot {
    const n = this.int(11);
    const proto = this.pick([6, 17, 58, 59]);
    let payload = this.l4(6, proto, this.pick(PORTS), this.pick(PORTS), this.pick(FLAGS), 0);
    let next = proto;
    for (let i = 0; i < n; i++) {
      const type = this.pick([EXT.DSTOPTS, EXT.HOP, EXT.ROUTING, EXT.AH, EXT.FRAGMENT]);
      const h =
        type === EXT.AH
          ? ah6(next, 1 + this.int(3))
          : type === EXT.FRAGMENT
            ? frag6(next, 0, false, this.int(1000))
            : ext6(next, this.int(2));
      payload = Buffer.concat([h, payload]);
      next = type;
    }
    const hook = this.chance(0.7) ? 'from' : 'to';
    const src = hook === 'from' ? e.ip6 : this.pick(this.world6),
      dst = hook === 'from' ? this.destination(6, e) : e.ip6;
    return {
      hook,
      ifindex: e.ifindex,
      frame: this.frameOf(e, hook, ipv6({ src, dst, next, hopLimit: 64 }, payload), 6),
      what: 'ext chain',
    };
  }

  private odd(e: FuzzEndpoint): Shot {
    const r = this.r();
    const other = this.pick(this.eps);
    if (r < 0.35) {
      const sha = this.chance(0.8) ? e.mac : other.mac,
        spa = this.pick([e.ip4[0], other.ip4[0], '0.0.0.0']);
      const body = arp(this.pick([1, 2]), sha, spa, '00:00:00:00:00:00', this.pick(other.ip4));
      if (this.chance(0.1)) body[3] = 0xdd;
      return {
        hook: this.chance(0.8) ? 'from' : 'to',
        ifindex: e.ifindex,
        frame: eth('ff:ff:ff:ff:ff:ff', this.chance(0.9) ? e.mac : other.mac, ETH_P.ARP, body),
        what: 'arp',
      };
    }
    if (r < 0.5) {
      const frame = eth(e.hostMac, e.mac, this.pick([0x8100, 0x88cc, 0x0030, 0x86dd, 0x0800]), Buffer.alloc(this.int(60)));
      return {
        hook: 'from',
        ifindex: e.ifindex,
        frame: frame.length >= minFrame(frame) ? frame : Buffer.concat([frame, Buffer.alloc(minFrame(frame) - frame.length)]),
        what: 'ethertype',
      };
    }
    const family: 4 | 6 = this.chance(0.5) ? 4 : 6;
    const l3 = this.ip(
      family,
      this.source(family, e),
      this.destination(family, e),
      this.pick(PROTOS),
      this.l4(family, 6, 80, 80, 2, 0),
    );
    return {
      hook: 'from',
      ifindex: e.ifindex,
      frame: eth(e.hostMac, this.chance(0.5) ? other.mac : e.mac, family === 4 ? ETH_P.IPV4 : ETH_P.IPV6, l3),
      what: 'mac',
    };
  }

  private mutate(s: Shot): Shot {
    let f = s.frame;
    if (this.chance(0.05)) {
      f = Buffer.from(f);
      const at = 14 + this.int(Math.max(1, Math.min(f.length - 14, 70)));
      if (at < f.length) f[at] = this.int(256);
      return { ...s, frame: f, what: `${s.what}+flip@${at}` };
    }
    if (this.chance(0.03)) {
      const min = minFrame(f);
      if (f.length > min) return { ...s, frame: f.subarray(0, min + this.int(f.length - min + 1)), what: `${s.what}+cut` };
    }
    return s;
  }
}
