// Message heads that arrive a few bytes per read (http/carry.ts): framed exactly as when they come whole,
// and at linear cost. A client that sent a 60 KiB request head one byte per segment made the worker
// copy and search it again at every byte (Buffer.concat of what it kept and the new byte, a search for
// the head's end from its start): 1.25 s of CPU for one head, ~1.8 GB copied. Counted here as bytes
// copied (Buffer.concat's results and Buffer#copy's), which does not depend on the machine.

import { Buffer } from 'node:buffer';
import t from 'tap';
import type { Pending } from '../src/l7/http/queue.ts';
import { type RequestHost, RequestFramer } from '../src/l7/http/request-framing.ts';
import { type ResponseHost, ResponseFramer } from '../src/l7/http/response-framing.ts';

/** Bytes copied by Buffer.concat and Buffer#copy while fn runs. */
function bytesCopied(fn: () => void): number {
  const concat = Buffer.concat;
  const copy = Buffer.prototype.copy;
  let n = 0;
  Buffer.concat = ((list: Uint8Array[], len?: number) => {
    const b = concat(list, len);
    n += b.length;
    return b;
  }) as typeof Buffer.concat;
  Buffer.prototype.copy = function (this: Buffer, ...args: Parameters<Buffer['copy']>) {
    const c = copy.apply(this, args);
    n += c;
    return c;
  };
  try {
    fn();
  } finally {
    Buffer.concat = concat;
    Buffer.prototype.copy = copy;
  }
  return n;
}

function requestSide() {
  const forwarded: Buffer[] = [];
  const targets: string[] = [];
  const errors: string[] = [];
  const host: RequestHost = {
    reusesUpstream: false,
    toUpstream: (b) => forwarded.push(Buffer.from(b)), // a copy: views of the framer's buffers
    admit: (head) => {
      targets.push(head.target);
      return { x: { verdict: { allowed: true, edits: [] } }, complete: false } as unknown as Pending;
    },
    upstreamWillClose: () => undefined,
    requestComplete: () => undefined,
    holdForSwitch: () => undefined,
    badRequest: (e) => errors.push(String(e)),
  };
  return { framer: new RequestFramer(host), forwarded, targets, errors };
}

const bigHead = (n: number) => `GET /big HTTP/1.1\r\nHost: web\r\nX-Pad: ${'a'.repeat(n)}\r\n\r\n`;

t.test('a request head a byte per read: framed as if it came whole, every byte forwarded once', async (t) => {
  const input = Buffer.from(`${bigHead(60_000)}POST /next HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello`);
  for (const step of [1, 2, 3, 7, 1000]) {
    const r = requestSide();
    for (let i = 0; i < input.length; i += step) r.framer.feed(input.subarray(i, i + step));
    t.same(r.targets, ['/big', '/next'], `${step} byte(s) per read: both requests`);
    t.ok(Buffer.concat(r.forwarded).equals(input), `${step} byte(s) per read: the bytes went on unchanged`);
    t.same(r.errors, []);
  }
});

t.test('a request head a byte per read costs linear copying, not quadratic', async (t) => {
  const input = Buffer.from(bigHead(60_000));
  const r = requestSide();
  const copied = bytesCopied(() => {
    for (let i = 0; i < input.length; i++) r.framer.feed(input.subarray(i, i + 1));
  });
  t.same(r.targets, ['/big']);
  t.ok(
    copied < 8 * input.length,
    `${copied} bytes copied for a ${input.length}-byte head (quadratic: ~${(input.length ** 2 / 2 / 1e9).toFixed(1)} GB)`,
  );
});

t.test('a head still too large when it trickles in is refused (431), not kept growing', async (t) => {
  const input = Buffer.from(bigHead(70_000));
  const r = requestSide();
  for (let i = 0; i < input.length && !r.errors.length; i++) r.framer.feed(input.subarray(i, i + 1));
  t.match(r.errors, [/larger than 65536 bytes/]);
  t.same(r.targets, []);
});

t.test('bytes that cannot begin a request are refused at once when they trickle in too', async (t) => {
  const r = requestSide();
  for (const b of Buffer.from('GE')) r.framer.feed(Buffer.from([b]));
  t.same(r.errors, [], 'a method in the making waits');
  r.framer.feed(Buffer.from([0x16])); // a TLS record's first byte
  t.match(r.errors, [/not an HTTP\/1.x request/]);
});

t.test('a response head a byte per read: framed as if it came whole, at linear cost', async (t) => {
  const body = 'hello';
  const input = Buffer.from(`HTTP/1.1 200 OK\r\nX-Pad: ${'b'.repeat(60_000)}\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  const toClient: Buffer[] = [];
  let completed = 0;
  const slot = { x: { method: 'GET', startMs: 0 }, switching: false } as unknown as Pending;
  const host: ResponseHost = {
    toClient: (b) => toClient.push(Buffer.from(b)),
    nextUpstream: () => (completed ? undefined : slot),
    unsolicited: () => undefined,
    upstreamWillClose: () => undefined,
    switched: () => undefined,
    lastResponseEnds: () => undefined,
    responseComplete: () => {
      completed++;
    },
  };
  const f = new ResponseFramer(host);
  const copied = bytesCopied(() => {
    for (let i = 0; i < input.length; i++) f.feed(input.subarray(i, i + 1));
  });
  t.equal(completed, 1, 'the response completed');
  t.equal((slot.x as unknown as { status: number }).status, 200);
  t.ok(Buffer.concat(toClient).equals(input), 'the bytes went on unchanged');
  t.ok(copied < 8 * input.length, `${copied} bytes copied for a ${input.length}-byte response`);
});
