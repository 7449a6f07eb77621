// What cluster routing leaves on a node after its agent stopped (it keeps pods reaching other nodes on
// purpose, like every endpoint's datapath): our routes to the other nodes' pod CIDRs, the tunnel device
// and native routing's receive program on the underlay device. `--uninstall --purge` removes them; each
// only where it is provably ours (our route protocol; the tunnel device and the underlay's program only
// with the program pinned in our own bpffs dir attached), so another agent's or the admin's state stays.
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../bpf/libbpf.ts';
import { PROGRAM_PINS, TC_HANDLE, TC_PRIORITY } from '../bpf/datapath.ts';
import { detachTcx, tcxProgramId } from '../bpf/tcx.ts';
import type { Netlink } from '../netlink/index.ts';
import { underlayOf, removeTunnelDevice } from './device.ts';
import { RTPROT_MEMBRANE_CLUSTER } from './routing.ts';

export interface ClusterRoutingLeftovers {
  /** The agent's bpffs dir (its pinned programs identify what it attached). */
  pinDir: string;
  tunnelDevice: string;
  /** The node's underlay address (cluster mode); its device is where from_underlay may sit. */
  nodeIp?: string;
}

/** Removes what is there of it; one line per removed thing. Run before the pins go. */
export function removeClusterRouting(host: Netlink, o: ClusterRoutingLeftovers): string[] {
  const removed: string[] = [];
  for (const family of [4, 6] as const) {
    for (const rt of host.routeList({ family })) {
      if (rt.protocol !== RTPROT_MEMBRANE_CLUSTER) continue;
      if (host.routeDel({ dst: rt.dst, index: 0, protocol: RTPROT_MEMBRANE_CLUSTER })) removed.push(`route ${rt.dst}`);
    }
  }
  // Only a device with our from_tunnel on it: the name alone (a record someone edited, or a device of
  // that name someone else made since) is no proof, and deleting another overlay's device cuts its node.
  const tunnel = host.vxlanGet(o.tunnelDevice);
  if (tunnel && attachedIsOurs(o.pinDir, tunnel.index, PROGRAM_PINS.from_tunnel)) {
    if (removeTunnelDevice(host, o.tunnelDevice, o.pinDir)) removed.push(`link ${o.tunnelDevice}`);
  }
  const device = o.nodeIp ? underlayDevice(host, o.nodeIp) : undefined;
  const link = device ? host.linkByName(device) : null;
  if (link && attachedIsOurs(o.pinDir, link.index, PROGRAM_PINS.from_underlay)) {
    const viaTcx = detachTcx(o.pinDir, { ifindex: link.index, direction: 'ingress' });
    if (bpf.tcDetach(link.index, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY) || viaTcx)
      removed.push(`from_underlay on ${device} ingress`);
  }
  return removed;
}

function underlayDevice(host: Netlink, nodeIp: string): string | undefined {
  try {
    return underlayOf(host, nodeIp).device;
  } catch {
    return undefined; // the address is no longer on this node: nothing of ours can sit on its device
  }
}

/** The program our tcx link in pinDir runs on the ingress, or (an earlier version's) the one at our
 *  classic handle and priority, is the one pinned as ours (an upgrade re-attaches the new pin at start,
 *  so a running cluster agent's attachment always matches its pin). */
function attachedIsOurs(pinDir: string, ifindex: number, progPin: string): boolean {
  const pin = path.join(pinDir, progPin);
  const attached = [
    tcxProgramId(pinDir, { ifindex, direction: 'ingress' }),
    bpf.tcQuery(ifindex, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY),
  ].filter((id) => id !== undefined);
  if (!attached.length || !fs.existsSync(pin)) return false;
  const fd = bpf.objGet(pin);
  try {
    return attached.includes(bpf.progId(fd, pin));
  } finally {
    fs.closeSync(fd);
  }
}
