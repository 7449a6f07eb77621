// Which I/O layer the proxy worker's connections use: Node's libuv TCP handles (raw-socket.ts,
// raw-listener.ts; the default) or the worker's own koffi epoll loop (epoll-*.ts) with
// MEMBRANE_L7_WORKER_IO=epoll, an experiment's knob (issue 14: libuv's callback per read costs a
// keep-alive request CPU; epoll-loop.ts says how much). Read once, at start: the agent's environment
// reaches its workers.
import type { UpstreamSocket } from '../http/socket.ts';
import { EpollListener } from './epoll-listener.ts';
import { EpollSocket } from './epoll-socket.ts';
import { RawListener } from './raw-listener.ts';
import { RawSocket } from './raw-socket.ts';

/** What the worker uses of an accepted connection, either layer's. */
export interface ProxySocket extends UpstreamSocket {
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly localAddress?: string;
  readonly localPort?: number;
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  readonly remoteFamily?: string;
  start(): void;
}

export interface WorkerIo {
  readonly name: 'libuv' | 'epoll';
  /** Accepts on a listening fd (sockets.ts transparentListener's). */
  listen(
    fd: number,
    backlog: number,
    onConnection: (s: ProxySocket) => void,
    onError: (errno: number) => void,
    savedSyn: boolean,
  ): { close(): void };
  /** A plain listener on ip:port (port 0: any), for tests. */
  bind(ip: string, port: number, onConnection: (s: ProxySocket) => void): { close(): void; readonly port: number };
  connect(ip: string, port: number, timeoutMs: number): ProxySocket;
}

const libuv: WorkerIo = {
  name: 'libuv',
  listen: (fd, backlog, onConnection, onError, savedSyn) => RawListener.fromFd(fd, backlog, onConnection, onError, savedSyn),
  bind: (ip, port, onConnection) => RawListener.bind(ip, port, onConnection),
  connect: (ip, port, timeoutMs) => RawSocket.connect(ip, port, timeoutMs),
};

const epoll: WorkerIo = {
  name: 'epoll',
  listen: (fd, backlog, onConnection, onError, savedSyn) => EpollListener.fromFd(fd, backlog, onConnection, onError, savedSyn),
  bind: (ip, port, onConnection) => EpollListener.bind(ip, port, onConnection),
  connect: (ip, port, timeoutMs) => EpollSocket.connect(ip, port, timeoutMs),
};

export const workerIo: WorkerIo = process.env.MEMBRANE_L7_WORKER_IO === 'epoll' ? epoll : libuv;
