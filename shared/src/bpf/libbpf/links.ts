// BPF links: attachments held by a file descriptor (pinned, they outlive the process), e.g. the L7
// proxy's sk_lookup program on a netns.
import { bind, check } from './native.ts';
import { objInfo } from './objects.ts';

export const BPF_SK_LOOKUP = 36; // enum bpf_attach_type
// libbpf 1.1 has no tcx API: bpf_link_create with these attach types and the ifindex as target.
export const BPF_TCX_INGRESS = 46;
export const BPF_TCX_EGRESS = 47;
const BPF_LINK_TYPE_TCX = 11; // enum bpf_link_type
/** mprog (tcx) placement: with no relative program or link named, the head of the hook's chain. */
export const BPF_F_BEFORE = 1 << 3;

/** A link of progFd to target (e.g. a netns fd, an ifindex for tcx); returns an fd the caller must
 *  close. flags: attr.link_create.flags (BPF_F_BEFORE). */
export function linkCreate(progFd: number, targetFd: number, attachType: number, what: string, flags = 0): number {
  const opts = flags
    ? {
        sz: 64,
        flags,
        iter_info: null,
        iter_info_len: 0,
        target_btf_id: 0,
        kprobe_multi: { flags: 0, cnt: 0, syms: null, addrs: null, cookies: null },
      }
    : null;
  return check(bind().link_create(progFd, targetFd, attachType, opts), 'bpf_link_create', what);
}

/** Replaces the program of a link in place (there is no moment without one). */
export function linkUpdate(linkFd: number, progFd: number, what: string): void {
  check(bind().link_update(linkFd, progFd, null), 'bpf_link_update', what);
}

/** Detaches a link from its hook while pins/fds of it may remain (they then report ifindex 0). */
export function linkDetach(linkFd: number, what: string): void {
  check(bind().link_detach(linkFd), 'bpf_link_detach', what);
}

export interface TcxLinkInfo {
  progId: number;
  /** 0 once the link is detached: its device was unregistered, or linkDetach. */
  ifindex: number;
  attachType: number;
}

/** bpf_link_info of a tcx link (u32 type, id, prog_id, then the union at offset 16: tcx.ifindex,
 *  tcx.attach_type); undefined for a link of another type. */
export function tcxLinkInfo(linkFd: number, what: string): TcxLinkInfo | undefined {
  const info = objInfo(linkFd, 6, what);
  if (info[0] !== BPF_LINK_TYPE_TCX) return undefined;
  return { progId: info[2], ifindex: info[4], attachType: info[5] };
}

/** Ids of every program on an interface's tcx hook, in run order (ours and other tools'); [] without. */
export function tcxProgramIds(ifindex: number, attachType: number, what: string): number[] {
  const ids = new Uint32Array(64);
  const cnt = [ids.length];
  check(bind().prog_query(ifindex, attachType, 0, [0], ids, cnt), 'bpf_prog_query', what);
  return [...ids.subarray(0, cnt[0])];
}
