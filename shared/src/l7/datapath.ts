// The datapath's half of the L7 proxy that the agent sets up once: the host device that hairpinned
// packets enter (bpf/lib/proxy.h proxy_config), the program on its tc ingress that hands them to
// the proxy (from_host_device, loaded and pinned with the others; a pinned tcx link, bpf/tcx.ts), and the socket lookup program on
// the agent's netns that hands a diverted SYN to the proxy's listener (proxy_steer, a pinned link).
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../bpf/libbpf.ts';
import { LINK_PINS, PROGRAM_PINS, type Datapath } from '../bpf/datapath.ts';
import { attachTcx } from '../bpf/tcx.ts';
import { encodeU32Key } from '../maps/codec.ts';
import { parseMac, writeHostU32 } from '../net/index.ts';

const PROXY_CONFIG_SIZE = 16;

export function attachProxyHairpin(dp: Datapath, host: { index: number; mac: string }): void {
  const v = Buffer.alloc(PROXY_CONFIG_SIZE);
  writeHostU32(v, 0, host.index);
  parseMac(host.mac).copy(v, 4);
  const prog = bpf.objGet(path.join(dp.pinDir, PROGRAM_PINS.from_host_device));
  try {
    attachTcx(dp.pinDir, { ifindex: host.index, direction: 'ingress' }, prog);
  } finally {
    fs.closeSync(prog);
  }
  bpf.mapUpdate(dp.mapFd('proxy_config'), 'proxy_config', encodeU32Key(0), v);
}

/**
 * proxy_steer on this process's netns, as a link pinned next to the programs so it outlives the
 * agent (removePins detaches it). A link pinned by an earlier agent gets the program just loaded; one
 * that cannot take it (its netns is gone) is replaced.
 */
export function attachProxySteering(dp: Datapath): void {
  const linkPin = path.join(dp.pinDir, LINK_PINS.proxy_steer);
  const prog = bpf.objGet(path.join(dp.pinDir, PROGRAM_PINS.proxy_steer));
  try {
    if (fs.existsSync(linkPin)) {
      const link = bpf.objGet(linkPin);
      try {
        bpf.linkUpdate(link, prog, linkPin);
        return;
      } catch {
        fs.rmSync(linkPin, { force: true });
      } finally {
        fs.closeSync(link);
      }
    }
    const netns = fs.openSync('/proc/self/ns/net', 'r');
    try {
      const link = bpf.linkCreate(prog, netns, bpf.BPF_SK_LOOKUP, 'sk_lookup on this netns');
      try {
        bpf.objPin(link, linkPin);
      } finally {
        fs.closeSync(link);
      }
    } finally {
      fs.closeSync(netns);
    }
  } finally {
    fs.closeSync(prog);
  }
}
