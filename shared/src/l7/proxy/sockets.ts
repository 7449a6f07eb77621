// Transparent listening sockets for the proxy (koffi -> libc; Node cannot set IP_TRANSPARENT). The
// datapath hands a diverted connection's SYN to this socket with bpf_sk_assign, so the listener
// accepts connections to any address: each accepted socket's local address is the connection's
// original destination. Bound to loopback, so nothing reaches it except what the datapath assigns
// (and the node's own processes, which the worker refuses). SO_REUSEPORT lets several workers share
// one port (the kernel spreads connections over them) and a new worker start before an old one leaves.

import { constants as osConstants } from 'node:os';
import koffi from 'koffi';
import {
  AF_INET,
  AF_INET6,
  errnoName,
  libc,
  MSG_DONTWAIT,
  MSG_MORE,
  MSG_NOSIGNAL,
  SO_ERROR,
  SO_LINGER,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_IP,
  SOL_SOCKET,
  SOL_TCP,
  TCP_NODELAY,
} from './libc.ts';
import { ipBytes } from '../../net/index.ts';

const TCP_SAVE_SYN = 27;
const TCP_SAVED_SYN = 28;
const IP_TRANSPARENT = 19;
const SOL_IPV6 = 41;
const IPV6_V6ONLY = 26;
const IPV6_TRANSPARENT = 75;

/** setsockopt's int 1 (the calls take a pointer to it). */
const ONE = new Int32Array([1]);

export class SocketError extends Error {
  constructor(
    readonly op: string,
    readonly errno: number,
    readonly target: string,
  ) {
    super(`${op} ${target}: ${errnoName(errno)}`);
    this.name = 'SocketError';
  }
}

/**
 * A listening transparent TCP socket on 127.0.0.1:port or [::1]:port, with TCP_NODELAY (which
 * accepted sockets inherit) and, IPv4, TCP_SAVE_SYN (synAddresses), as a file descriptor (the worker accepts on it with raw-listener.ts's RawListener). Throws SocketError (e.g. EADDRINUSE, EADDRNOTAVAIL without IPv6).
 */
export function transparentListener(family: 4 | 6, port: number, opts: { backlog?: number; reusePort?: boolean } = {}): number {
  const ip = family === 4 ? '127.0.0.1' : '::1';
  const fd = boundTransparentSocket(SOCK_STREAM, ip, port, opts.reusePort ?? true);
  // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
  if (libc().setsockopt(fd, SOL_TCP, TCP_NODELAY, ONE, 4) < 0) throw closeAfterError(fd, 'setsockopt TCP_NODELAY', ip, port);
  // IPv4: the kernel keeps each connection's SYN (its IP and TCP headers) for synAddresses, one system
  // call for both ends' addresses where getsockname and getpeername took two. Not IPv6 (synAddresses
  // reads IPv4 only: an IPv6 address as a string is libuv's to format, and a SYN kept but never read
  // would stay allocated for the connection's life).
  if (family === 4 && libc().setsockopt(fd, SOL_TCP, TCP_SAVE_SYN, ONE, 4) < 0)
    throw closeAfterError(fd, 'setsockopt TCP_SAVE_SYN', ip, port);
  if (libc().listen(fd, opts.backlog ?? 4096) < 0) throw closeAfterError(fd, 'listen', ip, port);
  return fd;
}

/** sockaddr_in / sockaddr_in6 of any address. */
function sockaddrOf(ip: string, port: number): Buffer {
  const v6 = ip.includes(':');
  const sa = Buffer.alloc(v6 ? 28 : 16);
  sa.writeUInt16LE(v6 ? AF_INET6 : AF_INET, 0);
  sa.writeUInt16BE(port, 2);
  ipBytes(ip).copy(sa, v6 ? 8 : 4);
  return sa;
}

/**
 * A transparent UDP socket bound to `ip:port`, as a file descriptor for dgram's bind({ fd }). The DNS
 * proxy receives diverted datagrams on one bound to loopback (the datapath assigns them to it), and
 * answers a client from one bound to the address the client asked (IP_TRANSPARENT lets it bind an
 * address that is not the node's; SO_REUSEADDR lets several exchanges and agents share it). Node's
 * dgram cannot set IP_TRANSPARENT itself. Throws SocketError.
 */
export function transparentUdpSocket(ip: string, port: number, opts: { reusePort?: boolean } = {}): number {
  return boundTransparentSocket(SOCK_DGRAM, ip, port, opts.reusePort === true);
}

/** A transparent socket of `type` bound to `ip:port` (IPv6: v6 only), SO_REUSEADDR and, when asked,
 *  SO_REUSEPORT set; closed again when any step fails (SocketError naming the step and address). */
