// A listening TCP socket on the epoll loop (epoll-loop.ts) whose connections come as EpollSockets:
// RawListener's face (raw-listener.ts) on the epoll loop (io.ts: the default). On a readable event it
// accepts what is queued (accept4, nonblocking), up to a bound per event so that the connections
// already open get their turn too.
import { constants as osConstants } from 'node:os';
import koffi from 'koffi';
import { sockaddr, sockaddrAddress } from './epoll-addr.ts';
import { type EpollHandler, EPOLLIN, park, unwatch, watch, watchAgain } from './epoll-loop.ts';
import { EpollSocket } from './epoll-socket.ts';
import { EAGAIN, EINTR, errnoName, libc, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM } from './libc.ts';

const { accept4, listen, socket, bind, close } = libc();
/** Connections accepted per readable event at most (the rest on the next wait: level-triggered). */
const ACCEPT_BATCH = 64;
/** accept4 errors of the one connection (accept(2): a pending network error passed on; EPERM: a
 *  firewall refused it): on to the next. */
const E = osConstants.errno;
const CONNECTION_ERRNOS = new Set([
  EINTR,
  E.ECONNABORTED,
  E.EPROTO,
  E.ENOPROTOOPT,
  E.ENETDOWN,
  E.EHOSTUNREACH,
  E.EOPNOTSUPP,
  E.ENETUNREACH,
  E.EPERM,
]);
/** How long accepting stops on any other error: out of fds (EMFILE, ENFILE) or memory (ENOBUFS,
 *  ENOMEM). The listener stays readable while connections wait, so retrying at once would spin the
 *  loop at 100% CPU until an fd frees up; the waiting connections stay in the backlog meanwhile and
 *  are accepted once there is room (libuv accepts and closes them instead: its EMFILE trick). */
const ACCEPT_PAUSE_MS = 100;

export class EpollListener implements EpollHandler {
  gen = 0;
  private closed = false;
  /** Set while accepting pauses (ACCEPT_PAUSE_MS): out of the epoll set until it fires. */
  private pauseTimer?: NodeJS.Timeout;
  /** Paused since the last accepted connection: onError is told once per such run, not every 100 ms. */
  private failing = false;

  /** `savedSyn`: the socket keeps each connection's SYN (TCP_SAVE_SYN), the source of its addresses. */
  constructor(
    private readonly fd: number,
    private readonly onConnection: (s: EpollSocket) => void,
    private readonly onError: (errno: number) => void,
    private readonly savedSyn = false,
  ) {
    const err = watch(fd, EPOLLIN, this);
    if (err) throw new Error(`epoll_ctl listener ${fd}: ${errnoName(-err)}`);
  }

  /** A listening socket's fd (sockets.ts transparentListener's: it keeps IPv4 SYNs, `savedSyn`). */
  static fromFd(
    fd: number,
    backlog: number,
    onConnection: (s: EpollSocket) => void,
    onError: (errno: number) => void,
    savedSyn = false,
  ): EpollListener {
    if (listen(fd, backlog) < 0) throw new Error(`cannot listen on fd ${fd}: ${errnoName(koffi.errno())}`);
    return new EpollListener(fd, onConnection, onError, savedSyn);
  }

  /** A plain listener on ip:port (port 0: any), for tests. */
  static bind(ip: string, port: number, onConnection: (s: EpollSocket) => void): EpollListener {
    const sa = sockaddr(ip, port);
    const fd = socket(sa.readUInt16LE(0), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, sa, sa.length) < 0 || listen(fd, 511) < 0) {
      const e = koffi.errno();
      if (fd >= 0) close(fd);
      throw new Error(`cannot listen on ${ip}:${port}: ${errnoName(e)}`);
    }
    return new EpollListener(fd, onConnection, () => undefined);
  }

  get port(): number {
    return sockaddrAddress(this.fd, false)?.port ?? 0;
  }

  onEvents(): void {
    for (let i = 0; i < ACCEPT_BATCH && !this.closed && !this.pauseTimer; i++) {
      const fd = accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        this.failing = false;
        const s = new EpollSocket(fd, true, this.savedSyn);
        try {
          this.onConnection(s);
        } catch (e) {
          s.destroy(); // fail closed: nobody holds it
          throw e;
        }
      } else {
        const e = koffi.errno();
        if (e === EAGAIN) return;
        if (!CONNECTION_ERRNOS.has(e)) this.pause(e);
      }
    }
  }

  /** Stops accepting for ACCEPT_PAUSE_MS after errno `e`. */
  private pause(e: number): void {
    if (!this.failing) this.onError(-e);
    this.failing = true;
    park(this.fd);
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      if (this.closed) return;
      const err = watchAgain(this.fd, EPOLLIN, this);
      if (err) this.pause(-err);
    }, ACCEPT_PAUSE_MS);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.pauseTimer);
    unwatch(this.fd, this);
    close(this.fd);
  }
}
