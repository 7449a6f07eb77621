// The agent <-> proxy worker control channel: JSON messages and binary record batches in one
// stream, split anywhere, joined once; oversized frames refused.
import t from 'tap';
import { encodeFrame, FrameReader, frameHeader, MAX_FRAME, type WorkerMessage } from '../src/l7/proxy/frames.ts';

t.test('messages and batches come out whole, however the stream is cut', async (t) => {
  const batch = Buffer.alloc(300_000, 7);
  batch[0] = 1;
  const stream = Buffer.concat([
    encodeFrame({ t: 'stats', connections: 1, requests: 2, denied: 0, rssBytes: 3 }),
    frameHeader(batch.length),
    batch,
    encodeFrame({ t: 'stats', connections: 4, requests: 5, denied: 1, rssBytes: 6 }),
  ]);
  for (const step of [1, 3, 4096, 65536, stream.length]) {
    const got: unknown[] = [];
    const r = new FrameReader<WorkerMessage>(
      (m) => got.push(m),
      (b) => got.push(b.length === batch.length && b.equals(batch) ? 'batch' : 'bad batch'),
    );
    for (let i = 0; i < stream.length; i += step) r.push(stream.subarray(i, i + step));
    t.match(got, [{ t: 'stats', requests: 2 }, 'batch', { t: 'stats', requests: 5 }], `chunks of ${step}`);
  }
});

t.test('an oversized frame, or a batch where none is expected, is refused', async (t) => {
  t.throws(() => new FrameReader(() => undefined).push(frameHeader(MAX_FRAME + 1)), /exceeds/);
  t.throws(
    () => new FrameReader(() => undefined).push(Buffer.concat([frameHeader(2), Buffer.from([1, 2])])),
    /unexpected binary control frame/,
  );
});
