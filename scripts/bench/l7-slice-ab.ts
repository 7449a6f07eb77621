// node --import tsx scripts/bench/l7-slice-ab.ts — not a test: does a shorter CPU slice for the L7
// worker's event-loop thread lower its one-request-per-connection tail? Why it might: at close 10 the
// worker rarely sleeps, TCP wakes wrk on the CPU of the writer (the worker), and EEVDF lets the
// running worker finish its slice (1.4 ms here, RUN_TO_PARITY) before the woken wrk gets that CPU
// (bench:l7:sched: wrk waited over 1 ms for a CPU 27-46 times a second, 37-55 % of it behind the
// worker). A shorter slice leaves the worker's share alone and only lets the woken run sooner.
// (0503774 tried it at keep-alive only, at load 10-20: inconclusive; never at close.)
// One world (l7-world.ts), one worker: the bench sets the slice on the running worker from outside
// (sched_setattr on its pid, as root), so both arms are the same process, warm, in the same world.
// Each round runs both arms in alternating order (A: the kernel's slice, B: SLICE_US), each a 2 s
// warm-up then SLICE_SECONDS of L7 close 10 and of L7 keep-alive 10 (its CPU per request: the
// slice must not cost the keep-alive cell), and nginx's close 10 and keep-alive 10 as the yardstick.
// SLICE_ROUNDS (6), SLICE_US (250), SLICE_SECONDS (5), SLICE_MODES (close,keep-alive).
// 2026-12-06, 250 µs, two loaded runs (other helpers' tests): 6 rounds at load 7.1 -> 6.5, close p99
// median 3.67 -> 10.41 ms (B lower in 2 of 6; nginx 9.49), CPU per request 31.1 -> 26.1 µs (0.84×),
// keep-alive CPU 0.999×; 8 rounds at load 5.6 -> 7.6, close p99 57.7 -> 21.3 ms (B lower in 7 of 8;
// nginx 21.8), CPU 1.08×, keep-alive CPU 1.08× (higher in 6 of 8). Inconclusive at that load: the
// kernel's slice stays; the question is for a quiet window.
import fs from 'node:fs';
import os from 'node:os';
import koffi from 'koffi';
import { startL7World } from './l7-world.ts';
import { type Mode, type Sample, wrk } from './l7-wrk.ts';
import { median } from './lib.ts';

const ROUNDS = Number(process.env.SLICE_ROUNDS ?? 6);
const SLICE_US = Number(process.env.SLICE_US ?? 250);
const SECONDS = Number(process.env.SLICE_SECONDS ?? 5);
const MODES = (process.env.SLICE_MODES ?? 'close,keep-alive').split(',') as Mode[];
delete process.env.NODE_EXTRA_CA_CERTS;

const SYS_SCHED_SETATTR = 314; // x86_64
const SCHED_ATTR_SIZE = 56; // SCHED_ATTR_SIZE_VER1
const libc = koffi.load('libc.so.6');
const syscall = libc.func('long syscall(long nr, int pid, _In_ uint8_t *attr, unsigned int flags)') as (
  ...a: unknown[]
) => number;

/** Sets thread `tid`'s EEVDF slice (SCHED_OTHER, nice 0; 0 µs: the kernel's default); reads it back. */
function setSlice(tid: number, us: number): string {
  const attr = Buffer.alloc(SCHED_ATTR_SIZE);
  attr.writeUInt32LE(SCHED_ATTR_SIZE, 0);
  attr.writeBigUInt64LE(BigInt(Math.round(us * 1000)), 24); // sched_runtime (ns): the slice
  if (syscall(SYS_SCHED_SETATTR, tid, attr, 0) !== 0) throw new Error(`sched_setattr(${tid}): errno ${koffi.errno()}`);
  return /se\.slice\s*:\s*(\d+)/.exec(fs.readFileSync(`/proc/${tid}/sched`, 'utf8'))?.[1] ?? '?';
}

