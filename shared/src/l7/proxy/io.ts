// Which I/O layer the proxy worker's connections use: the worker's own koffi epoll loop (epoll-*.ts; the
// default) or Node's libuv TCP handles (raw-socket.ts, raw-listener.ts) with MEMBRANE_L7_WORKER_IO=libuv.
// Why epoll: libuv's callback per read costs a request CPU (epoll-loop.ts says how much); a quiet
// same-run A/B (bench:l7:ab, 6 rounds, load 1.7-3.2) put the epoll worker's CPU per request at 0.88x /
// 0.83x libuv's at 50 connections (keep-alive / one request per connection) and 1.09x / 0.85x at 10,
// and bench:l7 met every goal of issue 14 with it (README). libuv stays for comparison (bench:l7:ab)
// and as a way out should the epoll loop misbehave on some node. Read once, at start: the agent's
// environment reaches its workers.
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

export const workerIo: WorkerIo = process.env.MEMBRANE_L7_WORKER_IO === 'libuv' ? libuv : epoll;
