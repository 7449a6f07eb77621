// An epoll loop of the proxy worker's own, through koffi (libc's epoll_wait), for the worker's
// connections (io.ts: the default; MEMBRANE_L7_WORKER_IO=libuv for libuv's handles): every read of a connection through libuv is
// a C++ -> JavaScript callback with Node's stream_base bookkeeping around it, and a byte pipe on such a
// loop measured 10 / 7 against 12 / 10 µs CPU per keep-alive request at 10 / 50 connections on libuv
// handles (scripts/bench/io-koffi-pipe.ts, l7-floor.ts).
//
// It shares the thread with Node's event loop, which still runs the worker's timers, its control
// connection and its signals: libuv's own epoll fd (uv_backend_fd, exported by the node binary) is in
// our epoll set. The loop blocks in our epoll_wait from the check phase (a setImmediate) and dispatches
// our sockets' events inline; when libuv's fd is readable (its sockets, signals, thread-pool
// completions), or its next timer is due, it returns to Node, whose next turn then polls without
// blocking (the setImmediate that re-enters is pending) and runs what is due before we block again.
// When libuv's next timer is due comes from uv-loop.ts, at every entry.
import { performance } from 'node:perf_hooks'; // not the global accessor: raw-socket.ts says why
import koffi from 'koffi';
import { EINTR, libc } from './libc.ts';
import { backendFd, nextTimerDueIn, timerStarts } from './uv-loop.ts';

export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EPOLL_CLOEXEC = 0o2000000;
/** Our wait never blocks longer than this: anything libuv would run without its fd becoming readable
 *  or a timer start we see (a timer on uv-loop.ts's walk fallback) waits at most this long. */
const MAX_WAIT_MS = 250;
const MAX_EVENTS = 256;

/** What a watched fd gets: its events, when the registration's generation is still its (a closed fd's
 *  number comes back for the next socket, while events of the old one may still be in the batch). */
export interface EpollHandler {
  gen: number;
  onEvents(mask: number): void;
}

const { epollCreate, epollCtl, epollWait } = libc();

/** struct epoll_event is packed on x86-64: u32 events, u64 data (here: fd, then the generation). */
const ctlEvent = new Uint32Array(3);
const events = new Uint32Array(3 * MAX_EVENTS);
const handlers: (EpollHandler | undefined)[] = [];
let watched = 0;
let nextGen = 1;
/** Made by the first watch(): a worker on libuv (io.ts) loads this module and never uses it. */
let ep = -1;
let uvFd = -1;

function init(): void {
  ep = epollCreate(EPOLL_CLOEXEC);
  if (ep < 0) throw new Error(`epoll_create1: errno ${koffi.errno()}`);
  uvFd = backendFd();
  if (ctl(EPOLL_CTL_ADD, uvFd, EPOLLIN, 0) < 0) throw new Error(`epoll_ctl libuv fd: errno ${koffi.errno()}`);
}

/** Watches fd for `mask` (0: errors and hang-ups only) on behalf of h (its gen is set here). */
export function watch(fd: number, mask: number, h: EpollHandler): number {
  if (ep < 0) init();
  h.gen = nextGen = (nextGen + 1) >>> 0 || 1;
  handlers[fd] = h;
  watched++;
  const r = ctl(EPOLL_CTL_ADD, fd, mask, h.gen);
  if (r < 0) {
    handlers[fd] = undefined;
    watched--;
    return r;
  }
  if (!running) start();
  return 0;
}

/** A new interest mask for a watched fd (negative: errno). */
export function modify(fd: number, mask: number, h: EpollHandler): number {
  return ctl(EPOLL_CTL_MOD, fd, mask, h.gen);
}

/** Takes fd out of the set but keeps its handler (a paused socket hung up: epoll reports a hang-up
 *  whatever the mask, every wait); watchAgain puts it back. */
export function park(fd: number): void {
  ctl(EPOLL_CTL_DEL, fd, 0, 0);
}
export function watchAgain(fd: number, mask: number, h: EpollHandler): number {
  return ctl(EPOLL_CTL_ADD, fd, mask, h.gen);
}

/** Forgets fd, before the caller closes it (closing removes it from the set by itself). */
export function unwatch(fd: number, h: EpollHandler): void {
  if (handlers[fd] !== h) return;
  handlers[fd] = undefined;
  watched--;
}

function ctl(op: number, fd: number, mask: number, gen: number): number {
  ctlEvent[0] = mask;
  ctlEvent[1] = fd;
  ctlEvent[2] = gen;
  return epollCtl(ep, op, fd, ctlEvent) < 0 ? -koffi.errno() : 0;
}

// ---- running beside Node's event loop ------------------------------------------------------------

let running = false;
/** Node's queue of process.nextTick callbacks and promise jobs, run after each batch of events (Node
 *  runs them after every callback it makes into JavaScript; ours are all inside one). */
const runTicks = (process as unknown as { _tickCallback: () => void })._tickCallback;

function start(): void {
  running = true;
  setImmediate(run);
}

/** The loop (a check-phase callback): our sockets' events until libuv has something to run. */
function run(): void {
  if (!watched) {
    running = false; // nothing of ours: Node's own loop alone, until a socket is watched again
    return;
  }
  // Again after a throw too (a socket's listener, or epoll_wait failing): a process that survives the
  // exception (an uncaughtException handler that goes on) would otherwise never poll its sockets again.
  try {
    let deadline = performance.now() + nextTimerDueIn();
    let starts = timerStarts();
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      const n = epollWait(ep, events, MAX_EVENTS, left > MAX_WAIT_MS ? MAX_WAIT_MS : Math.ceil(left));
      if (n < 0) {
        if (koffi.errno() === EINTR) break; // a signal: Node's handler wrote to libuv's fd
        throw new Error(`epoll_wait: errno ${koffi.errno()}`);
      }
      if (n === 0) {
        if (left > MAX_WAIT_MS) break; // the longest wait: look at libuv's handles again
        continue;
      }
      let uv = false;
      for (let i = 0; i < n; i++) {
        const fd = events[3 * i + 1];
        if (fd === uvFd) {
          uv = true;
          continue;
        }
        const h = handlers[fd];
        if (h !== undefined && h.gen === events[3 * i + 2]) h.onEvents(events[3 * i]);
      }
      runTicks();
      if (uv || !watched) break;
      if (timerStarts() !== starts) {
        // What ran set a timer (a record flush, a linger, a connect timeout), perhaps due before the
        // deadline: without this it waited until libuv's fd woke us for something else (V8's GC tasks
        // mostly; with a young generation large enough to leave those a second apart, a 50 ms timer set
        // in a data callback ran 0.5-1.9 s late: l7-epoll-timers.test.ts).
        starts = timerStarts();
        deadline = performance.now() + nextTimerDueIn();
      }
    }
  } finally {
    setImmediate(run);
  }
}
