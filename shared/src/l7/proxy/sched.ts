// The proxy worker's event-loop thread giving its CPU away (MEMBRANE_L7_WORKER_YIELD_US, off by
// default: a knob to A/B the keep-alive-10 tail in a quiet window). Read once, at start (the agent's
// environment reaches its workers). Loaded same-run A/Bs (bench:l7:ab, load 6-13) saw the mechanism
// (wrk's CPU waits behind the worker: 34-54 % of them without, 19 % and under 6 % with a yield every
// loop turn, bench:l7:sched), p99 better in 5 of 6 rounds in one run and 3 of 6 in the next, and
// +12-26 % CPU per request: not a default.
import { performance } from 'node:perf_hooks';
import koffi from 'koffi';

type Fn = (...args: unknown[]) => number;

/** MEMBRANE_L7_WORKER_YIELD_US (an experiment's knob, 0: off): once the event-loop thread has run this
 *  long without sleeping, it sleeps (1 µs) at the end of the loop turn. Why: a process the worker wakes
 *  (the client reading a response, the server a request) is put on the worker's CPU and waits there
 *  until the worker sleeps or its slice ends (1.4 ms here), while nginx's workers sleep right after
 *  writing. sched_yield() cannot give the CPU to another scheduling group (EEVDF's yield moves the
 *  task's deadline inside its own group, where the worker is alone); a sleep dequeues it. */
export const yieldUs = Number(process.env.MEMBRANE_L7_WORKER_YIELD_US) || 0;
let armed = false;
let sleeper: Fn | undefined;
/** When the thread last slept (ms, performance.now), and the loop's idle time then. */
let restedAt = 0;
let idleAt = 0;

function maybeYield(): void {
  armed = false;
  const elu = performance.eventLoopUtilization();
  const now = performance.now();
  if (elu.idle !== idleAt) {
    idleAt = elu.idle; // the loop blocked for events since: that was a sleep
    restedAt = now;
  } else if ((now - restedAt) * 1000 >= yieldUs) {
    sleeper!(1);
    restedAt = performance.now();
  }
}

/** Checks, once the current loop turn's callbacks are done (setImmediate: the check phase), whether
 *  the thread has run for yieldUs without a sleep, and then sleeps. */
export function armYield(): void {
  if (armed) return;
  if (!sleeper) {
    const c = koffi.load('libc.so.6');
    // PR_SET_TIMERSLACK 1 ns: the 1 µs sleep is not stretched to the default 50 µs.
    (c.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)') as Fn)(
      29,
      1,
      0,
      0,
      0,
    );
    sleeper = c.func('int usleep(unsigned int usec)') as Fn;
  }
  armed = true;
  setImmediate(maybeYield);
}
