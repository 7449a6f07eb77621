// NetlinkError and the mapping of kernel errnos / libnl NLE_* codes to a small stable vocabulary.
// Pure (no native code) so it can be unit tested and imported by callers that only inspect errors.

import { constants } from 'node:os';

export type NetlinkErrorCode = 'exists' | 'not_found' | 'busy' | 'invalid' | 'permission' | 'other';

const E = constants.errno;

/** Kernel errno (positive) -> code. */
export function codeFromErrno(errno: number): NetlinkErrorCode {
  switch (Math.abs(errno)) {
    case E.EEXIST:
    case E.EADDRINUSE:
      return 'exists';
    case E.ENOENT:
    case E.ESRCH: // IPv4 route delete of a missing route
    case E.ENODEV:
    case E.EADDRNOTAVAIL: // address delete of a missing address
      return 'not_found';
    case E.EBUSY:
    case E.EAGAIN:
      return 'busy';
    case E.EINVAL:
    case E.ERANGE:
    case E.EAFNOSUPPORT:
    case E.EOPNOTSUPP:
    case E.EPROTONOSUPPORT:
    case E.EMSGSIZE:
      return 'invalid';
    case E.EPERM:
    case E.EACCES:
      return 'permission';
    default:
      return 'other';
  }
}

// libnl's own codes (netlink/errno.h). Used when no kernel errno is known: the failure happened inside
// libnl (allocation, message building, parsing) or the kernel errno was folded before we saw it.
export const NLE = {
  FAILURE: 1,
  INTR: 2,
  BAD_SOCK: 3,
  AGAIN: 4,
  NOMEM: 5,
  EXIST: 6,
  INVAL: 7,
  RANGE: 8,
  MSGSIZE: 9,
  OPNOTSUPP: 10,
  AF_NOSUPPORT: 11,
  OBJ_NOTFOUND: 12,
  NOATTR: 13,
  MISSING_ATTR: 14,
  AF_MISMATCH: 15,
  SEQ_MISMATCH: 16,
  MSG_OVERFLOW: 17,
  MSG_TRUNC: 18,
  NOADDR: 19,
  SRCRT_NOSUPPORT: 20,
  MSG_TOOSHORT: 21,
  MSGTYPE_NOSUPPORT: 22,
  OBJ_MISMATCH: 23,
  NOCACHE: 24,
  BUSY: 25,
  PROTO_MISMATCH: 26,
  NOACCESS: 27,
  PERM: 28,
  PKTLOC_FILE: 29,
  PARSE_ERR: 30,
  NODEV: 31,
  IMMUTABLE: 32,
  DUMP_INTR: 33,
  ATTRSIZE: 34,
} as const;

/** libnl NLE_* (positive or negative) -> code. */
export function codeFromNle(nle: number): NetlinkErrorCode {
  switch (Math.abs(nle)) {
    case NLE.EXIST:
      return 'exists';
    case NLE.OBJ_NOTFOUND:
    case NLE.NODEV:
    case NLE.NOADDR:
      return 'not_found';
    case NLE.BUSY:
    case NLE.AGAIN:
    case NLE.DUMP_INTR:
      return 'busy';
    case NLE.INVAL:
    case NLE.RANGE:
    case NLE.MISSING_ATTR:
    case NLE.AF_MISMATCH:
    case NLE.AF_NOSUPPORT:
    case NLE.OPNOTSUPP:
    case NLE.PARSE_ERR:
    case NLE.MSGSIZE:
    case NLE.ATTRSIZE:
      return 'invalid';
    case NLE.PERM:
    case NLE.NOACCESS:
      return 'permission';
    default:
      return 'other';
  }
}

export interface NetlinkErrorInit {
  op: string;
  object: string;
  reason: string;
  /** Kernel errno (positive) when the kernel refused the request; 0 when the error is libnl's own. */
  errno?: number;
  /** libnl code (positive), when it came from a libnl call. */
  nle?: number;
  /** Kernel extended-ack message, e.g. "Nexthop has invalid gateway". */
  detail?: string;
  code?: NetlinkErrorCode;
}

/**
 * message: "<op> <object>: <reason>", e.g.
 *   "veth add mbr1a2b3c (peer eth0 in /var/run/netns/x): File exists"
 *   "route add 10.1.0.5/32 dev mbr1a2b3c: Network is unreachable"
 */
export class NetlinkError extends Error {
  override readonly name = 'NetlinkError';
  readonly op: string;
  readonly object: string;
  readonly code: NetlinkErrorCode;
  readonly errno: number;
  readonly nle: number;
  readonly detail?: string;
  constructor(i: NetlinkErrorInit) {
    super(`${i.op} ${i.object}: ${i.reason}${i.detail ? ` (${i.detail})` : ''}`);
    this.op = i.op;
    this.object = i.object;
    this.errno = i.errno ?? 0;
    this.nle = Math.abs(i.nle ?? 0);
    this.detail = i.detail;
    this.code = i.code ?? (this.errno ? codeFromErrno(this.errno) : codeFromNle(this.nle));
  }
}

export function isNotFound(e: unknown): boolean {
  return e instanceof NetlinkError && e.code === 'not_found';
}

/**
 * Parse the extended-ack TLVs that follow an NLMSG_ERROR payload (NLM_F_ACK_TLVS) and return the
 * NLMSGERR_ATTR_MSG string. `msg` is the whole netlink message (header included).
 */
export function extackMessage(msg: Uint8Array): string | undefined {
  const NLM_F_CAPPED = 0x100;
  const NLM_F_ACK_TLVS = 0x200;
  const NLMSGERR_ATTR_MSG = 1;
  const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  if (msg.byteLength < 36) return undefined;
  const len = Math.min(dv.getUint32(0, true), msg.byteLength);
  const flags = dv.getUint16(6, true);
  if (!(flags & NLM_F_ACK_TLVS)) return undefined;
  // nlmsghdr(16) + error(4) + the echoed request: only its header when capped, else all of it.
  const echoed = flags & NLM_F_CAPPED ? 16 : dv.getUint32(20, true);
  let off = 20 + ((echoed + 3) & ~3);
  while (off + 4 <= len) {
    const alen = dv.getUint16(off, true);
    const type = dv.getUint16(off + 2, true) & 0x3fff;
    if (alen < 4 || off + alen > len) break;
    if (type === NLMSGERR_ATTR_MSG) {
      const body = msg.subarray(off + 4, off + alen);
      const nul = body.indexOf(0);
      return Buffer.from(body.subarray(0, nul < 0 ? body.length : nul)).toString('utf8') || undefined;
    }
    off += (alen + 3) & ~3;
  }
  return undefined;
}
