// BPF links: attachments held by a file descriptor (pinned, they outlive the process), e.g. the L7
// proxy's sk_lookup program on a netns.
import { bind, check } from './native.ts';

export const BPF_SK_LOOKUP = 36; // enum bpf_attach_type

/** A link of progFd to target (e.g. a netns fd); returns an fd the caller must close. */
export function linkCreate(progFd: number, targetFd: number, attachType: number, what: string): number {
  return check(bind().link_create(progFd, targetFd, attachType, null), 'bpf_link_create', what);
}

/** Replaces the program of a link in place (there is no moment without one). */
export function linkUpdate(linkFd: number, progFd: number, what: string): void {
  check(bind().link_update(linkFd, progFd, null), 'bpf_link_update', what);
}
