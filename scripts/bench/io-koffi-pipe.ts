// A TCP byte pipe whose every system call goes through koffi (libc's epoll_wait, accept4, read, write)
// instead of libuv: one blocking epoll loop on the main thread, no JavaScript callback per read, no
// Node stream or handle objects. bench:l7:floor runs it (FLOOR_KOFFI=1) next to l7-pipe.ts, the same
// pipe on the proxy workers' libuv handles, to measure what libuv's per-read callback and Node's
// stream_base cost a proxy per request: the question is whether a worker built on such a loop could
// spend less CPU per request than one on libuv. Not product code: no IPv6, no timeouts, and the loop
// never returns to Node's event loop (SIGTERM ends it).
// Usage: node --import tsx scripts/bench/io-koffi-pipe.ts LISTEN_IP LISTEN_PORT DST_IP DST_PORT
import koffi from 'koffi';
import {
  AF_INET,
  EAGAIN,
  EINPROGRESS,
  libc,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SO_REUSEADDR,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
  SOL_TCP,
  TCP_NODELAY,
} from '../../shared/src/l7/proxy/libc.ts';
import { sockaddr } from '../../shared/src/l7/proxy/epoll-addr.ts';

const [listenIp, listenPort, dstIp, dstPort] = process.argv.slice(2);

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_MOD = 3;
const EPOLLIN = 0x1;
const EPOLLOUT = 0x4;
const IPPROTO_TCP = SOL_TCP;
const { socket, setsockopt, bind, connect, listen, accept4, close, read, epollCreate, epollCtl, epollWait } = libc();
const write = (fd: number, b: Buffer, n: number) => libc().send(fd, b, n, MSG_DONTWAIT | MSG_NOSIGNAL);

function check(what: string, r: number): number {
  if (r < 0) throw new Error(`${what}: errno ${koffi.errno()}`);
  return r;
}

const ep = check('epoll_create1', epollCreate(SOCK_CLOEXEC));
/** struct epoll_event is packed on x86-64: u32 events, u64 data (the fd in its low half). */
const ev = Buffer.alloc(12);
function watch(op: number, fd: number, events: number): void {
  ev.writeUInt32LE(events, 0);
  ev.writeUInt32LE(fd, 4);
  ev.writeUInt32LE(0, 8);
  check('epoll_ctl', epollCtl(ep, op, fd, ev));
}

const one = new Int32Array([1]);
const lfd = check('socket', socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, one, 4);
check('bind', bind(lfd, sockaddr(listenIp, Number(listenPort)), 16));
check('listen', listen(lfd, 4096));
watch(EPOLL_CTL_ADD, lfd, EPOLLIN);
const upstream = sockaddr(dstIp, Number(dstPort));

/** Each connection's other end, and bytes a write could not take yet (queued until EPOLLOUT). */
const peer = new Int32Array(1 << 20).fill(-1);
const pending = new Map<number, Buffer>();
const buf = Buffer.allocUnsafe(64 * 1024);

function shut(fd: number): void {
  const p = peer[fd];
  for (const x of [fd, p]) {
    if (x < 0) continue;
    peer[x] = -1;
    pending.delete(x);
    close(x);
  }
}

/** Writes bytes to fd, queueing what the kernel does not take (or all of it while fd is connecting). */
function send(fd: number, bytes: Buffer): void {
  const q = pending.get(fd);
  if (q) {
    pending.set(fd, Buffer.concat([q, bytes]));
    return;
  }
  const n = write(fd, bytes, bytes.length);
  if (n === bytes.length) return;
  if (n < 0 && koffi.errno() !== EAGAIN) {
    shut(fd);
    return;
  }
  pending.set(fd, Buffer.from(bytes.subarray(Math.max(n, 0))));
  watch(EPOLL_CTL_MOD, fd, EPOLLIN | EPOLLOUT);
}

function flush(fd: number): void {
  const q = pending.get(fd);
  if (!q) {
    watch(EPOLL_CTL_MOD, fd, EPOLLIN);
    return;
  }
  pending.delete(fd);
  send(fd, q);
  if (!pending.has(fd) && peer[fd] >= 0) watch(EPOLL_CTL_MOD, fd, EPOLLIN);
}

function acceptAll(): void {
  for (;;) {
    const cfd = accept4(lfd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) return;
    const ufd = check('socket', socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, one, 4);
    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, one, 4);
    peer[cfd] = ufd;
    peer[ufd] = cfd;
    if (connect(ufd, upstream, 16) < 0 && koffi.errno() !== EINPROGRESS) {
      shut(cfd);
      continue;
    }
    watch(EPOLL_CTL_ADD, cfd, EPOLLIN);
    // Until connected, writes queue (EAGAIN) and EPOLLOUT says when they can go.
    pending.set(ufd, Buffer.alloc(0));
    watch(EPOLL_CTL_ADD, ufd, EPOLLIN | EPOLLOUT);
  }
}

const MAX_EVENTS = 256;
const events = Buffer.alloc(12 * MAX_EVENTS);
process.stdout.write('listening\n');
for (;;) {
  const n = epollWait(ep, events, MAX_EVENTS, -1);
  for (let i = 0; i < n; i++) {
    const mask = events.readUInt32LE(12 * i);
    const fd = events.readUInt32LE(12 * i + 4);
    if (fd === lfd) {
      acceptAll();
      continue;
    }
    if (mask & EPOLLOUT && peer[fd] >= 0) flush(fd);
    if (!(mask & ~EPOLLOUT) || peer[fd] < 0) continue;
    const r = read(fd, buf, buf.length);
    if (r > 0) send(peer[fd], buf.subarray(0, r));
    else if (r === 0 || koffi.errno() !== EAGAIN) shut(fd);
  }
}
