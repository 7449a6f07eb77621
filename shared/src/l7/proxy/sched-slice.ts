// The worker's CPU time slice (Linux EEVDF: sched_setattr's sched_runtime for SCHED_OTHER, 6.12+),
// set only when MEMBRANE_L7_WORKER_SLICE_US asks (worker-main.ts): a knob to A/B, not a default.
// Why try it: at 10 keep-alive connections one worker uses ~0.9 of a CPU and rarely sleeps, so the
// scheduler treats it as a CPU hog and protects its slice (1.4 ms default on 2 CPUs, RUN_TO_PARITY)
// from the processes it wakes (the client, the server), and with a 250 Hz tick a slice's end is only
// noticed at a tick; every request in flight would then wait with them. The quiet runs' p99 there
// (2.7-2.9 ms against nginx's 0.8 ms, whose workers sleep between requests) has that size. A shorter
// slice does not change the worker's CPU share (vruntime), only how soon the others preempt it. Not
// shown yet: two loaded same-run A/Bs (250 µs against the default, load 4-20) could not tell them
// apart (each arm won one run); a quiet-window A/B is still to do. Best effort: an older kernel
// refuses it (EINVAL) and the worker runs as before.
import koffi from 'koffi';

const SYS_SCHED_SETATTR = 314; // x86_64
const SCHED_ATTR_SIZE = 56; // SCHED_ATTR_SIZE_VER1

/** Sets the calling thread's slice to `us` microseconds (0: the kernel's default); the errno when refused. */
export function setSchedSlice(us: number): number {
  if (process.arch !== 'x64') return -1;
  const c = koffi.load('libc.so.6');
  const syscall = c.func('long syscall(long nr, int pid, _In_ uint8_t *attr, unsigned int flags)') as (...a: unknown[]) => number;
  const attr = Buffer.alloc(SCHED_ATTR_SIZE);
  attr.writeUInt32LE(SCHED_ATTR_SIZE, 0); // size; policy SCHED_OTHER (0), no flags, nice 0
  attr.writeBigUInt64LE(BigInt(Math.round(us * 1000)), 24); // sched_runtime (ns): the slice
  return syscall(SYS_SCHED_SETATTR, 0, attr, 0) === 0 ? 0 : koffi.errno();
}
