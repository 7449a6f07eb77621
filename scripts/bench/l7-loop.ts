// node --import tsx scripts/bench/l7-loop.ts — not a test: the JavaScript a proxy worker runs for one
// keep-alive request, alone, in a loop (no sockets, no kernel). One HttpProxyConnection on stand-in
// sockets, the worker's decision path (ProxyView.decide on a one-rule policy like bench:l7's) and its
// record writer; each request and response is a copy of wrk's request and nginx's response, made as
// the worker's read callback makes it (raw-socket.ts onRead). Prints ns per request (median of
// LOOP_RUNS runs of LOOP_N requests), so a change to the per-request path can be weighed before a
// bench:l7:ab in a loaded world, where rounds move ±30 %.
import { Buffer } from 'node:buffer';
import { performance } from 'node:perf_hooks';
import { HttpProxyConnection } from '../../shared/src/l7/http/connection.ts';
import type { Exchange, Verdict } from '../../shared/src/l7/http/exchange.ts';
import type { RequestHead } from '../../shared/src/l7/http/parse.ts';
import type { RequestView } from '../../shared/src/l7/http/rules.ts';
import { RecordWriter } from '../../shared/src/l7/proxy/records.ts';
import type { ProxySnapshot } from '../../shared/src/l7/proxy/snapshot.ts';
import { type ProxyDecision, ProxyView } from '../../shared/src/l7/proxy/view.ts';

const N = Number(process.env.LOOP_N ?? 200_000);
const RUNS = Number(process.env.LOOP_RUNS ?? 15);

const REQUEST = Buffer.from('GET / HTTP/1.1\r\nHost: 10.99.0.2:80\r\n\r\n', 'latin1');
const RESPONSE = Buffer.from(
  'HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 04:20:00 GMT\r\nContent-Type: text/plain\r\n' +
    'Content-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n',
  'latin1',
);

// Every read is copied out of one shared buffer, as onRead does.
const shared = Buffer.allocUnsafe(64 * 1024);
function read(src: Buffer): Buffer {
  src.copy(shared, 0);
  const chunk = Buffer.allocUnsafe(src.length);
  chunk.set(new Uint8Array(shared.buffer, shared.byteOffset, src.length));
  return chunk;
}

type Fn = (...a: never[]) => void;
class FakeSocket {
  destroyed = false;
  writableEnded = false;
  readableEnded = false;
  writableLength = 0;
  readyState = 'open';
  written = 0;
  ondata?: (d: Buffer) => void;
  onend?: Fn;
  onerror?: Fn;
  onclose?: Fn;
  ondrain?: Fn;
  onconnect?: Fn;
  on(event: string, fn: Fn): this {
    (this as unknown as Record<string, Fn>)[`on${event}`] = fn;
    return this;
  }
  write(b: Buffer): boolean {
    this.written += b.length;
    return true;
  }
  pause(): this {
    return this;
  }
  resume(): this {
    return this;
  }
  end(): this {
    this.writableEnded = true;
    return this;
  }
  destroy(): this {
    this.destroyed = true;
    return this;
  }
  setNoDelay(): this {
    return this;
  }
}

const snapshot: ProxySnapshot = {
  revision: 1,
  endpoints: [
    { id: 1, identity: 30001, ips: ['10.99.0.2'], policy: 0 },
    { id: 2, identity: 30002, ips: ['10.99.0.3'], policy: -1 },
  ],
  policies: [{ ingress: { defaultDeny: true, entries: [[30002, (6 << 16) | 80, 0, 7, 0]] } }],
  l7Sets: [
    [
      {
        ruleId: 7,
        path: 'spec.ingress[0].toPorts[0].rules.http[0]',
        http: { method: 'GET', path: '/.*', headers: [], headerMatches: [] },
      },
    ],
  ],
  ipcache: [],
} as unknown as ProxySnapshot;

function run(): number {
  const view = new ProxyView(snapshot);
  const records = new RecordWriter();
  const client = new FakeSocket();
  let upstream: FakeSocket | undefined;
  const ctx = { srcPort: 40000, dstPort: 80, policy: view.connection('10.99.0.3', '10.99.0.2', 80) };
  const timeOrigin = performance.timeOrigin;
  let lastDecision: ProxyDecision | undefined;
  let verdict: Verdict | undefined;
  const record = (kind: 'request' | 'response', x: Exchange) => {
    records.add(kind, x, ctx, timeOrigin + x.startMs + (kind === 'request' ? 0 : x.latencyNs / 1e6));
    if (records.bytes >= 64 * 1024 - 4 - 512) records.take(0);
  };
  new HttpProxyConnection({
    client: client as never,
    connect: () => (upstream = new FakeSocket()) as never,
    // As the worker's Diverted.decide: the verdict made once per decision.
    decide: (_h: RequestHead, req: RequestView) => {
      const d = view.decide(ctx.policy, req);
      if (d !== lastDecision) verdict = { allowed: d.allowed, edits: d.edits, info: (lastDecision = d) };
      return verdict!;
    },
    sink: { request: (x) => record('request', x), response: (x) => record('response', x) },
    clientNoDelay: true,
  });
  client.ondata!(read(REQUEST));
  upstream!.onconnect!();
  upstream!.ondata!(read(RESPONSE));
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    client.ondata!(read(REQUEST));
    upstream!.ondata!(read(RESPONSE));
  }
  const ns = ((performance.now() - t0) * 1e6) / N;
  if (upstream!.written !== (N + 1) * REQUEST.length || client.written !== (N + 1) * RESPONSE.length)
    throw new Error('not every byte went through');
  return ns;
}

const out: number[] = [];
for (let r = 0; r < RUNS; r++) out.push(run());
const sorted = [...out].sort((a, b) => a - b);
console.log(
  `ns per keep-alive request (JavaScript only): median ${sorted[RUNS >> 1].toFixed(0)}, min ${sorted[0].toFixed(0)}; runs ${out.map((x) => x.toFixed(0)).join(' ')}`,
);
