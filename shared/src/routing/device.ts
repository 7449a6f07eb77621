// The node's tunnel device: one collect-metadata VXLAN device (no ARP: routes into it need no
// neighbour answers), with from_tunnel on its tc ingress and to_tunnel on its egress (tcx links of the
// pinned programs, pinned so the attachment outlives the agent like every endpoint's does: bpf/tcx.ts).
// Native routing has none; its receive program sits on the underlay device's tc ingress instead.
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../bpf/libbpf.ts';
import { PROGRAM_PINS, TC_HANDLE, TC_PRIORITY, type Datapath } from '../bpf/datapath.ts';
import { attachTcx, detachTcx, releaseDetachedTcx, type TcxDirection } from '../bpf/tcx.ts';
import type { Netlink } from '../netlink/index.ts';
import { addressOnly, familyOf, normalizeIp, type Family } from '../net/index.ts';

export const DEFAULT_TUNNEL_DEVICE = 'membrane_vxlan';
export const DEFAULT_TUNNEL_PORT = 8472; // Linux's and Cilium's VXLAN port (IANA's is 4789)

export interface TunnelDeviceSpec {
  name: string;
  port: number;
  mtu: number;
}

/** The device as specified, created or recreated (a device of that name with other settings is ours
 *  from an earlier configuration: it is replaced), up, with both programs attached. Its ifindex. */
export function ensureTunnelDevice(host: Netlink, dp: Datapath, spec: TunnelDeviceSpec): number {
  let cur = host.vxlanGet(spec.name);
  if (!cur && host.linkByName(spec.name)) {
    throw new Error(
      `cannot create the tunnel device ${spec.name}: a link of that name exists and is no VXLAN device (choose another --tunnel-device)`,
    );
  }
  if (cur && !(cur.collectMetadata && cur.port === spec.port && cur.mtu === spec.mtu && cur.noArp)) {
    host.linkDel(cur.index);
    dp.releaseDetached(cur.index); // its links' pins (the kernel detached them with it)
    cur = null;
  }
  if (!cur) host.vxlanAdd({ name: spec.name, port: spec.port, mtu: spec.mtu, up: true, noArp: true });
  const link = host.linkByName(spec.name);
  if (!link) throw new Error(`tunnel device ${spec.name} vanished right after it was created`);
  if (!link.up) host.linkSetUp(link.index);
  attachPinned(dp, link.index, 'ingress', PROGRAM_PINS.from_tunnel);
  attachPinned(dp, link.index, 'egress', PROGRAM_PINS.to_tunnel);
  return link.index;
}

/** from_underlay on the underlay device's tc ingress hands other nodes' packets for this node's pods
 *  straight to them: native routing's receive path (bpf/underlay.c), and in tunnel mode the VXLAN
 *  receive short-cut (bpf/vxlan_rx.c); everything else passes untouched. */
export function attachUnderlay(dp: Datapath, ifindex: number): void {
  attachPinned(dp, ifindex, 'ingress', PROGRAM_PINS.from_underlay);
}

/** Tunnel mode: a from_underlay an earlier native run left (our tcx link, or an earlier version's
 *  classic filter at our handle and priority) is removed. It would pass everything anyway (it acts only
 *  with native routing configured); this keeps the device as we found it. The clsact qdisc stays:
 *  other filters may share it. */
export function detachUnderlay(dp: Pick<Datapath, 'pinDir'>, ifindex: number): boolean {
  const link = detachTcx(dp.pinDir, { ifindex, direction: 'ingress' });
  return bpf.tcDetach(ifindex, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY) || link;
}

/** Native routing has no tunnel device: one an earlier run in tunnel mode left is deleted, and the
 *  pins of its links (the kernel detached them with it) in pinDir. */
export function removeTunnelDevice(host: Netlink, name: string, pinDir: string): boolean {
  const cur = host.vxlanGet(name);
  if (!cur?.collectMetadata) return false;
  const deleted = host.linkDel(cur.index);
  releaseDetachedTcx(pinDir, cur.index);
  return deleted;
}

function attachPinned(dp: Datapath, ifindex: number, direction: TcxDirection, pin: string): void {
  const prog = bpf.objGet(path.join(dp.pinDir, pin));
  try {
    attachTcx(dp.pinDir, { ifindex, direction }, prog);
  } finally {
    fs.closeSync(prog);
  }
}

/** The MTU of the interface holding the node's underlay address, that address's family, and the address. */
export function underlayOf(host: Netlink, nodeIp: string): { mtu: number; family: Family; device: string; address: string } {
  const family = familyOf(nodeIp);
  if (!family) throw new Error(`--node-ip "${nodeIp}" is not an IP address`);
  const want = normalizeIp(nodeIp);
  const addr = host.addrList({ family }).find((a) => normalizeIp(addressOnly(a.cidr)) === want);
  const link = addr && host.linkByIndex(addr.index);
  if (!link) throw new Error(`--node-ip ${nodeIp} is on no interface of this node: give the address other nodes reach it at`);
  return { mtu: link.mtu, family, device: link.name, address: want };
}
