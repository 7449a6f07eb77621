// VXLAN on the wire for the overlay tests: what a captured underlay frame carries (outer addresses,
// VNI, the inner frame), hand-made VXLAN datagrams sent from a netns of ours with a plain UDP socket
// (so nothing but the receiving node's datapath decides), and the flows a node's observer holds.
import type { TestNetns } from './netns.ts';
import { eventually } from './proc.ts';
import { frameInfo, type FrameInfo } from './raw.ts';
import { ObserverClient } from '../../shared/src/flows/client.ts';
import type { Flow } from '../../shared/src/flows/types.ts';

export interface VxlanFrame {
  outer: FrameInfo;
  vni: number;
  inner: FrameInfo | undefined;
}

/** The VXLAN frame inside a captured IPv4 underlay frame (UDP to `port`), or undefined. */
export function vxlanOf(f: Buffer, port = 8472): VxlanFrame | undefined {
  const outer = frameInfo(f);
  if (outer?.family !== 4 || outer.proto !== 17 || outer.dport !== port) return undefined;
  const off = 14 + (f[14] & 0xf) * 4 + 8;
  if (f.length < off + 8 + 14) return undefined;
  return { outer, vni: f.readUIntBE(off + 4, 3), inner: frameInfo(f.subarray(off + 8)) };
}

/** A VXLAN datagram's payload: the 8-byte header (I flag, VNI) and the inner Ethernet frame. */
export function vxlanPayload(vni: number, inner: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h[0] = 0x08;
  h.writeUIntBE(vni, 4, 3);
  return Buffer.concat([h, inner]);
}

const SEND = `const s = require('dgram').createSocket('udp4');
s.send(Buffer.from(process.argv[1], 'hex'), Number(process.argv[3]), process.argv[2], (e) => { s.close(); process.exit(e ? 1 : 0); });`;

/** The same without a UDP checksum (SO_NO_CHECK), as Membrane's nodes send VXLAN over IPv4: what the
 *  receiving node's underlay short-cut (bpf/vxlan_rx.c) takes; a checksummed datagram it leaves to the
 *  tunnel device and from_tunnel. */
export async function sendUdpNoChecksum(ns: TestNetns, ip: string, port: number, payload: Buffer): Promise<void> {
  await ns.exec('python3', ['-c', SEND_NO_CHECK, payload.toString('hex'), ip, String(port)]);
}

const SEND_NO_CHECK = `import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))`;

/** One UDP datagram from `ns` (its own address as the outer source) to ip:port. */
export async function sendUdp(ns: TestNetns, ip: string, port: number, payload: Buffer): Promise<void> {
  await ns.exec(process.execPath, ['-e', SEND, payload.toString('hex'), ip, String(port)]);
}

/** The flows a node's observer holds now that match `pick`. */
export async function flowsOf(observerSocket: string, pick: (f: Flow) => boolean): Promise<Flow[]> {
  const c = new ObserverClient(observerSocket);
  try {
    return (await c.collect({ number: 10_000 })).flatMap((r) => (r.flow && pick(r.flow) ? [r.flow] : []));
  } finally {
    c.close();
  }
}

/** Polls a node's observer until it holds a flow `pick` matches (`ms` at most); those flows. */
export async function flowsUntil(what: string, observerSocket: string, pick: (f: Flow) => boolean, ms = 10_000): Promise<Flow[]> {
  let got: Flow[] = [];
  await eventually(what, async () => (got = await flowsOf(observerSocket, pick)).length > 0, ms, 200);
  return got;
}

export const tcpDport = (f: Flow): number | undefined => f.l4?.TCP?.destinationPort;
