// The ring-buffer consumer: pure record walking over a fake ring, then (as root) the real mapped
// ring fed by the synthetic producer through BPF_PROG_TEST_RUN: every event arrives once and in
// order, and what does not fit is counted in events_lost — emitted = read + lost, exactly.
import t from 'tap';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fakeRing, forEachRecord, RINGBUF_BUSY_BIT, RINGBUF_DISCARD_BIT, walkRing } from '../src/flows/ringbuf-walk.ts';
import { decodeTraceEvent, encodeTraceEvent, EventType } from '../src/flows/event.ts';

const rec = (n: number, len = 16) => Buffer.alloc(len, n);

t.test('walks committed records, rounds to 8 bytes, skips discarded ones', async (t) => {
  const r = fakeRing(4096);
  let pos = r.write(0, rec(1, 12));
  pos = r.write(pos, rec(2, 16), RINGBUF_DISCARD_BIT);
  pos = r.write(pos, rec(3, 1));
  t.equal(pos, 24 + 24 + 16);
  const seen: [number, number][] = [];
  const res = walkRing(r, 0, pos, 100, (d, off, len) => seen.push([d[off], len]));
  t.same(seen, [
    [1, 12],
    [3, 1],
  ]);
  t.same(res, { consumer: pos, records: 2, busy: false });
});

t.test('stops at a busy record and at max', async (t) => {
  const r = fakeRing(4096);
  let pos = r.write(0, rec(1));
  const busyAt = pos;
  pos = r.write(pos, rec(2), RINGBUF_BUSY_BIT);
  const res = walkRing(r, 0, pos, 100, () => {});
  t.same(res, { consumer: busyAt, records: 1, busy: true });
  const r2 = fakeRing(4096);
  let p2 = 0;
  for (let i = 0; i < 5; i++) p2 = r2.write(p2, rec(i));
  t.same(
    walkRing(r2, 0, p2, 3, () => {}),
    { consumer: 72, records: 3, busy: false },
  );
});

t.test('a record wrapping the end is contiguous through the double mapping; positions beyond 2^32 work', async (t) => {
  const r = fakeRing(4096);
  const start = 2 ** 33 + 4096 - 24; // header near the end, payload wraps
  const end = r.write(start, Buffer.from('abcdefghijklmnopqrstuvwxyz0123456789'));
  let got = '';
  const res = walkRing(r, start, end, 10, (d, off, len) => {
    got = d.toString('utf8', off, off + len);
  });
  t.equal(got, 'abcdefghijklmnopqrstuvwxyz0123456789');
  t.equal(res.consumer, end);
});

t.test('spans: walkRing stops before maxBytes (a longer first record whole); forEachRecord walks a copy', async (t) => {
  const r = fakeRing(4096);
  let pos = 0;
  for (let i = 1; i <= 4; i++) pos = r.write(pos, rec(i, 16), i === 2 ? RINGBUF_DISCARD_BIT : 0); // 24 bytes each
  t.same(walkRing(r, 0, pos, 100, undefined, 50), { consumer: 48, records: 1, busy: false }, 'two records fit 50 bytes');
  t.same(walkRing(r, 0, pos, 100, undefined, 10), { consumer: 24, records: 1, busy: false }, 'one record at least');
  // A span copied to another place (odd offset), walked there: the discarded record is skipped.
  const copy = Buffer.alloc(3 + pos);
  r.data.copy(copy, 3, 0, pos);
  const seen: [number, number][] = [];
  forEachRecord(copy, 3, pos, (d, off, len) => seen.push([d[off], len]));
  t.same(seen, [
    [1, 16],
    [3, 16],
    [4, 16],
  ]);
});

const root = process.getuid?.() === 0 && fs.existsSync('/sys/fs/bpf');
t.test('real ring buffer with the synthetic producer', { skip: root ? false : 'needs root and bpffs' }, async (t) => {
  const { SyntheticProducer } = await import('../src/flows/synthetic/producer.ts');
  const { RingBufferReader, PerCpuCounter } = await import('../src/flows/ringbuf.ts');
  const { possibleCpus } = await import('../src/bpf/datapath.ts');
  const pinDir = `/sys/fs/bpf/mbt-flows-rb-${randomBytes(4).toString('hex')}`;
  const producer = SyntheticProducer.open(pinDir);
  const reader = RingBufferReader.open(`${pinDir}/events`);
  const lost = new PerCpuCounter(`${pinDir}/events_lost`, possibleCpus());
  t.teardown(() => {
    reader.close();
    lost.close();
    producer.close();
    fs.rmSync(pinDir, { recursive: true, force: true });
  });
  t.equal(reader.size, 1 << 20);
  const ev = encodeTraceEvent({ type: EventType.FLOW_NEW, saddr: '10.9.0.1', daddr: '10.9.0.2', sport: 1000, dport: 80 });

  producer.emit(ev, 1000);
  const seqs: number[] = [];
  const lens = new Set<number>();
  t.equal(
    reader.drain(1e6, (d, off, len) => {
      lens.add(len);
      seqs.push(decodeTraceEvent(d, off).len);
    }),
    1000,
  );
  t.same([...lens], [96]);
  t.same(
    seqs,
    Array.from({ length: 1000 }, (_, i) => i + 1),
    'every event once, in order',
  );
  t.equal(reader.pendingBytes(), 0);

  // Many laps around the ring: consumer positions keep growing, records stay intact.
  let read = 0;
  for (let lap = 0; lap < 30; lap++) {
    producer.emit(ev, 5000);
    read += reader.drain(1e6, (d, off) => {
      if (decodeTraceEvent(d, off).daddr !== '10.9.0.2') throw new Error('torn record');
    });
  }
  t.equal(read, 150_000);
  t.equal(lost.read(), 0);

  // Overflow: 1 MiB holds 10082 records of 104 bytes; the rest must be counted, not vanish.
  producer.emit(ev, 25_000);
  const got = reader.drain(1e6, () => {});
  t.ok(got > 9000 && got < 25_000, `ring kept ${got}`);
  t.equal(got + lost.read(), 25_000, 'emitted = read + lost');
});

t.test(
  'the synthetic producer adopts an existing pin of another ring size',
  { skip: root ? false : 'needs root and bpffs' },
  async (t) => {
    const { SyntheticProducer } = await import('../src/flows/synthetic/producer.ts');
    const { RingBufferReader } = await import('../src/flows/ringbuf.ts');
    const pinDir = `/sys/fs/bpf/mbt-flows-rb2-${randomBytes(4).toString('hex')}`;
    fs.mkdirSync(pinDir);
    t.teardown(() => fs.rmSync(pinDir, { recursive: true, force: true }));
    execFileSync('bpftool', [
      'map',
      'create',
      `${pinDir}/events`,
      'type',
      'ringbuf',
      'key',
      '0',
      'value',
      '0',
      'entries',
      String(1 << 21),
      'name',
      'events',
    ]);
    const producer = SyntheticProducer.open(pinDir);
    const reader = RingBufferReader.open(`${pinDir}/events`);
    t.teardown(() => {
      reader.close();
      producer.close();
    });
    t.equal(reader.size, 1 << 21);
    producer.emit(encodeTraceEvent({ type: EventType.DROP, saddr: '10.9.0.1', daddr: '10.9.0.2' }), 15_000); // > what 1 MiB holds
    t.equal(
      reader.drain(1e6, () => {}),
      15_000,
    );
  },
);
