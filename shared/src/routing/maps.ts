// The overlay's BPF maps (bpf/lib/overlay.h): tunnel_map (LPM trie, prefix -> the node owning it; in
// native routing the other nodes' pod CIDRs only) and overlay_config (the tunnel device, flags). The encoders are pure; TunnelMaps reads and writes the pinned maps.
import * as bpf from '../bpf/libbpf.ts';
import type { Datapath } from '../bpf/datapath.ts';
import { encodeIpcacheKey, encodeU32Key } from '../maps/codec.ts';
import { decodeIpcacheKey } from '../policy/map-codec.ts';
import { formatIp, ipBytes, readHostU32, requireFamily, writeHostU32 } from '../net/index.ts';
import type { TunnelTarget } from './plan.ts';

export const TUNNEL_KEY_SIZE = 24; // struct ipcache_key
export const TUNNEL_VALUE_SIZE = 24; // struct tunnel_endpoint
export const OVERLAY_CONFIG_SIZE = 32;
export const OVERLAY_F_UNDERLAY_IPV6 = 1;
/** Native routing: tunnel_map holds the other nodes' pod CIDRs, and pods' packets to them leave through
 *  the underlay device (bpf/lib/fib.h) instead of up the host stack's forwarding path. */
export const OVERLAY_F_NATIVE = 2;

export interface OverlayConfig {
  tunnelIfindex: number;
  underlay: 4 | 6;
  /** Native routing's send path (OVERLAY_F_NATIVE) out of this device (the node address's interface). */
  native?: { underlayIfindex: number };
  /** Tunnel mode over an IPv4 underlay: the receive short-cut on the underlay device (bpf/vxlan_rx.c)
   *  takes datagrams to this address and port arriving there. */
  rx?: { underlayIfindex: number; port: number; nodeIpv4: string };
}

/** struct tunnel_endpoint: family, pad[3], node_id (host order), addr[16]. */
export function encodeTunnelEndpoint(t: { nodeId: number; ip: string }): Buffer {
  const b = Buffer.alloc(TUNNEL_VALUE_SIZE);
  b[0] = requireFamily(t.ip);
  writeHostU32(b, 4, t.nodeId >>> 0);
  ipBytes(t.ip).copy(b, 8);
  return b;
}

export function decodeTunnelEndpoint(b: Buffer): { nodeId: number; ip: string } {
  return { nodeId: readHostU32(b, 4), ip: formatIp(b.subarray(8, b[0] === 4 ? 12 : 24)) };
}

export function encodeOverlayConfig(c: OverlayConfig): Buffer {
  const b = Buffer.alloc(OVERLAY_CONFIG_SIZE);
  writeHostU32(b, 0, c.tunnelIfindex >>> 0);
  writeHostU32(b, 4, (c.underlay === 6 ? OVERLAY_F_UNDERLAY_IPV6 : 0) | (c.native ? OVERLAY_F_NATIVE : 0));
  writeHostU32(b, 8, (c.native?.underlayIfindex ?? c.rx?.underlayIfindex ?? 0) >>> 0);
  if (c.rx) {
    writeHostU32(b, 12, c.rx.port);
    ipBytes(c.rx.nodeIpv4).copy(b, 16); // network order, as the datagram carries it
  }
  return b;
}

export function decodeOverlayConfig(b: Buffer): OverlayConfig {
  const flags = readHostU32(b, 4);
  const port = readHostU32(b, 12);
  return {
    tunnelIfindex: readHostU32(b, 0),
    underlay: flags & OVERLAY_F_UNDERLAY_IPV6 ? 6 : 4,
    ...(flags & OVERLAY_F_NATIVE ? { native: { underlayIfindex: readHostU32(b, 8) } } : {}),
    ...(port ? { rx: { underlayIfindex: readHostU32(b, 8), port, nodeIpv4: formatIp(b.subarray(16, 20)) } } : {}),
  };
}

/** The pinned overlay maps of one node. */
export class TunnelMaps {
  constructor(private readonly dp: Datapath) {}

  /** prefix -> node id and underlay address, as the map holds them. */
  read(): Map<string, { nodeId: number; ip: string }> {
    const fd = this.dp.mapFd('tunnel_map');
    const out = new Map<string, { nodeId: number; ip: string }>();
    for (const key of bpf.mapKeys(fd, 'tunnel_map', TUNNEL_KEY_SIZE, this.dp.mapCapacity('tunnel_map') + 1)) {
      const v = bpf.mapLookup(fd, 'tunnel_map', key, TUNNEL_VALUE_SIZE);
      if (v) out.set(decodeIpcacheKey(key), decodeTunnelEndpoint(v));
    }
    return out;
  }

  write(upsert: [string, TunnelTarget][], remove: string[]): void {
    const fd = this.dp.mapFd('tunnel_map');
    for (const [prefix, t] of upsert) bpf.mapUpdate(fd, 'tunnel_map', encodeIpcacheKey(prefix), encodeTunnelEndpoint(t));
    for (const prefix of remove) bpf.mapDelete(fd, 'tunnel_map', encodeIpcacheKey(prefix));
  }

  setConfig(c: OverlayConfig): void {
    bpf.mapUpdate(this.dp.mapFd('overlay_config'), 'overlay_config', encodeU32Key(0), encodeOverlayConfig(c));
  }

  config(): OverlayConfig {
    const v = bpf.mapLookup(this.dp.mapFd('overlay_config'), 'overlay_config', encodeU32Key(0), OVERLAY_CONFIG_SIZE);
    return v ? decodeOverlayConfig(v) : { tunnelIfindex: 0, underlay: 4 };
  }
}
