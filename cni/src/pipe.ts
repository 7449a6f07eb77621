// One request/answer exchange over a unix socket on libuv's pipe handle directly (the pipe_wrap and
// stream_wrap bindings, what net.Socket is made of), without node:net: loading node:net and the
// node:stream it pulls in is ~6 ms of every plugin start here (an SEA that only requires node:net
// starts 6 ms later than an empty one; membrane-cni VERSION takes ~52 ms in all). The bindings are
// reached through process.binding (typed in shared/src/io/process-binding.ts), documented-deprecated (DEP0111, a warning only with
// --pending-deprecation) and used by the L7 proxy's raw sockets too; when they are not there
// (another Node), `pipeExchange` is undefined and the caller uses node:net.
import { type PipeWrapBinding, processBinding, type StreamWrapBinding } from '../../shared/src/io/process-binding.ts';

interface Req {
  oncomplete?: (status: number) => void;
  handle?: PipeHandle;
}
interface PipeHandle {
  onread: (ab: ArrayBuffer | undefined) => void;
  readStart(): number;
  writeUtf8String(req: Req, s: string): number;
  connect(req: Req, path: string): number;
  close(cb?: () => void): void;
}
interface Bindings {
  Pipe: new (type: number) => PipeHandle;
  PipeConnectWrap: new () => Req;
  SOCKET: number;
  WriteWrap: new () => Req;
  state: Int32Array;
  kReadBytesOrError: number;
  kArrayBufferOffset: number;
}

const UV_EOF = -4095;

/** A failed connect, read or write: the uv error's name as `code` (ENOENT, ECONNREFUSED, ...). */
export class PipeError extends Error {
  constructor(
    readonly errno: number,
    readonly code: string,
    what: string,
  ) {
    super(`${what}: ${code}`);
  }
}

function load(): Bindings | undefined {
  try {
    const pw = processBinding('pipe_wrap') as Partial<PipeWrapBinding<PipeHandle, Req>> | undefined;
    const sw = processBinding('stream_wrap') as Partial<StreamWrapBinding<Req>> | undefined;
    if (
      typeof pw?.Pipe !== 'function' ||
      typeof pw.PipeConnectWrap !== 'function' ||
      !(sw?.streamBaseState instanceof Int32Array)
    )
      return undefined;
    return {
      Pipe: pw.Pipe,
      PipeConnectWrap: pw.PipeConnectWrap,
      SOCKET: pw.constants!.SOCKET,
      WriteWrap: sw.WriteWrap!,
      state: sw.streamBaseState,
      kReadBytesOrError: sw.kReadBytesOrError!,
      kArrayBufferOffset: sw.kArrayBufferOffset!,
    };
  } catch {
    return undefined;
  }
}

const errName = (errno: number) => {
  try {
    return process.getBuiltinModule('node:util').getSystemErrorName(errno);
  } catch {
    return `errno ${errno}`;
  }
};

/** Sends `request` once connected; `onData` gets every chunk until it returns true (complete). */
export type Exchange = (
  socketPath: string,
  request: string,
  onData: (chunk: Buffer) => boolean,
  deadlineMs: number,
) => Promise<'complete' | 'eof'>;

function exchangeWith(b: Bindings): Exchange {
  return (socketPath, request, onData, deadlineMs) =>
    new Promise((resolve, reject) => {
      const h = new b.Pipe(b.SOCKET);
      // The requests in flight, held here until the exchange ends.
      const reqs: Req[] = [];
      let done = false;
      const finish = (e: Error | undefined, how: 'complete' | 'eof' = 'eof') => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        h.close();
        reqs.length = 0;
        if (e) reject(e);
        else resolve(how);
      };
      const timer = setTimeout(() => finish(new PipeError(0, 'ETIMEDOUT', `no answer within ${deadlineMs} ms`)), deadlineMs);
      h.onread = (ab) => {
        const n = b.state[b.kReadBytesOrError];
        if (n > 0) {
          if (onData(Buffer.from(ab!, b.state[b.kArrayBufferOffset], n))) finish(undefined, 'complete');
        } else if (n === UV_EOF) finish(undefined);
        else if (n < 0) finish(new PipeError(n, errName(n), 'read'));
      };
      const connect = new b.PipeConnectWrap();
      reqs.push(connect);
      connect.oncomplete = (status: number) => {
        if (done) return;
        if (status < 0) return finish(new PipeError(status, errName(status), 'connect'));
        // No half-close: node:http servers drop a request whose sender already sent FIN.
        const w = new b.WriteWrap();
        reqs.push(w);
        w.handle = h;
        w.oncomplete = (st: number) => {
          if (st < 0) finish(new PipeError(st, errName(st), 'write'));
        };
        const err = h.writeUtf8String(w, request);
        if (err < 0) return finish(new PipeError(err, errName(err), 'write'));
        const r = h.readStart();
        if (r < 0) finish(new PipeError(r, errName(r), 'read'));
      };
      const err = h.connect(connect, socketPath);
      if (err < 0) finish(new PipeError(err, errName(err), 'connect'));
    });
}

const bindings = load();

/** undefined when this Node has no such bindings (then node:net it is). */
export const pipeExchange: Exchange | undefined = bindings && exchangeWith(bindings);
