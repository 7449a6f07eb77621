// The datapath's half of the L7 proxy that the agent sets up once: the host device that hairpinned
// packets enter (bpf/lib/proxy.h proxy_config), and the program on its tc ingress that hands them to
// the proxy (from_host_device, loaded and pinned with the others).
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../bpf/libbpf.ts';
import { PROGRAM_PINS, TC_HANDLE, TC_PRIORITY, type Datapath } from '../bpf/datapath.ts';
import { encodeU32Key } from '../maps/codec.ts';
import { parseMac, writeHostU32 } from '../net/index.ts';

const PROXY_CONFIG_SIZE = 16;

export function attachProxyHairpin(dp: Datapath, host: { index: number; mac: string }): void {
  const v = Buffer.alloc(PROXY_CONFIG_SIZE);
  writeHostU32(v, 0, host.index);
  parseMac(host.mac).copy(v, 4);
  const prog = bpf.objGet(path.join(dp.pinDir, PROGRAM_PINS.from_host_device));
  try {
    bpf.tcHookCreate(host.index);
    bpf.tcAttach(host.index, bpf.BPF_TC_INGRESS, prog, TC_HANDLE, TC_PRIORITY);
  } finally {
    fs.closeSync(prog);
  }
  bpf.mapUpdate(dp.mapFd('proxy_config'), 'proxy_config', encodeU32Key(0), v);
}
