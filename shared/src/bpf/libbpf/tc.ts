// Classic tc clsact hooks: create the qdisc, attach/detach/query a program at (handle, priority).
import { constants as osConstants } from 'node:os';
import { bind, check } from './native.ts';

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

/** Create the clsact qdisc; an existing one is fine. */
export function tcHookCreate(ifindex: number): void {
  const ret = bind().tc_hook_create(tcHook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS));
  if (ret !== -osConstants.errno.EEXIST) check(ret, 'bpf_tc_hook_create', `ifindex ${ifindex} (clsact)`);
}

export function tcAttach(ifindex: number, attachPoint: number, progFd: number, handle: number, priority: number): void {
  const opts = { sz: 32, prog_fd: progFd, flags: BPF_TC_F_REPLACE, prog_id: 0, handle, priority };
  check(bind().tc_attach(tcHook(ifindex, attachPoint), opts), 'bpf_tc_attach', `ifindex ${ifindex} ${pointName(attachPoint)}`);
}

/** Returns false when there was nothing to detach (no filter, no qdisc or no such link). */
export function tcDetach(ifindex: number, attachPoint: number, handle: number, priority: number): boolean {
  const opts = { sz: 32, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = bind().tc_detach(tcHook(ifindex, attachPoint), opts);
  if (isGone(ret)) return false;
  check(ret, 'bpf_tc_detach', `ifindex ${ifindex} ${pointName(attachPoint)}`);
  return true;
}

/** Program id attached at (handle, priority), or undefined when none / no qdisc / no link. */
export function tcQuery(ifindex: number, attachPoint: number, handle: number, priority: number): number | undefined {
  const opts = { sz: 32, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = bind().tc_query(tcHook(ifindex, attachPoint), opts);
  if (isGone(ret)) return undefined;
  check(ret, 'bpf_tc_query', `ifindex ${ifindex} ${pointName(attachPoint)}`);
  return opts.prog_id;
}

// Netlink answers a missing filter with ENOENT, a missing clsact with EINVAL, a missing link with ENODEV.
function isGone(ret: number): boolean {
  const e = osConstants.errno;
  return ret === -e.ENOENT || ret === -e.EINVAL || ret === -e.ENODEV;
}
