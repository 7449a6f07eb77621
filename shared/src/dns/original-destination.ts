// Where a diverted datagram was going: the datapath records it in the proxy_udp_dst map, keyed by the
// sender's address and port (bpf/lib/proxy.h), because dgram cannot read IP_RECVORIGDSTADDR. Read per
// datagram, by the agent's thread or a proxy worker thread (map fds are the process's).
import * as bpf from '../bpf/libbpf.ts';
import { formatIp, ipBytes, normalizeIp } from '../net/index.ts';
import type { Peer } from './types.ts';

/** The datapath's record of where a diverted datagram from `src` was going. */
export function originalDestination(fd: number, src: Peer): Peer | undefined {
  const key = odKey.fill(0);
  const v6 = src.ip.includes(':');
  key[0] = v6 ? 6 : 4;
  key.writeUInt16BE(src.port, 2);
  if (v6 || !writeIpv4(src.ip, key, 4)) ipBytes(normalizeIp(src.ip.replace(/^::ffff:/, ''))).copy(key, 4);
  const v = bpf.mapLookup(fd, 'proxy_udp_dst', key, 20);
  if (!v) return undefined;
  return { ip: formatIp(v6 ? v.subarray(0, 16) : v.subarray(0, 4)), port: v.readUInt16BE(16) };
}

/** Reused by every lookup (they are synchronous; one per thread). */
const odKey = Buffer.alloc(20);

/** Writes a dotted-quad address's 4 bytes at `at`; false when `ip` is not one (per datagram: no split). */
function writeIpv4(ip: string, out: Buffer, at: number): boolean {
  let part = 0;
  let n = 0;
  let digits = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      if (!digits || part > 2) return false;
      out[at + part++] = n;
      n = 0;
      digits = 0;
      continue;
    }
    if (c < 48 || c > 57 || ++digits > 3) return false;
    n = n * 10 + (c - 48);
    if (n > 255) return false;
  }
  if (!digits || part !== 3) return false;
  out[at + 3] = n;
  return true;
}
