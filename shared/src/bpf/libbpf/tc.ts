// Classic tc clsact hooks: create the qdisc, attach/detach/query a program at (handle, priority).
import { constants as osConstants } from 'node:os';
import { bind, check } from './native.ts';
import { describeDevice } from '../../netns/device.ts';

// enum bpf_tc_attach_point / enum bpf_tc_flags
export const BPF_TC_INGRESS = 1 << 0;
export const BPF_TC_EGRESS = 1 << 1;
export const BPF_TC_F_REPLACE = 1 << 0;

function tcHook(ifindex: number, attachPoint: number) {
  return { sz: 24, ifindex, attach_point: attachPoint, parent: 0 };
}

function pointName(attachPoint: number): string {
  return attachPoint === BPF_TC_INGRESS ? 'ingress' : attachPoint === BPF_TC_EGRESS ? 'egress' : 'clsact';
}

/** check() naming the hook and its device (name, netns), looked up only when the call failed. */
function checkHook(ret: number, op: string, ifindex: number, attachPoint: number): number {
  return ret < 0 ? check(ret, op, `tc ${pointName(attachPoint)} hook of ${describeDevice(ifindex)}`) : ret;
}

/** Create the clsact qdisc; an existing one is fine. */
export function tcHookCreate(ifindex: number): void {
  const ret = bind().tc_hook_create(tcHook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS));
  if (ret !== -osConstants.errno.EEXIST) checkHook(ret, 'bpf_tc_hook_create', ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS);
}

export function tcAttach(ifindex: number, attachPoint: number, progFd: number, handle: number, priority: number): void {
  const opts = { sz: 32, prog_fd: progFd, flags: BPF_TC_F_REPLACE, prog_id: 0, handle, priority };
  checkHook(bind().tc_attach(tcHook(ifindex, attachPoint), opts), 'bpf_tc_attach', ifindex, attachPoint);
}

/** Returns false when there was nothing to detach (no filter, no qdisc or no such link). */
export function tcDetach(ifindex: number, attachPoint: number, handle: number, priority: number): boolean {
  const opts = { sz: 32, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = bind().tc_detach(tcHook(ifindex, attachPoint), opts);
  if (isGone(ret)) return false;
  checkHook(ret, 'bpf_tc_detach', ifindex, attachPoint);
  return true;
}

/** Program id attached at (handle, priority), or undefined when none / no qdisc / no link. */
export function tcQuery(ifindex: number, attachPoint: number, handle: number, priority: number): number | undefined {
  const opts = { sz: 32, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = bind().tc_query(tcHook(ifindex, attachPoint), opts);
  if (isGone(ret)) return undefined;
  checkHook(ret, 'bpf_tc_query', ifindex, attachPoint);
  return opts.prog_id;
}

// Netlink answers a missing filter with ENOENT, a missing clsact with EINVAL, a missing link with ENODEV.
function isGone(ret: number): boolean {
  const e = osConstants.errno;
  return ret === -e.ENOENT || ret === -e.EINVAL || ret === -e.ENODEV;
}