function boundTransparentSocket(type: number, ip: string, port: number, reusePort: boolean): number {
  const c = libc();
  const v6 = ip.includes(':');
  const fd = c.socket(v6 ? AF_INET6 : AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new SocketError('socket', koffi.errno(), where(ip, port));
  const opt = (level: number, name: number, what: string) => {
    if (c.setsockopt(fd, level, name, ONE, 4) < 0) throw closeAfterError(fd, `setsockopt ${what}`, ip, port);
  };
  opt(SOL_SOCKET, SO_REUSEADDR, 'SO_REUSEADDR');
  if (reusePort) opt(SOL_SOCKET, SO_REUSEPORT, 'SO_REUSEPORT');
  if (v6) {
    opt(SOL_IPV6, IPV6_V6ONLY, 'IPV6_V6ONLY');
    opt(SOL_IPV6, IPV6_TRANSPARENT, 'IPV6_TRANSPARENT');
  } else opt(SOL_IP, IP_TRANSPARENT, 'IP_TRANSPARENT');
  const sa = sockaddrOf(ip, port);
  if (c.bind(fd, sa, sa.length) < 0) throw closeAfterError(fd, 'bind', ip, port);
  return fd;
}

/** The error of a failed `step` on fd (errno read first), with fd closed. */
function closeAfterError(fd: number, step: string, ip: string, port: number): SocketError {
  const e = koffi.errno();
  libc().close(fd);
  return new SocketError(step, e, where(ip, port));
}

const where = (ip: string, port: number) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

/**
 * Sends the FIN of a connected socket whose written bytes are all with the kernel, now: Node's end()
 * sends it a turn of the event loop later, and a client that closes as soon as it has read the last
 * response (wrk, curl) then often closes first and keeps the TIME_WAIT. Node's own end() still
 * follows (a second shutdown is harmless). False when Node has no fd or bytes are still queued.
 */
export function shutdownWriteNow(s: { _handle?: { fd?: number } | null; writableLength: number }): boolean {
  const fd = s._handle?.fd;
  if (typeof fd !== 'number' || fd < 0 || s.writableLength > 0) return false;
  return libc().shutdown(fd, 1 /* SHUT_WR */) === 0;
}

const soError = new Int32Array(1);
const soErrorLen = new Uint32Array(1);

/**
 * The error the kernel holds for a connected socket and no call returned yet (SO_ERROR, cleared by
 * reading it), as a positive errno; 0 for none or no fd. libuv reports a peer's reset that follows
 * data as an end of stream (a hang-up after a partial read is taken for EOF without another read),
 * so raw-socket.ts asks here before it takes an end for one (a reset must not end a response that
 * its close delimits, nor pass a cut one for whole).
 */
export function pendingSocketError(s: { _handle?: { fd?: number } | null }): number {
  const fd = s._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return 0;
  soErrorLen[0] = 4;
  return libc().getsockopt(fd, SOL_SOCKET, SO_ERROR, soError, soErrorLen) === 0 ? soError[0] : 0;
}

/** struct linger { l_onoff 1, l_linger 0 }: close() resets the connection. */
const LINGER_RESET = new Int32Array([1, 0]);

/**
 * Makes the close of a connected socket a reset (SO_LINGER with a zero timeout): the peer gets an RST
 * instead of a FIN, and nothing is left of the connection in the node's stack (no FIN_WAIT, no
 * TIME_WAIT). For connections refused before anything was read (worker.ts refuse) and responses cut
 * short (pair.ts cut). False when the socket has no fd or the option was refused (the close is then an
 * ordinary one).
 */
export function resetOnClose(s: unknown): boolean {
  const fd = (s as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 && libc().setsockopt(fd, SOL_SOCKET, SO_LINGER, LINGER_RESET, 8) === 0;
}

/** send() flags of sendHeld: never block, no SIGPIPE (an error comes back as -1), more to come. */
const MSG_HELD = MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE;

/**
 * Writes a connection's last bytes with MSG_MORE, on a connected socket with nothing queued in Node:
 * the kernel holds a partial segment (as TCP_CORK does, for this write only, at most 200 ms) and the
 * FIN of the shutdown or close that follows goes out in the same segment, so the client has the FIN
 * with the response's last byte and cannot close first. One system call where a TCP_CORK setsockopt
 * and Node's write took two (one request per connection: one of the worker's twelve per connection).
 * Returns the bytes the kernel took (the caller writes the rest through Node, after them), or -1 when
 * it took none or Node has no fd or bytes are still queued there (nothing was written: write it all
 * through Node, which also reports an error the socket has). The bytes do not count in the socket's
 * bytesWritten (the idle sweep's counter; the connection ends right after them).
 */
export function sendHeld(s: { _handle?: { fd?: number } | null; writableLength: number }, b: Buffer): number {
  const fd = s._handle?.fd;
  if (typeof fd !== 'number' || fd < 0 || s.writableLength > 0) return -1;
  const n = libc().send(fd, b, b.length, MSG_HELD);
  return n > 0 ? n : -1;
}

/** The saved SYN's headers (IPv4: at most 60 + 60 bytes; IPv6 without extension headers: 40 + 60). */
const syn = Buffer.alloc(128);
const synLen = new Uint32Array(1);
/** IPv4 addresses as strings by their 32-bit value: a connection's are made once, not per connection
 *  (and a string used again keeps its hash for the policy's lookups). Bounded: cleared when full. */
const v4Names = new Map<number, string>();

/** What synAddresses fills: the connection's original destination (local) and its client (remote). */
export interface SynAddresses {
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
}

/**
 * An accepted IPv4 connection's addresses and ports from its SYN as the kernel saved it (a listener
 * of transparentListener's has TCP_SAVE_SYN; reading it frees it): nothing is rewritten on the way to
 * the proxy, so the SYN's destination is the socket's local address and its source the peer's. One
 * getsockopt instead of getsockname and getpeername, each of which Node answers with a new object's
 * address string made by inet_ntop (together ~4.5 % of a worker's CPU at one request per connection).
 * False (nothing filled) when there is no saved SYN (a listener without the option, a connection
 * completed from a SYN cookie) or it is not IPv4 over TCP: the caller asks the socket instead.
 */
export function synAddresses(fd: number, out: SynAddresses): boolean {
  synLen[0] = syn.length;
  if (libc().getsockopt(fd, SOL_TCP, TCP_SAVED_SYN, syn, synLen) !== 0) return false;
  const len = synLen[0];
  if (len < 40 || syn[0] >> 4 !== 4 || syn[9] !== 6) return false;
  const tcp = (syn[0] & 0xf) * 4;
  if (tcp < 20 || tcp + 4 > len) return false;
  out.remoteAddress = v4Name(syn.readUInt32BE(12));
  out.localAddress = v4Name(syn.readUInt32BE(16));
  out.remotePort = (syn[tcp] << 8) | syn[tcp + 1];
  out.localPort = (syn[tcp + 2] << 8) | syn[tcp + 3];
  return true;
}

function v4Name(n: number): string {
  let name = v4Names.get(n);
  if (name === undefined) {
    if (v4Names.size >= 4096) v4Names.clear();
    name = `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
    v4Names.set(n, name);
  }
  return name;
}

export function closeFd(fd: number): void {
  libc().close(fd);
}

/** A port free on both loopback addresses, from a range clear of the kernel's ephemeral ports. */
export function pickProxyPort(isFree: (port: number) => boolean, from = 10000, to = 30000): number {
  for (let i = 0; i < 200; i++) {
    const port = from + Math.floor(Math.random() * (to - from));
    if (isFree(port)) return port;
  }
  throw new Error(`no free port for the L7 proxy between ${from} and ${to}`);
}

/**
 * Nobody listens on this port of either loopback address: a socket bound there (never listening)
 * without SO_REUSEPORT, so another agent's proxy listener (also root, also SO_REUSEPORT) refuses it
 * rather than letting us join its group; with SO_REUSEADDR, so only a listener (or a socket bound
 * without it) refuses it, as it would refuse the worker's listener. Never listen(): a listener here,
 * even for a moment, is one the datapath finds (bpf_sk_lookup_tcp on the loopback tuple, the path of
 * unregistered listeners) and hands a diverted SYN to, which the probe's close() then resets; and a
 * worker binding the port at that moment would be refused. A bound socket accepts nothing.
 */
export function portFree(port: number): boolean {
  const c = libc();
  const fds: number[] = [];
  try {
    fds.push(boundTransparentSocket(SOCK_STREAM, '127.0.0.1', port, false));
    try {
      fds.push(boundTransparentSocket(SOCK_STREAM, '::1', port, false));
    } catch (e) {
      const errno = (e as SocketError).errno;
      if (errno !== osConstants.errno.EADDRNOTAVAIL && errno !== osConstants.errno.EAFNOSUPPORT) return false; // no IPv6 is fine
    }
    return true;
  } catch {
    return false;
  } finally {
    for (const fd of fds) c.close(fd);
  }
}
