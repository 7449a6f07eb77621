// AgentClient with its transport swapped for plain HTTP/1.1 over node:net. Same methods, paths, bodies
// and errors as shared/src/api/client.ts; the difference is start-up cost: node:http (with its agent,
// parser and outgoing-message machinery) costs ~10 ms per plugin start here, node:net ~1 ms.
// The CNI bundle replaces node:http with an empty stub (scripts/build-cni.mjs), so only this path runs.
// An answer with a Content-Length is complete when that many body bytes arrived: the plugin does not
// wait for the agent's FIN, which the agent's event loop sends only after the work it does right after
// answering (the reaper removing a deleted endpoint's veth took 20-40 ms of a DEL that way).
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
      let got = 0;
      let need = -1; // bytes of a complete answer, once its head says (Content-Length)
      const finish = () => {
        if (settled) return;
        settled = true;
        sock.destroy();
        try {
          resolve(parseResponse<T>(Buffer.concat(chunks), this.socketPath));
        } catch (e) {
          reject(e);
        }
      };
      sock.on('data', (c: Buffer) => {
        chunks.push(c);
        got += c.length;
        if (need < 0) need = completeLength(chunks.length === 1 ? c : Buffer.concat(chunks));
        if (need >= 0 && got >= need) finish();
      });
      sock.on('error', (e: NodeJS.ErrnoException) => fail(new AgentUnreachableError(this.socketPath, describeConnectError(e))));
      sock.on('end', finish);
    });
  }
}

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
