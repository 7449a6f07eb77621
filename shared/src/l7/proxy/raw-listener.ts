// A listening TCP socket as a libuv handle (uv.ts) whose accepted connections come as RawSockets
// (raw-socket.ts says why not net.Server/net.Socket).
import { RawSocket } from './raw-socket.ts';
import { type Address, type TcpHandle, tcpWrap } from './uv.ts';

/** A listening socket (its fd, e.g. sockets.ts's transparentListener) whose connections come as RawSockets. */
export class RawListener {
  private readonly h: TcpHandle;

  /** `savedSyn`: the socket keeps each connection's SYN (TCP_SAVE_SYN), the source of its addresses. */
  constructor(h: TcpHandle, onConnection: (s: RawSocket) => void, onError: (errno: number) => void, savedSyn = false) {
    this.h = h;
    h.onconnection = (err, client) => {
      if (err || !client) onError(err);
      else onConnection(new RawSocket(client, true, savedSyn));
    };
  }

  /** A listening socket's fd (sockets.ts transparentListener's: it keeps SYNs, `savedSyn`). */
  static fromFd(
    fd: number,
    backlog: number,
    onConnection: (s: RawSocket) => void,
    onError: (errno: number) => void,
    savedSyn = false,
  ): RawListener {
    const h = new tcpWrap.TCP(tcpWrap.constants.SERVER);
    let err = h.open(fd);
    if (!err) err = h.listen(backlog);
    if (err) throw new Error(`cannot listen on fd ${fd}: errno ${err}`);
    return new RawListener(h, onConnection, onError, savedSyn);
  }

  /** A plain listener on ip:port (port 0: any), for tests. */
  static bind(ip: string, port: number, onConnection: (s: RawSocket) => void): RawListener {
    const h = new tcpWrap.TCP(tcpWrap.constants.SERVER);
    let err = h.bind(ip, port);
    if (!err) err = h.listen(511);
    if (err) throw new Error(`cannot listen on ${ip}:${port}: errno ${err}`);
    return new RawListener(h, onConnection, () => undefined);
  }

  get port(): number {
    const a: Address = {};
    this.h.getsockname(a);
    return a.port ?? 0;
  }

  close(): void {
    this.h.close();
  }
}
