// Switches benches flip in a running datapath, in place, so an A/B keeps the same agents and pods.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { decodeGlobalConfig, encodeGlobalConfig, encodeU32Key, GLOBAL_CONFIG_SIZE } from '../../shared/src/maps/codec.ts';

const UNDERLAY_RX_CHILD = path.join(import.meta.dirname, 'underlay-rx-child.ts');

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
 *  agent attaches it (a tcx link pinned in its bpffs dir), or removed so the stack forwards to the pod's
 *  host veth. Removing what is already gone is not an error. */
export function setUnderlayRx(netnsPath: string, bpffsDir: string, on: boolean): void {
  const child = [process.execPath, '--import', 'tsx', UNDERLAY_RX_CHILD, bpffsDir, on ? 'on' : 'off'];
  try {
    execFileSync('nsenter', ['--net=' + netnsPath, ...child], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`setting prog_from_underlay ${on ? 'on' : 'off'} in ${netnsPath}: ${(err as Error).message}`);
  }
}
