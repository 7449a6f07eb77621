// Node's libuv TCP handles without net.Socket: the bindings (tcp_wrap, stream_wrap: io/process-binding.ts)
// and the shapes of what they hand out, as the proxy workers use them
// (raw-socket.ts for connections, raw-listener.ts for listeners). Nothing here runs per request.
import type { RawSocket } from './raw-socket.ts';
import { processBinding, type StreamWrapBinding as BaseStreamWrap, type TcpWrapBinding } from '../../io/process-binding.ts';

export type StreamWrapBinding = BaseStreamWrap<Req>;
export interface Req {
  handle: TcpHandle;
  oncomplete: (this: Req, status: number) => void;
  owner?: RawSocket;
  buffer?: Buffer;
  bytes?: number;
}
export interface Address {
  address?: string;
  family?: string;
  port?: number;
}
export interface ConnectReq {
  oncomplete: (this: ConnectReq, status: number) => void;
  owner?: RawSocket;
  address?: string;
  port?: number;
}
export interface TcpHandle {
  fd: number;
  setNoDelay(on: boolean): number;
  connect(req: ConnectReq, ip: string, port: number): number;
  connect6(req: ConnectReq, ip: string, port: number): number;
  onread: (this: TcpHandle) => void;
  onconnection: (err: number, client: TcpHandle | undefined) => void;
  owner?: RawSocket;
  useUserBuffer(b: Buffer): void;
  readStart(): number;
  readStop(): number;
  writeBuffer(req: Req, b: Buffer): number;
  shutdown(req: Req): number;
  close(cb?: (this: TcpHandle) => void): void;
  getsockname(out: Address): number;
  getpeername(out: Address): number;
  open(fd: number): number;
  bind(ip: string, port: number): number;
  listen(backlog: number): number;
}

export const tcpWrap = processBinding('tcp_wrap') as TcpWrapBinding<TcpHandle, ConnectReq>;
export const sw = processBinding('stream_wrap') as StreamWrapBinding;
export const state = sw.streamBaseState;
export const UV_EOF = -4095;
export const UV_ETIMEDOUT = -110;
