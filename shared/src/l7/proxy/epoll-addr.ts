// Socket addresses for the epoll I/O layer (epoll-socket.ts, epoll-listener.ts): sockaddr bytes from
// ip:port for connect and bind, and an fd's local or peer address as text through libc's inet_ntop
// (the same text libuv gives RawSockets: the worker compares it with '127.0.0.1' and '::1'). Accepted
// IPv4 connections of the transparent listener take theirs from the saved SYN instead (sockets.ts).
import { Buffer } from 'node:buffer';
import { ipBytes } from '../../net/index.ts';
import { AF_INET, AF_INET6, libc } from './libc.ts';

const { getsockname, getpeername, inetNtop } = libc();
const sa = Buffer.alloc(28);
const saLen = new Uint32Array(1);
const text = Buffer.alloc(64);

export interface SockAddress {
  address: string;
  port: number;
  family: 'IPv4' | 'IPv6';
}

/** sockaddr_in / sockaddr_in6 of ip:port. */
export function sockaddr(ip: string, port: number): Buffer {
  const v6 = ip.includes(':');
  const out = Buffer.alloc(v6 ? 28 : 16);
  out.writeUInt16LE(v6 ? AF_INET6 : AF_INET, 0);
  out.writeUInt16BE(port, 2);
  ipBytes(ip).copy(out, v6 ? 8 : 4);
  return out;
}

/** fd's local (peer false) or peer address; undefined when the socket has none (e.g. not connected). */
export function sockaddrAddress(fd: number, peer: boolean): SockAddress | undefined {
  saLen[0] = sa.length;
  if ((peer ? getpeername : getsockname)(fd, sa, saLen) < 0) return undefined;
  const family = sa.readUInt16LE(0);
  if (family !== AF_INET && family !== AF_INET6) return undefined;
  const v6 = family === AF_INET6;
  if (inetNtop(family, sa.subarray(v6 ? 8 : 4), text, text.length) === null) return undefined;
  return { address: text.toString('latin1', 0, text.indexOf(0)), port: sa.readUInt16BE(2), family: v6 ? 'IPv6' : 'IPv4' };
}
