// DNS over TCP framing as the proxy's relay reads and writes it (dns/tcp.ts): a message behind its
// two-byte length, whole messages handed on however the stream cuts them, the rest kept.
import t from 'tap';
import { frame, unframe } from '../src/dns/tcp.ts';

const a = Buffer.from('first message');
const b = Buffer.alloc(300, 7); // a length above 255: both length bytes matter
const stream = Buffer.concat([frame(a), frame(b), frame(Buffer.alloc(0))]);

t.test('whole messages, however the stream is cut', async (t) => {
  for (const size of [1, 2, 3, 15, 16, 17, stream.length]) {
    const got: Buffer[] = [];
    let pending: Buffer = Buffer.alloc(0);
    for (let i = 0; i < stream.length; i += size) pending = unframe(pending, stream.subarray(i, i + size), (m) => got.push(m));
    t.same(got, [a, b, Buffer.alloc(0)], `cut every ${size} bytes`);
    t.equal(pending.length, 0, 'nothing left over');
  }
});

t.test('an incomplete message waits; each message is a copy', async (t) => {
  const got: Buffer[] = [];
  const chunk = Buffer.concat([frame(a), frame(b).subarray(0, 100)]);
  const rest = unframe(Buffer.alloc(0), chunk, (m) => got.push(m));
  t.same(got, [a]);
  t.equal(rest.length, 100, 'the partial second message is kept');
  chunk.fill(0);
  t.same(got[0], a, 'the message handed on does not share the chunk');
});
