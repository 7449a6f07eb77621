// AgentClient with its transport swapped for plain HTTP/1.1 over node:net. Same methods, paths, bodies
// and errors as shared/src/api/client.ts; the difference is start-up cost: node:http (with its agent,
// parser and outgoing-message machinery) costs ~10 ms per plugin start here, node:net ~1 ms.
// The CNI bundle replaces node:http with an empty stub (scripts/build-cni.mjs), so only this path runs.
import net from 'node:net';
import {
  AgentClient,
  AgentUnreachableError,
  decodeApiAnswer,
  describeConnectError,
  type ClientOptions,
  type RequestOptions,
} from '../../shared/src/api/client.ts';

export class CniAgentClient extends AgentClient {
  private readonly deadlineMs: number;

  constructor(opts: ClientOptions = {}) {
    super(opts);
    this.deadlineMs = opts.timeoutMs ?? 30_000;
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
    return new Promise<T>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let settled = false;
      const fail = (e: Error) => {
        if (!settled) {
          settled = true;
          sock.destroy();
          reject(e);
        }
      };
      // no half-close: node:http servers drop a request whose sender already sent FIN; "Connection: close" ends it
      const sock = net.connect(this.socketPath, () => sock.write(head + payload));
      sock.setTimeout(deadlineMs, () => fail(new AgentUnreachableError(this.socketPath, `no answer within ${deadlineMs} ms`)));
      sock.on('data', (c: Buffer) => chunks.push(c));
      sock.on('error', (e: NodeJS.ErrnoException) => fail(new AgentUnreachableError(this.socketPath, describeConnectError(e))));
      sock.on('end', () => {
        if (settled) return;
        settled = true;
        try {
          resolve(parseResponse<T>(Buffer.concat(chunks), this.socketPath));
        } catch (e) {
          reject(e);
        }
      });
    });
  }
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
