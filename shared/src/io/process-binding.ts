// Node's internal bindings as reached through process.binding (documented-deprecated, DEP0111, a
// warning only with --pending-deprecation; untyped): the three this code uses and the fields it reads,
// typed in one place. The L7 proxy's raw sockets (l7/proxy/uv.ts: tcp_wrap, stream_wrap) and
// membrane-cni's pipe exchange (cni/src/pipe.ts: pipe_wrap, stream_wrap) use them. Node built-ins
// only, no runtime cost: the CNI executable bundles this file. The handle and request shapes are the
// callers' (each types what it uses); a binding another Node lacks throws, as process.binding does.

/** stream_wrap: write/shutdown requests and the shared state array the stream callbacks read. */
export interface StreamWrapBinding<Req = unknown> {
  WriteWrap: new () => Req;
  ShutdownWrap: new () => Req;
  streamBaseState: Int32Array;
  kReadBytesOrError: number;
  kArrayBufferOffset: number;
  kBytesWritten: number;
  kLastWriteWasAsync: number;
}

/** tcp_wrap: TCP handles and their connect requests. */
export interface TcpWrapBinding<Handle = unknown, ConnectReq = unknown> {
  TCP: new (type: number) => Handle;
  TCPConnectWrap: new () => ConnectReq;
  constants: { SERVER: number; SOCKET: number };
}

/** pipe_wrap: unix socket handles and their connect requests. */
export interface PipeWrapBinding<Handle = unknown, ConnectReq = unknown> {
  Pipe: new (type: number) => Handle;
  PipeConnectWrap: new () => ConnectReq;
  constants: { SOCKET: number };
}

interface Bindings {
  stream_wrap: StreamWrapBinding;
  tcp_wrap: TcpWrapBinding;
  pipe_wrap: PipeWrapBinding;
}

/** process.binding(name), typed as far as this code relies on it. Callers that may run on a Node
 *  without it check what they got (cni/src/pipe.ts does). */
export function processBinding<K extends keyof Bindings>(name: K): Bindings[K] {
  return (process as unknown as { binding(name: K): Bindings[K] }).binding(name);
}
