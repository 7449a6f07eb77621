// The libc socket and epoll calls the proxy makes through koffi (Node cannot set IP_TRANSPARENT, keep
// SYNs, or run its own epoll loop), their constants, and errno names: one binding of each for
// sockets.ts (the transparent listeners, also used by the agent and the DNS proxy), epoll-*.ts (the
// workers' own loop) and the benches. Bound on first use: an agent that never proxies never loads them.
import { constants as osConstants } from 'node:os';
import koffi from 'koffi';

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_LINGER = 13;
export const SO_REUSEPORT = 15;
export const SOL_IP = 0;
export const SOL_TCP = 6;
export const TCP_NODELAY = 1;
export const EINTR = 4;
export const EAGAIN = 11;
export const ETIMEDOUT = 110;
export const EINPROGRESS = 115;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_MORE = 0x8000;

const ERRNO_NAMES = new Map(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));
/** EAGAIN for 11: what an error message shows. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

type Fn = (...args: unknown[]) => number;
export interface Libc {
  socket: Fn;
  bind: Fn;
  listen: Fn;
  accept4: Fn;
  connect: Fn;
  close: Fn;
  shutdown: Fn;
  read: Fn;
  send: Fn;
  setsockopt: Fn;
  getsockopt: Fn;
  getsockname: Fn;
  getpeername: Fn;
  inetNtop: (...args: unknown[]) => string | null;
  epollCreate: Fn;
  epollCtl: Fn;
  epollWait: Fn;
}

let bound: Libc | undefined;

/** The calls, bound once. void *: a Buffer or typed array is passed as a pointer to its memory,
 *  nothing copied either way. */
export function libc(): Libc {
  if (bound) return bound;
  const c = koffi.load('libc.so.6');
  const f = (sig: string) => c.func(sig) as Fn;
  bound = {
    socket: f('int socket(int domain, int type, int protocol)'),
    bind: f('int bind(int fd, void *addr, uint32_t len)'),
    listen: f('int listen(int fd, int backlog)'),
    accept4: f('int accept4(int fd, void *addr, void *len, int flags)'),
    connect: f('int connect(int fd, void *addr, uint32_t len)'),
    close: f('int close(int fd)'),
    shutdown: f('int shutdown(int fd, int how)'),
    read: f('long read(int fd, void *buf, size_t len)'),
    send: f('long send(int fd, void *buf, size_t len, int flags)'),
    setsockopt: f('int setsockopt(int fd, int level, int name, void *value, uint32_t len)'),
    getsockopt: f('int getsockopt(int fd, int level, int name, void *value, void *len)'),
    getsockname: f('int getsockname(int fd, void *addr, void *len)'),
    getpeername: f('int getpeername(int fd, void *addr, void *len)'),
    inetNtop: c.func('const char *inet_ntop(int af, void *src, void *dst, uint32_t size)') as Libc['inetNtop'],
    epollCreate: f('int epoll_create1(int flags)'),
    epollCtl: f('int epoll_ctl(int epfd, int op, int fd, void *event)'),
    epollWait: f('int epoll_wait(int epfd, void *events, int max, int timeout)'),
  };
  return bound;
}
