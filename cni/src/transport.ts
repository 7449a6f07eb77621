// AgentClient with its transport swapped for plain HTTP/1.1 over the unix socket, on libuv's pipe
// handle (pipe.ts; node:net where that is missing). Same methods, paths, bodies and errors as
// shared/src/api/client.ts; the difference is start-up cost: node:http (with its agent, parser and
// outgoing-message machinery) costs ~10 ms per plugin start here, node:net with node:stream ~6 ms.
// The CNI bundle replaces node:http with an empty stub (scripts/build-cni.mjs), so only this path runs.
// An answer with a Content-Length is complete when that many body bytes arrived: the plugin does not
// wait for the agent's FIN, which the agent's event loop sends only after the work it does right after
// answering (the reaper removing a deleted endpoint's veth took 20-40 ms of a DEL that way).
import {
  AgentClient,
  AgentUnreachableError,
  decodeApiAnswer,
  describeConnectError,
  type ClientOptions,
  type RequestOptions,
} from '../../shared/src/api/client.ts';
import { pipeExchange, type Exchange } from './pipe.ts';

export class CniAgentClient extends AgentClient {
  private readonly deadlineMs: number;
  private readonly useNet: boolean;

  /** `transport: 'net'`: node:net even where the pipe bindings exist (tests run both). */
  constructor(opts: ClientOptions & { transport?: 'pipe' | 'net' } = {}) {
    super(opts);
    this.deadlineMs = opts.timeoutMs ?? 30_000;
    this.useNet = opts.transport === 'net';
  }

  override request<T>(method: string, path: string, body?: unknown, opts: RequestOptions = {}): Promise<T> {
    const payload = body === undefined ? '' : opts.contentType ? String(body) : JSON.stringify(body);
    const deadlineMs = opts.timeoutMs ?? this.deadlineMs;
    const head =
      `${method} ${path} HTTP/1.1\r\nHost: membrane-agent\r\nConnection: close\r\n` +
      (payload
        ? `Content-Type: ${opts.contentType ?? 'application/json'}\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n`
        : '') +
      '\r\n';
    const chunks: Buffer[] = [];
    let got = 0;
    let need = -1; // bytes of a complete answer, once its head says (Content-Length)
    const onData = (c: Buffer): boolean => {
      chunks.push(c);
      got += c.length;
      if (need < 0) need = completeLength(chunks.length === 1 ? c : Buffer.concat(chunks));
      return need >= 0 && got >= need;
    };
    const exchange = this.useNet ? netExchange : (pipeExchange ?? netExchange);
    return exchange(this.socketPath, head + payload, onData, deadlineMs).then(
      () => parseResponse<T>(Buffer.concat(chunks), this.socketPath),
      (e: NodeJS.ErrnoException) => {
        throw new AgentUnreachableError(
          this.socketPath,
          e.code === 'ETIMEDOUT' ? `no answer within ${deadlineMs} ms` : describeConnectError(e),
        );
      },
    );
  }
}

/** The same exchange over node:net (a Node without the pipe bindings). */
const netExchange: Exchange = (socketPath, request, onData, deadlineMs) =>
  new Promise((resolve, reject) => {
    let settled = false;
    const settle = (e?: Error, how: 'complete' | 'eof' = 'eof') => {
      if (settled) return;
      settled = true;
      sock.destroy();
      if (e) reject(e);
      else resolve(how);
    };
    const net = process.getBuiltinModule('node:net');
    // no half-close: node:http servers drop a request whose sender already sent FIN; "Connection: close" ends it
    const sock = net.connect(socketPath, () => sock.write(request));
    sock.setTimeout(deadlineMs, () => settle(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    sock.on('data', (c: Buffer) => {
      if (onData(c)) settle(undefined, 'complete');
    });
    sock.on('error', (e) => settle(e));
    sock.on('end', () => settle());
  });

/** The length of the whole answer once its head is in and names a Content-Length; -1 otherwise
 *  (no head yet, or a chunked answer: that one ends with the connection). */
function completeLength(raw: Buffer): number {
  const sep = raw.indexOf('\r\n\r\n');
  if (sep < 0) return -1;
  const m = /\r\ncontent-length:[ \t]*(\d+)/i.exec(raw.subarray(0, sep).toString('latin1'));
  if (!m || /\r\ntransfer-encoding:/i.test(raw.subarray(0, sep).toString('latin1'))) return Number.MAX_SAFE_INTEGER;
  return sep + 4 + Number(m[1]);
}

function parseResponse<T>(raw: Buffer, socketPath: string): T {
  const sep = raw.indexOf('\r\n\r\n');
  if (sep < 0) throw new AgentUnreachableError(socketPath, 'connection closed before a complete answer');
  const [statusLine, ...headerLines] = raw.subarray(0, sep).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
  if (!status) throw new AgentUnreachableError(socketPath, `not an HTTP answer: ${statusLine.slice(0, 80)}`);
  const headers = new Map(
    headerLines.map((l) => [l.slice(0, l.indexOf(':')).trim().toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]),
  );
  let bodyBuf = raw.subarray(sep + 4);
  if (/chunked/i.test(headers.get('transfer-encoding') ?? '')) bodyBuf = dechunk(bodyBuf);
  return decodeApiAnswer<T>(status, bodyBuf.toString('utf8'));
}

function dechunk(b: Buffer): Buffer {
  const out: Buffer[] = [];
  let i = 0;
  for (;;) {
    const eol = b.indexOf('\r\n', i);
    if (eol < 0) break;
    const size = parseInt(b.subarray(i, eol).toString('latin1'), 16);
    if (!size) break;
    out.push(b.subarray(eol + 2, eol + 2 + size));
    i = eol + 2 + size + 2;
  }
  return Buffer.concat(out);
}
