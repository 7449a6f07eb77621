// The kernel event source's schedule (as root, on a real ring fed by the synthetic producer, which
// submits as the datapath does): once the ring stays empty the reader sleeps in epoll, and the first
// event after that arrives at once — woken by the kernel, not by the slow fallback timer.
import t from 'tap';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { encodeTraceEvent, EventType } from '../src/flows/event.ts';
import { forEachRecord } from '../src/flows/ringbuf-walk.ts';
import { pollUntil } from './lib/poll.ts';

const root = process.getuid?.() === 0 && fs.existsSync('/sys/fs/bpf');

t.test('an idle reader sleeps and the first event wakes it', { skip: root ? false : 'needs root and bpffs' }, async (t) => {
  const { SyntheticProducer } = await import('../src/flows/synthetic/producer.ts');
  const { KernelEventSource } = await import('../src/flows/source.ts');
  const { possibleCpus } = await import('../src/bpf/datapath.ts');
  const pinDir = `/sys/fs/bpf/mbt-flows-src-${randomBytes(4).toString('hex')}`;
  const producer = SyntheticProducer.open(pinDir);
  // A fallback far beyond the test's bound: a delivery within it can only be the kernel's wake-up.
  const source = new KernelEventSource({ pinDir, cpus: possibleCpus(), sleepIntervalMs: 60_000 });
  t.teardown(() => {
    source.close();
    producer.close();
    fs.rmSync(pinDir, { recursive: true, force: true });
  });
  const arrived: number[] = [];
  source.start((data, start, len) => forEachRecord(data, start, len, () => arrived.push(performance.now())));
  const ev = encodeTraceEvent({ type: EventType.FLOW_NEW, saddr: '10.9.0.1', daddr: '10.9.0.2', sport: 1000, dport: 80 });

  for (const round of [1, 2, 3]) {
    // 5 + 10 + 20 + 40 + 40 ms of empty drains, then asleep. Polled for up to 30 s, and the delivery
    // bound is 15 s: a loaded machine runs every timer late (one second and more seen), while the
    // fallback timer that would deliver without the wake-up is 60 s away.
    await pollUntil(() => source.sleeping(), 30_000, 10);
    t.ok(source.sleeping(), `round ${round}: asleep once the ring stayed empty`);
    const t0 = performance.now();
    producer.emit(ev, 3);
    await pollUntil(() => arrived.length >= 3 * round, 30_000, 5);
    t.equal(arrived.length, 3 * round, `round ${round}: every event delivered`);
    const delay = arrived[3 * round - 1] - t0;
    t.ok(delay < 15_000, `round ${round}: delivered ${delay.toFixed(1)} ms after the emit (woken, not timed)`);
    t.notOk(source.sleeping(), `round ${round}: awake after the wake-up`);
  }
});
