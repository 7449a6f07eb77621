// Node's libuv loop as the worker's epoll loop (epoll-loop.ts) needs it: its backend fd, and when its
// next timer is due. Through koffi from the running node binary, which exports libuv's symbols
// (koffi.load(null): the executable's own).
//
// When the next timer is due: libuv's uv_backend_timeout cannot say from inside an immediate (Node's
// idle handle is active then: it answers 0). Two ways to know:
// - read it where libuv keeps it: the loop's timer heap (its soonest timer's heap node, whose timeout
//   follows it) against the loop's time; uv/unix.h's public layout, the same through libuv 1.x. Three
//   native calls, ~1-2 µs.
// - walk the loop's handles and ask each active timer (uv_walk, uv_timer_get_due_in): ~25 µs with the
//   17 handles of a worker-like process (a koffi callback per handle), so only the fallback, used when
//   the heap read does not give what the walk gives at start (another libuv layout).
// Never a handle kept from an earlier walk: a timer handle closed since is freed by its close callback in
// libuv's own turn (e.g. the uv_timer_t Node's platform makes for each of V8's delayed tasks), and
// asking it again read through a dangling pointer: SIGSEGV at 0x220, loop->time through a NULL loop.
// Handles were kept for up to a second until 4c0aa57: that killed a worker now and then right after a
// SIGSTOP/SIGCONT or an agent restart (l7-restart, 3 of 21 runs under load; strace: SEGV_MAPERR at 0x220).
import koffi from 'koffi';

type Fn = (...args: unknown[]) => number;

const self = koffi.load(null as unknown as string);
const UvWalkCb = koffi.proto('void uv_walk_cb(void *handle, void *arg)');
const uvDefaultLoop = self.func('void *uv_default_loop()') as (...args: unknown[]) => unknown;
const uvBackendFd = self.func('int uv_backend_fd(void *loop)') as Fn;
const uvUpdateTime = self.func('void uv_update_time(void *loop)') as Fn;
const uvWalk = self.func('void uv_walk(void *loop, uv_walk_cb *cb, void *arg)') as Fn;
const uvHandleType = self.func('int uv_handle_get_type(void *handle)') as Fn;
const uvIsActive = self.func('int uv_is_active(void *handle)') as Fn;
const uvTimerDueIn = self.func('uint64_t uv_timer_get_due_in(void *handle)') as Fn;

const UV_TIMER = 13;
/** uv_loop_t on Linux x86-64 (uv/unix.h, libuv 1.46): timer_heap.min, timer_heap.nelts,
 *  timer_counter (bumped by every uv_timer_start), time. */
const LOOP_HEAP_MIN = 520;
const LOOP_HEAP_NELTS = 528;
const LOOP_TIMER_COUNTER = 536;
const LOOP_TIME = 544;
const LOOP_SIZE = 552;
/** uv_timer_t: `void *heap_node[3]` at 104 (where the heap's min points), then `uint64_t timeout`. */
const TIMER_HEAP_NODE = 104n;
const HEAP_NODE_TO_TIMEOUT = 24;

const loop = uvDefaultLoop();
export const backendFd = (): number => uvBackendFd(loop);

/** The loop's own fields (time, the heap's element count), read without a call. */
const loopWords = new BigUint64Array(koffi.view(loop, LOOP_SIZE));
const loopInts = new Uint32Array(loopWords.buffer);

/** ms until the soonest active timer (loop->time must be current), from the heap; Infinity: none. */
function heapDueIn(): number {
  if (loopInts[LOOP_HEAP_NELTS / 4] === 0) return Infinity;
  const min = koffi.decode(loop, LOOP_HEAP_MIN, 'void *');
  if (min === null) return Infinity;
  const timeout = Number(koffi.decode(min, HEAP_NODE_TO_TIMEOUT, 'uint64_t'));
  const due = timeout - Number(loopWords[LOOP_TIME / 8]);
  return Math.max(due, 0);
}

let walkDue = Infinity;
let walkActive = 0;
/** The active timer handles' addresses, collected by heapReadable's walk only. */
let walkedTimers: Set<bigint> | undefined;
const onWalk = koffi.register((handle: unknown) => {
  if (uvHandleType(handle) === UV_TIMER && uvIsActive(handle)) {
    walkActive++;
    walkedTimers?.add(koffi.address(handle));
    const due = Number(uvTimerDueIn(handle));
    if (due < walkDue) walkDue = due;
  }
}, koffi.pointer(UvWalkCb));

/** ms until the soonest active timer (loop->time must be current), from a walk of every handle. */
function walkDueIn(): number {
  walkDue = Infinity;
  walkActive = 0;
  uvWalk(loop, onWalk, null);
  return walkDue;
}

/** Whether the heap read agrees with the walk, with a timer of our own certainly active (a JavaScript
 *  timer arms Node's one timer handle at once when it is the soonest; whichever is, one is active). */
function heapReadable(): boolean {
  const probe = setTimeout(() => undefined, 987_654);
  try {
    uvUpdateTime(loop);
    walkedTimers = new Set();
    const walked = walkDueIn();
    // Read through the heap's min only when it points into a timer the walk found: on a libuv with
    // another layout the words read are something else, and a pointer made of them must not be followed.
    const min = loopWords[LOOP_HEAP_MIN / 8];
    return (
      walkActive === loopInts[LOOP_HEAP_NELTS / 4] &&
      walked !== Infinity &&
      walkedTimers.has(min - TIMER_HEAP_NODE) &&
      walked === heapDueIn()
    );
  } finally {
    walkedTimers = undefined;
    clearTimeout(probe);
  }
}

let source: 'heap' | 'walk' | undefined;
/** How nextTimerDueIn knows: 'heap' (the read) or 'walk' (the fallback); checked at the first call (a
 *  worker on libuv's handles, io.ts, loads this module and never asks). */
export function timerSource(): 'heap' | 'walk' {
  source ??= heapReadable() ? 'heap' : 'walk';
  return source;
}

/** Changes whenever a libuv timer is started or restarted (the low word of loop->timer_counter; a
 *  plain memory read): what the loop's callbacks ran may have set a timer sooner than the deadline the
 *  loop waits for. Node re-arms its one timer handle when a JavaScript timer is due before the others.
 *  Constant on the walk fallback (the layout is not known there). */
export function timerStarts(): number {
  return source === 'heap' ? loopInts[LOOP_TIMER_COUNTER / 4] : 0;
}

/** ms until libuv's next timer is due (Infinity: none active). */
export function nextTimerDueIn(): number {
  const heap = timerSource() === 'heap';
  uvUpdateTime(loop);
  return heap ? heapDueIn() : walkDueIn();
}
