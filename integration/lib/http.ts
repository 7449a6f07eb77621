// HTTP peers inside test netns: a server that reports what it received (method, URL, headers, the
// body's size and hash, the peer address) and, after an upgrade, echoes WebSocket messages (or raw
// bytes for a client that is no WebSocket client), and clients (curl, Node's WebSocket client, and a raw
// socket for pipelining and keep-alive checks across policy changes).
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestNetns } from './netns.ts';
import { nodeIn, untilListening } from './tcp.ts';

const SERVER = `
const http = require('http');
const crypto = require('crypto');
const [port, host, name, log] = [Number(process.argv[1]), process.argv[2], process.argv[3], process.argv[4]];
const srv = http.createServer((req, res) => {
  // The access log: what reached the server, whatever the client was told.
  if (log) require('fs').appendFileSync(log, req.method + ' ' + req.url + '\\n');
  const h = crypto.createHash('sha256');
  let bytes = 0;
  req.on('data', (d) => { h.update(d); bytes += d.length; });
  req.on('end', () => {
    const body = JSON.stringify({ server: name, method: req.method, url: req.url, headers: req.headers, bytes, sha256: h.digest('hex'), peer: req.socket.remoteAddress, peerPort: req.socket.remotePort });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
srv.keepAliveTimeout = 60000;
srv.on('upgrade', (req, socket) => {
  socket.on('error', () => {});
  socket.on('end', () => socket.end());
  const key = req.headers['sec-websocket-key'];
  if (!key) {
    // Not a WebSocket client: switch to the protocol asked for and echo raw bytes (tests that only
    // look at the tunnel; the proxy takes a 101 to websocket only with the accept of a key).
    socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: ' + req.headers.upgrade + '\\r\\nConnection: Upgrade\\r\\n\\r\\n');
    socket.on('data', (d) => socket.write(Buffer.concat([Buffer.from('echo:'), d])));
    return;
  }
  // RFC 6455: the accept key proves the answer is to this handshake; each message comes back as "echo:<message>".
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: ' + accept + '\\r\\n\\r\\n');
  const frame = (op, payload) => {
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | op, n]) : n < 65536 ? Buffer.from([0x80 | op, 126, n >> 8, n & 255]) : Buffer.concat([Buffer.from([0x80 | op, 127]), (() => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; })()]);
    return Buffer.concat([head, payload]);
  };
  let buf = Buffer.alloc(0);
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2) {
      const op = buf[0] & 15;
      let len = buf[1] & 127, off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const mask = buf[1] & 128 ? buf.subarray(off, off + 4) : null;
      if (mask) off += 4;
      if (buf.length < off + len) return;
      const payload = Buffer.from(buf.subarray(off, off + len));
      if (mask) for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3];
      buf = buf.subarray(off + len);
      if (op === 8) { socket.end(frame(8, payload.subarray(0, 2))); return; }
      if (op === 9) socket.write(frame(10, payload));
      else if (op === 1 || op === 2) socket.write(frame(op, Buffer.concat([Buffer.from('echo:'), payload])));
    }
  });
});
srv.listen(port, host, () => process.stdout.write('listening\\n'));
`;

/** An HTTP server on port (every address of the netns); resolves once it listens. With `log`, it appends
 *  "METHOD URL" to that file for every request it receives (an access log a test can read). */
export async function startHttpServer(
  ns: TestNetns,
  port: number,
  name: string,
  host = '0.0.0.0',
  log?: string,
): Promise<ChildProcess> {
  const child = nodeIn(ns, SERVER, [String(port), host, name, ...(log ? [log] : [])]);
  await untilListening(child, `HTTP server ${name}`, 60_000);
  return child;
}

export interface CurlResult {
  /** HTTP status of the last response, 0 when there was none (connection failed or timed out). */
  status: number;
  body: string;
  /** curl's exit code (28 = timeout, 7 = could not connect, 0 = fine). */
  exit: number;
  /** New connections curl opened over all its URLs. */
  connects: number;
}

/**
 * curl inside ns. Several URLs share one connection when the server keeps it open (curl reuses it);
 * `extra` are more curl arguments (-X, -H, -d, -T ...). `stdin` feeds -T - / --data-binary @-.
 * Without `timeoutS`: 5 s to connect (a dropped SYN answers status 0 after 5 s), then 30 s for the
 * whole exchange: a server or proxy a loaded machine leaves unscheduled is not a drop. With it: at
 * most timeoutS for everything (the callers that expect no answer give 2 s).
 */
