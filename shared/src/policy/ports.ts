// L4 matches -> the (protocol, dport) pairs the policy map is keyed by. Pure.
//
// Port ranges (port..endPort) are expanded into one exact entry per port, so the datapath keeps its
// fixed number of hash probes per new flow. A range may cover at most MAX_RANGE_PORTS ports
// (validation says so, naming the field); a bigger one is usually meant as "all ports" (port 0).
//
// ICMP types share the dport field: 0x100 | type, so "any type" (0) and type 0 (echo reply) differ.
import type { PortMatch } from './types.ts';

export const IPPROTO = { ICMP: 1, TCP: 6, UDP: 17, SCTP: 132, ICMPv6: 58 } as const;
export const MAX_RANGE_PORTS = 8192;
export const ICMP_TYPE_FLAG = 0x100;

export const ICMP_TYPE_NAMES: Record<'ICMP' | 'ICMPv6', Record<string, number>> = {
  ICMP: {
    EchoReply: 0,
    DestinationUnreachable: 3,
    Redirect: 5,
    Echo: 8,
    EchoRequest: 8,
    RouterAdvertisement: 9,
    RouterSelection: 10,
    TimeExceeded: 11,
    ParameterProblem: 12,
    Timestamp: 13,
    TimestampReply: 14,
  },
  ICMPv6: {
    DestinationUnreachable: 1,
    PacketTooBig: 2,
    TimeExceeded: 3,
    ParameterProblem: 4,
    EchoRequest: 128,
    EchoReply: 129,
    MulticastListenerQuery: 130,
    MulticastListenerReport: 131,
    MulticastListenerDone: 132,
    RouterSolicitation: 133,
    RouterAdvertisement: 134,
    NeighborSolicitation: 135,
    NeighborAdvertisement: 136,
    RedirectMessage: 137,
  },
};

export interface L4Key {
  proto: number;
  /** Host order; 0 = any port of `proto` (or every protocol when proto is 0). */
  dport: number;
}

/** Every (proto, dport) a rule's port list covers; [] means "all traffic" to the caller. */
export function expandPorts(ports: PortMatch[]): L4Key[] {
  const out: L4Key[] = [];
  const seen = new Set<number>();
  const push = (proto: number, dport: number) => {
    const k = proto * 0x10000 + dport;
    if (!seen.has(k)) {
      seen.add(k);
      out.push({ proto, dport });
    }
  };
  for (const m of ports) {
    if ('type' in m || m.proto === 'ICMP' || m.proto === 'ICMPv6') {
      const icmp = m as Extract<PortMatch, { proto: 'ICMP' | 'ICMPv6' }>;
      push(IPPROTO[icmp.proto], icmp.type === undefined ? 0 : ICMP_TYPE_FLAG | icmp.type);
      continue;
    }
    const p = m as Extract<PortMatch, { port: number }>;
    const protos = p.proto === 'ANY' ? [IPPROTO.TCP, IPPROTO.UDP, IPPROTO.SCTP] : [IPPROTO[p.proto]];
    if (p.port === 0) {
      if (p.proto === 'ANY')
        push(0, 0); // every protocol, every port
      else push(protos[0], 0);
      continue;
    }
    const last = p.endPort ?? p.port;
    for (const proto of protos) for (let port = p.port; port <= last; port++) push(proto, port);
  }
  return out;
}

/** "80/tcp", "53/udp", "8/icmp", "tcp" (any port), "80" (tcp) -> an L4 key for trace. */
export function parsePortArg(text: string): L4Key {
  const m = /^(?:(\d{1,5})(?:\/([A-Za-z0-9]+))?|([A-Za-z0-9]+))$/.exec(text.trim());
  if (!m) throw new RangeError(`"${text}" is not PORT[/PROTO] (e.g. 80/tcp, 53/udp, 8/icmp)`);
  const protoName = (m[2] ?? m[3] ?? 'tcp').toUpperCase();
  const proto = ({ TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ICMPV6: 58, ICMP6: 58 } as Record<string, number>)[protoName];
  if (proto === undefined) throw new RangeError(`unknown protocol "${protoName}" in "${text}" (tcp, udp, sctp, icmp, icmpv6)`);
  const port = m[1] === undefined ? 0 : Number(m[1]);
  if (port > 65535) throw new RangeError(`port ${port} in "${text}" is out of range (0-65535)`);
  if (proto === 1 || proto === 58) return { proto, dport: m[1] === undefined ? 0 : ICMP_TYPE_FLAG | (port & 0xff) };
  return { proto, dport: port };
}

export function protoName(proto: number): string {
  const names: Record<number, string> = { 0: 'any', 1: 'icmp', 6: 'tcp', 17: 'udp', 58: 'icmpv6', 132: 'sctp' };
  return names[proto] ?? `proto-${proto}`;
}

export function describeL4(k: L4Key): string {
  if (k.proto === 0) return 'any';
  if (k.proto === 1 || k.proto === 58) return k.dport ? `${protoName(k.proto)} type ${k.dport & 0xff}` : protoName(k.proto);
  return k.dport ? `${k.dport}/${protoName(k.proto)}` : `${protoName(k.proto)} (any port)`;
}