async function main(): Promise<void> {
  if (process.arch !== 'x64') throw new Error('x86_64 only (the syscall number)');
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const { client, urls } = world;
  const samples: Record<string, Sample[]> = {};
  const put = (k: string, s: Sample) => {
    (samples[k] ??= []).push(s);
    process.stderr.write(`${k}: ${s.rps.toFixed(0)} req/s p50 ${s.p50} p99 ${s.p99} ms cpu ${s.cpuUsPerReq?.toFixed(1)}\n`);
  };
  try {
    const workers = (await world.proxyPids('l7')).slice(0, -1);
    for (const mode of MODES) {
      await wrk(client, urls.l7, 10, mode, 3);
      await wrk(client, urls.nginx, 10, mode, 3);
    }
    for (let r = 0; r < ROUNDS; r++) {
      for (const arm of r % 2 ? ['B', 'A'] : ['A', 'B']) {
        const got = workers.map((pid) => setSlice(pid, arm === 'B' ? SLICE_US : 0));
        process.stderr.write(`arm ${arm}: se.slice ${got.join(' ')} ns\n`);
        for (const mode of MODES) {
          await wrk(client, urls.l7, 10, mode, 2);
          put(`${arm}|${mode}`, await wrk(client, urls.l7, 10, mode, SECONDS, await world.proxyPids('l7'), world.agentPid()));
        }
      }
      for (const mode of MODES)
        put(`nginx|${mode}`, await wrk(client, urls.nginx, 10, mode, SECONDS, await world.proxyPids('nginx')));
      process.stderr.write(`round ${r + 1}/${ROUNDS} done, load ${os.loadavg()[0].toFixed(2)}\n`);
    }
  } finally {
    await world.close();
  }
  const m = (k: string, f: keyof Sample) => median(samples[k].map((s) => Number(s[f])));
  console.log(
    `A: the kernel's slice, B: ${SLICE_US} µs for the worker's main thread; ${ROUNDS} rounds × ${SECONDS} s, 10 connections, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
  );
  console.log('| mode | req/s A / B / nginx | p99 ms A / B / nginx | p99 / nginx A, B | CPU µs/req A / B (B/A) / nginx |');
  console.log('|---|---|---|---|---|');
  for (const mode of MODES) {
    const [a, b, n] = ['A', 'B', 'nginx'].map((v) => `${v}|${mode}`);
    console.log(
      `| ${mode} | ${[a, b, n].map((k) => Math.round(m(k, 'rps'))).join(' / ')} | ${[a, b, n].map((k) => m(k, 'p99').toFixed(2)).join(' / ')} | ${(m(a, 'p99') / m(n, 'p99')).toFixed(2)}×, ${(m(b, 'p99') / m(n, 'p99')).toFixed(2)}× | ${m(a, 'cpuUsPerReq').toFixed(1)} / ${m(b, 'cpuUsPerReq').toFixed(1)} (${(m(b, 'cpuUsPerReq') / m(a, 'cpuUsPerReq')).toFixed(3)}×) / ${m(n, 'cpuUsPerReq').toFixed(1)} |`,
    );
  }
  for (const mode of MODES) {
    const per = (k: string, f: keyof Sample, d: number) => samples[`${k}|${mode}`].map((s) => Number(s[f]).toFixed(d)).join(' ');
    const lower = samples[`A|${mode}`].filter((s, i) => samples[`B|${mode}`][i].p99 < s.p99).length;
    console.log(
      `${mode} per round, p99 ms A: ${per('A', 'p99', 2)}; B: ${per('B', 'p99', 2)}; nginx: ${per('nginx', 'p99', 2)} (B lower in ${lower} of ${ROUNDS})`,
    );
    console.log(`${mode} per round, CPU µs/req A: ${per('A', 'cpuUsPerReq', 1)}; B: ${per('B', 'cpuUsPerReq', 1)}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