export function curl(
  ns: TestNetns,
  urls: string | string[],
  extra: string[] = [],
  opts: { timeoutS?: number; stdin?: ChildProcess } = {},
): Promise<CurlResult> {
  const list = Array.isArray(urls) ? urls : [urls];
  const limits =
    opts.timeoutS === undefined ? ['--connect-timeout', '5', '--max-time', '30'] : ['--max-time', String(opts.timeoutS)];
  const args = ['-sS', ...limits, '-w', '\\n%{http_code} %{num_connects}\\n', ...extra, ...list];
  const child = spawn('nsenter', [`--net=${ns.path}`, 'curl', ...args], {
    stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  if (opts.stdin) opts.stdin.stdout!.pipe(child.stdin!);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString('latin1');
  });
  return new Promise((resolve) =>
    child.once('exit', (code) => {
      const tails = [...out.matchAll(/\n(\d{3}) (\d+)\n/g)];
      const connects = tails.reduce((n, m) => n + Number(m[2]), 0);
      const last = tails[tails.length - 1];
      const body = last
        ? out
            .slice(0, last.index)
            .split(/\n\d{3} \d+\n/)
            .pop()!
        : out;
      resolve({ status: last ? Number(last[1]) : 0, body, exit: code ?? -1, connects });
    }),
  );
}

const RAW = `
// One connection; reads requests (JSON lines on stdin: {send, until}) and prints what came back.
const net = require('net');
const [ip, port] = [process.argv[1], Number(process.argv[2])];
const s = net.connect({ host: ip, port });
let got = '';
let waiting = null;
s.on('data', (d) => { got += d.toString('latin1'); check(); });
s.on('close', () => { process.stdout.write(JSON.stringify({ closed: true, got }) + '\\n'); got = ''; });
s.on('error', (e) => process.stdout.write(JSON.stringify({ error: e.code }) + '\\n'));
function check() {
  if (waiting && got.split(waiting.until).length - 1 >= waiting.count) {
    process.stdout.write(JSON.stringify({ got }) + '\\n');
    got = '';
    waiting = null;
  }
}
let buf = '';
process.stdin.on('data', (d) => {
  buf += d.toString();
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const m = JSON.parse(buf.slice(0, i));
    buf = buf.slice(i + 1);
    waiting = { until: m.until, count: m.count || 1 };
    s.write(m.send);
    check();
  }
});
`;

/** One TCP connection from ns kept open across several exchanges (pipelining, policy changes). */
export class RawHttp {
  private readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private waiter?: () => void;

  constructor(ns: TestNetns, ip: string, port: number) {
    this.child = nodeIn(ns, RAW, [ip, String(port)], { stdin: true });
    let buf = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
        this.waiter?.();
      }
    });
  }

  /** Sends bytes; resolves with what came back once `until` appeared `count` times (or the connection closed). */
  async exchange(
    send: string,
    until: string,
    count = 1,
    timeoutMs = 8000,
  ): Promise<{ got: string; closed?: boolean; error?: string }> {
    this.child.stdin!.write(JSON.stringify({ send, until, count }) + '\n');
    const end = Date.now() + timeoutMs;
    while (!this.lines.length) {
      if (Date.now() > end) return { got: '', error: 'timeout' };
      await new Promise<void>((r) => {
        this.waiter = r;
        setTimeout(r, 100);
      });
    }
    return JSON.parse(this.lines.shift()!);
  }

  close(): void {
    this.child.kill('SIGKILL');
  }
}

export const request = (method: string, path: string, host = 'svc', headers: Record<string, string> = {}, body = ''): string =>
  `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}${body ? `Content-Length: ${Buffer.byteLength(body)}\r\n` : ''}\r\n${body}`;

const WS_CLIENT = `
// Node's own WebSocket client (undici, the browser API): checks the handshake's accept key itself.
const [url, ...messages] = process.argv.slice(1);
const got = [];
let opened = false;
const ws = new WebSocket(url);
ws.binaryType = 'arraybuffer';
const done = (r) => { process.stdout.write(JSON.stringify({ opened, got, ...r }) + '\\n'); process.exit(0); };
setTimeout(() => done({ error: 'timeout' }), 8000);
ws.onopen = () => { opened = true; for (const m of messages) ws.send(m.startsWith('bytes:') ? new Uint8Array(Number(m.slice(6))).fill(120) : m); };
ws.onmessage = (e) => {
  got.push(typeof e.data === 'string' ? e.data : 'bytes:' + e.data.byteLength + ':' + Buffer.from(e.data).subarray(0, 5).toString());
  if (got.length === messages.length) ws.close(1000, 'bye');
};
// A refused handshake is an error event (Node 20's client then never fires close).
ws.onerror = (e) => { if (!opened) done({ error: e.message }); };
ws.onclose = (e) => done({ closeCode: e.code });
`;

export interface WsResult {
  opened: boolean;
  got: string[];
  closeCode?: number;
  error?: string;
}

/**
 * A WebSocket session from ns: opens url, sends each message (text, or "bytes:N" for a binary message
 * of N bytes), waits for as many answers, closes. Answers are text, or "bytes:N:<first 5 bytes>".
 */
export function webSocket(ns: TestNetns, url: string, messages: string[]): Promise<WsResult> {
  const child = nodeIn(ns, WS_CLIENT, [url, ...messages], { flags: ['--no-warnings', '--experimental-websocket'] });
  let out = '',
    err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d;
  });
  return new Promise((resolve, reject) =>
    child.once('exit', () => {
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`WebSocket client: ${out}${err}`));
      }
    }),
  );
}
