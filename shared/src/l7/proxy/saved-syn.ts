// Both ends of an accepted connection in one system call: the listener keeps each connection's SYN
// (TCP_SAVE_SYN, set by sockets.ts's transparentListener when asked) and getsockopt(TCP_SAVED_SYN)
// hands it over once (the kernel frees it then). The datapath assigns a diverted SYN to the listener
// unchanged (bpf_sk_assign), so its destination is the connection's original destination, as
// getsockname would say, and its source the client, as getpeername would. Those two cost two system
// calls and two address objects per accepted connection (profile of a worker at one request per
// connection: 6 % of its CPU; a system call costs 2-3 µs on the 2-vCPU benchmark VM). When there is no
// saved SYN (a connection accepted through a SYN cookie, an option a header we do not read) the caller
// asks the names as before.
import koffi from 'koffi';
import { formatIp } from '../../net/index.ts';
import type { Address } from './uv.ts';

const SOL_TCP = 6;
const TCP_SAVED_SYN = 28;

type Fn = (...args: unknown[]) => number;
let getsockopt: Fn | undefined;

/** IPv4 or IPv6 header (at most 60 or 40 bytes) and TCP header (at most 60). */
const syn = Buffer.alloc(128);
const len = [0];

/** Address texts of the IPv4 addresses seen (the same few clients and servers over and over): no new
 *  string per connection, and the same string object hashes once in the maps it is looked up in. */
const v4Names = new Map<number, string>();
const MAX_V4_NAMES = 4096;

function v4Name(at: number): string {
  const n = syn.readUInt32BE(at);
  let s = v4Names.get(n);
  if (s === undefined) {
    if (v4Names.size >= MAX_V4_NAMES) v4Names.clear();
    s = `${syn[at]}.${syn[at + 1]}.${syn[at + 2]}.${syn[at + 3]}`;
    v4Names.set(n, s);
  }
  return s;
}

/**
 * Fills `local` (the original destination) and `remote` (the client) from the saved SYN of accepted
 * socket `fd`, as getsockname and getpeername would. False when there is none or it is not a plain
 * TCP-over-IP header (the caller then asks the names).
 */
export function readSavedSyn(fd: number, local: Address, remote: Address): boolean {
  getsockopt ??= koffi
    .load('libc.so.6')
    .func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *val, _Inout_ uint32_t *len)') as Fn;
  len[0] = syn.length;
  if (getsockopt(fd, SOL_TCP, TCP_SAVED_SYN, syn, len) !== 0) return false;
  const n = len[0];
  const version = n > 0 ? syn[0] >> 4 : 0;
  if (version === 4) {
    const ihl = (syn[0] & 15) * 4;
    if (ihl < 20 || syn[9] !== 6 /* TCP */ || n < ihl + 4) return false;
    remote.address = v4Name(12);
    local.address = v4Name(16);
    remote.family = local.family = 'IPv4';
    remote.port = syn.readUInt16BE(ihl);
    local.port = syn.readUInt16BE(ihl + 2);
    return true;
  }
  // IPv6 with TCP as the next header (no extension headers), and not an address libuv writes with an
  // IPv4 part (::ffff:a.b.c.d, ::a.b.c.d): formatIp writes the others as libuv does.
  if (version !== 6 || syn[6] !== 6 || n < 44 || v4Embedded(8) || v4Embedded(24)) return false;
  remote.address = formatIp(syn.subarray(8, 24));
  local.address = formatIp(syn.subarray(24, 40));
  remote.family = local.family = 'IPv6';
  remote.port = syn.readUInt16BE(40);
  local.port = syn.readUInt16BE(42);
  return true;
}

/** The IPv6 address at syn[at] starts with 80 zero bits. */
function v4Embedded(at: number): boolean {
  for (let i = at; i < at + 10; i++) if (syn[i] !== 0) return false;
  return true;
}
