// Raw frames from and to a pod's eth0 for the attack tests: built by hand (shared/src/bpf/packets.ts),
// sent and sniffed by integration/lib/rawpkt.py inside the pod's netns (nsenter), so nothing but the
// datapath decides what arrives.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestNetns } from './netns.ts';
import { formatIp } from '../../shared/src/net/index.ts';

const HELPER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'rawpkt.py');

/** Sends the frames out of `iface` in the pod, in order. */
export async function sendFrames(ns: TestNetns, frames: Buffer[], iface = 'eth0'): Promise<void> {
  await ns.exec('python3', [HELPER, 'send', iface, ...frames.map((f) => f.toString('hex'))]);
}

/** Sends one IPv4 TCP frame out of `iface` as a GSO packet (segments of `mss` bytes): a packet socket
 *  with a virtio-net header, as a VM's frames arrive from a tap device. The TCP checksum field must
 *  hold the pseudo-header sum, not inverted: the kernel completes it per segment. */
export async function sendGsoFrame(ns: TestNetns, frame: Buffer, mss: number, iface = 'eth0'): Promise<void> {
  await ns.exec('python3', [HELPER, 'send-gso', iface, String(mss), frame.toString('hex')]);
}

export interface Sniffer {
  /** Frames seen so far: received ('in') or sent by the pod ('out'). */
  frames(): { dir: 'in' | 'out'; frame: Buffer }[];
  /** Stops early; resolves with every frame seen. */
  stop(): Promise<{ dir: 'in' | 'out'; frame: Buffer }[]>;
}

/** Captures on the pod's `iface` for up to `seconds`; resolves once the capture is running. */
export async function sniff(ns: TestNetns, seconds = 5, iface = 'eth0'): Promise<Sniffer> {
  const child = spawn('nsenter', [`--net=${ns.path}`, 'python3', HELPER, 'sniff', iface, String(seconds)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const seen: { dir: 'in' | 'out'; frame: Buffer }[] = [];
  let buf = '';
  let ready!: () => void;
  const started = new Promise<void>((r) => {
    ready = r;
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line === 'ready') ready();
      const m = /^(in|out) ([0-9a-f]+)$/.exec(line);
      if (m) seen.push({ dir: m[1] as 'in' | 'out', frame: Buffer.from(m[2], 'hex') });
    }
  });
  await Promise.race([
    started,
    exited.then(() => {
      throw new Error('sniffer exited before it started');
    }),
  ]);
  return {
    frames: () => seen,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
      return seen;
    },
  };
}

/** What the tests look for in a frame: its IP family, addresses, L4 protocol, ports and TCP flags. */
export interface FrameInfo {
  family: 4 | 6;
  src: string;
  dst: string;
  proto: number;
  sport: number;
  dport: number;
  flags: number;
  icmpType: number;
  fragment: boolean;
}

const v6text = (b: Buffer) => formatIp(b);

export function frameInfo(f: Buffer): FrameInfo | undefined {
  const type = f.readUInt16BE(12);
  if (type === 0x0800 && f.length >= 34) {
    const ihl = (f[14] & 0xf) * 4,
      l4 = 14 + ihl,
      proto = f[23];
    const fragOff = f.readUInt16BE(20) & 0x1fff;
    const has = fragOff === 0 && f.length >= l4 + 4;
    return {
      family: 4,
      src: Array.from(f.subarray(26, 30)).join('.'),
      dst: Array.from(f.subarray(30, 34)).join('.'),
      proto,
      sport: has && proto !== 1 ? f.readUInt16BE(l4) : 0,
      dport: has && proto !== 1 ? f.readUInt16BE(l4 + 2) : 0,
      flags: proto === 6 && f.length >= l4 + 14 && !fragOff ? f[l4 + 13] : 0,
      icmpType: proto === 1 && has ? f[l4] : -1,
      fragment: (f.readUInt16BE(20) & 0x3fff) !== 0,
    };
  }
  if (type === 0x86dd && f.length >= 54) {
    const next = f[20],
      l4 = 54;
    const has = next !== 44 && f.length >= l4 + 4;
    return {
      family: 6,
      src: v6text(f.subarray(22, 38)),
      dst: v6text(f.subarray(38, 54)),
      proto: next,
      sport: has && next !== 58 ? f.readUInt16BE(l4) : 0,
      dport: has && next !== 58 ? f.readUInt16BE(l4 + 2) : 0,
      flags: next === 6 && f.length >= l4 + 14 ? f[l4 + 13] : 0,
      icmpType: next === 58 && has ? f[l4] : -1,
      fragment: next === 44,
    };
  }
  return undefined;
}
