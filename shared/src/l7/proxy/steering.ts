// A worker's listeners in the datapath's proxy_listeners map (bpf/lib/proxy.h), where the netns's
// socket lookup program finds them for diverted SYNs. Key: family << 24 | slot << 16 | port, one slot
// per worker (index % LISTENER_SLOTS); all listeners of a port share one SO_REUSEPORT group, so the
// kernel spreads connections over every worker whichever slot the program finds. A closed socket
// leaves the map by itself: a worker that dies takes nothing stale with it.
import fs from 'node:fs';
import * as bpf from '../../bpf/libbpf.ts';

export const LISTENER_SLOTS = 4;

export function listenerKey(family: 4 | 6, slot: number, port: number): Buffer {
  const k = Buffer.alloc(4);
  k.writeUInt32LE((((family << 24) | ((slot % LISTENER_SLOTS) << 16) | port) >>> 0) as number, 0);
  return k;
}

/** Registers listening socket `fd` under (family, slot, port) in the map pinned at `mapPath`. */
export function registerListener(mapPath: string, family: 4 | 6, slot: number, port: number, fd: number): void {
  const map = bpf.objGet(mapPath);
  try {
    const v = Buffer.alloc(8);
    v.writeBigUInt64LE(BigInt(fd), 0);
    bpf.mapUpdate(map, 'proxy_listeners', listenerKey(family, slot, port), v);
  } finally {
    fs.closeSync(map);
  }
}
