// Whether the DNS proxy's UDP port is free, read from the kernel's socket tables rather than probed
// with a socket. A probe bound to the port, even for a moment, is a socket there: the kernel hands it
// datagrams sent to the port (a bound socket without SO_REUSEPORT goes ahead of a reuseport group in
// the lookup) and its close() drops them, diverted queries of a proxy already on the port among them.
// And a probe that sets SO_REUSEADDR binds next to a proxy socket that set it too (the proxy's do),
// so it saw such a port as free. The tables list every socket, whatever its options.
//
// /proc/thread-self/net is the calling thread's netns (the agent's, or the one withNetns entered),
// where a bind would have looked.

import fs from 'node:fs';
import { formatIp, readHostU32 } from '../net/index.ts';

/** Addresses whose sockets take a port on 127.0.0.1 or ::1: those two, the wildcards, and v4-mapped
 *  127.0.0.1 and 0.0.0.0 (formatIp's text of ::ffff:127.0.0.1 and ::ffff:0.0.0.0). */
const COLLIDING = new Set(['127.0.0.1', '0.0.0.0', '::1', '::', '::ffff:7f00:1', '::ffff:0:0']);

/** A local address of /proc/net/udp{,6} (hex, each 32-bit word in host byte order) as text. */
function localAddress(hex: string): string {
  const words = Buffer.from(hex, 'hex');
  const b = Buffer.alloc(words.length);
  for (let i = 0; i < words.length; i += 4) b.writeUInt32BE(readHostU32(words, i), i);
  return formatIp(b);
}

/** The local addresses of the sockets on `port` in one table's text (/proc/net/udp or udp6). */
export function addressesOnPort(table: string, port: number): string[] {
  const out: string[] = [];
  for (const line of table.split('\n').slice(1)) {
    const local = line.trim().split(/\s+/)[1];
    if (!local) continue;
    const [hex, p] = local.split(':');
    if (hex && p && Number.parseInt(p, 16) === port) out.push(localAddress(hex));
  }
  return out;
}

/** Nobody has a UDP socket on this port of either loopback address or the wildcard, in the calling
 *  thread's netns (a node without IPv6 has no udp6 table). */
export function udpPortFree(port: number): boolean {
  for (const table of ['udp', 'udp6']) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/thread-self/net/${table}`, 'utf8');
    } catch (e) {
      if (table === 'udp6' && (e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    if (addressesOnPort(text, port).some((a) => COLLIDING.has(a))) return false;
  }
  return true;
}
