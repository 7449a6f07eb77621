// Switches benches flip in a running datapath, in place, so an A/B keeps the same agents and pods.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { decodeGlobalConfig, encodeGlobalConfig, encodeU32Key, GLOBAL_CONFIG_SIZE } from '../../shared/src/maps/codec.ts';

/** The flow-event switch in an agent's pinned datapath_config, the other settings kept. */
export function setFlowEvents(bpffsDir: string, on: boolean): void {
  const pin = path.join(bpffsDir, 'datapath_config');
  const fd = bpf.objGet(pin);
  try {
    const key = encodeU32Key(0);
    const cur = decodeGlobalConfig(bpf.mapLookup(fd, pin, key, GLOBAL_CONFIG_SIZE) ?? Buffer.alloc(GLOBAL_CONFIG_SIZE));
    bpf.mapUpdate(fd, pin, key, encodeGlobalConfig({ ...cur, events: on }));
  } finally {
    fs.closeSync(fd);
  }
}

/** Native routing's receive program on a node's underlay device (eth0 in the harness): attached as the
 *  agent attaches it (TC_HANDLE 0x4d42, priority 1), or removed so the stack forwards to the pod's host
 *  veth. Removing what is already gone is not an error. */
export function setUnderlayRx(netnsPath: string, bpffsDir: string, on: boolean): void {
  const tc = ['--net=' + netnsPath, 'tc', 'filter', on ? 'replace' : 'del', 'dev', 'eth0', 'ingress'];
  tc.push('pref', '1', 'handle', '0x4d42', 'bpf');
  if (on) tc.push('direct-action', 'object-pinned', `${bpffsDir}/prog_from_underlay`);
  try {
    execFileSync('nsenter', tc, { stdio: 'ignore' });
  } catch (err) {
    if (on) throw new Error(`attaching prog_from_underlay in ${netnsPath}: ${(err as Error).message}`);
  }
}
