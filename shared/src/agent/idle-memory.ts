// Memory back to the node once the agent goes quiet after a burst of API work. Each request (a CNI
// ADD or DEL, a policy import, an endpoint list) leaves garbage in the V8 heap and in malloc; V8
// collects it when it needs the room, and even then keeps the pages it grew into, and glibc keeps
// freed chunks in its arenas: the agent's RSS grew tens of KiB per pod that a forced GC showed it
// was not using (bench:scale). So when no request has come for `idleMs`, full GCs and then
// malloc_trim(0) hand both back; and once more when the quiet lasts `deepIdleMs`, a scavenge: V8 shrinks its young
// generation (up to 2 x 16 MiB, resident as far as the last burst used it) only at a GC that finds
// the allocation rate low over its 5 s window (Node 20: new space 32 -> 1 MiB physical when the GC
// runs 5.2 s after a burst, unchanged at 4 s). Never on a request's path: timers after the last one,
// at most once per `minIntervalMs`, and only when there was work since the last time and something to
// gain: the give-back's cost grows with the heap, not with what it frees (with 10,000 rules one held
// the loop ~600 ms, for one pod's ADD), so the quick one is skipped while the RSS has grown less than
// `minGrowthBytes` since the last one, and the deep one while the young generation is small.
import v8 from 'node:v8';
import vm from 'node:vm';
import koffi from 'koffi';
import type { Logger } from '../log.ts';
import type { AgentStatus } from '../types.ts';

export interface IdleMemoryOptions {
  /** Quiet time after the last request before memory is given back. */
  idleMs: number;
  /** At most one give-back per this long (a request every idleMs + 1 ms must not mean a GC each). */
  minIntervalMs: number;
  /** Quiet time after which a second give-back lets V8 shrink its young generation (> 5 s). */
  deepIdleMs: number;
  /** The quick give-back only once the RSS has grown this much since the last give-back ended. */
  minGrowthBytes: number;
  /** The deep give-back only while the young generation holds this much physical memory. */
  minYoungBytes: number;
  log?: Logger;
}

export interface IdleMemory {
  /** A request arrived (cheap: a timestamp, and a timer when none is set). */
  touch(): void;
  /** How often memory was given back (and skipped as not worth it), and what the last time gained. */
  status(): { trims: number; skips: number; lastFreedBytes: number; lastMs: number };
  stop(): void;
}

type Gc = (options?: { type: 'major' | 'minor' }) => void;
/** V8's gc() without --expose-gc on the command line (the agent is started as a script). */
function exposedGc(): Gc {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as Gc;
}

let libc: ReturnType<typeof koffi.load> | undefined | null;
function glibc(): ReturnType<typeof koffi.load> | undefined {
  if (libc === undefined) {
    try {
      libc = koffi.load('libc.so.6');
    } catch {
      libc = null; // not glibc: the GC alone
    }
  }
  return libc ?? undefined;
}

let mallocTrim: ((pad: number) => number) | undefined;
function trimMalloc(): void {
  const lib = glibc();
  if (!lib) return;
  mallocTrim ??= lib.func('int malloc_trim(size_t pad)') as (pad: number) => number;
  mallocTrim(0);
}

const M_ARENA_MAX = -8;
/** One malloc arena for the agent's threads from now on (call first thing at start). glibc gives each
 *  thread that contends for malloc an arena of its own (up to 8 per CPU), and memory freed into one
 *  stays there, fragmented, past malloc_trim: V8's background threads and libuv's pool grew four
 *  arenas by ~10 MiB over 300 ADDs (bench:scale --pods 300, /proc/PID/smaps). The agent's threads
 *  malloc little next to its event loop; contention on one arena is not what bounds it. */
export function limitMallocArenas(): void {
  const lib = glibc();
  if (!lib) return;
  (lib.func('int mallopt(int param, int value)') as (p: number, v: number) => number)(M_ARENA_MAX, 1);
}

/** At most one full GC per round of V8's memory reducer instead of three (call first thing at start;
 *  V8 reads this flag when the reducer decides, unlike --no-memory-reducer). The reducer arms after
 *  every full GC, the give-backs' own included, and while it finds the allocation rate low, which the
 *  allocation-free flow event path keeps it at even under a node's full connection rate, it runs more
 *  full GCs 8 s apart: 'Mark-Compact (reduce)', ~50-250 ms of the agent's CPU each with 10,000 rules
 *  in the heap (--trace-gc), taken from the pods beside it. After a give-back, which compacted the heap
 *  and trimmed malloc already, the later ones gain next to nothing. */
export function singleReducerGc(): void {
  v8.setFlagsFromString('--memory-reducer-single-gc');
}

/** Physical memory of V8's young generation (the deep give-back's target). */
function youngBytes(): number {
  return v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.physical_space_size ?? 0;
}

export function idleMemory(o: IdleMemoryOptions): IdleMemory {
  const gc = exposedGc();
  let lastRequest = 0;
  let lastTrim = 0;
  let dirty = false;
  /** The quick give-back ran; the deep one follows if the quiet lasts. */
  let deep = false;
  let timer: NodeJS.Timeout | undefined;
  let timerAt = 0;
  let stopped = false;
  const stats = { trims: 0, skips: 0, lastFreedBytes: 0, lastMs: 0 };
  /** The RSS when the last give-back ended (0: none yet, the first one always runs). */
  let rssAfter = 0;

  /** full: the old generation and malloc's arenas; young: the deep one, only the young generation (a
   *  scavenge shrinks it as well as full GCs do: Node 20, 32 -> 1 MiB 5.6 s after a burst, in 5.7 ms
   *  against 92 ms for two full GCs beside a 300,000-object old generation; the quick one already
   *  gave the rest back and, with no request since, the old generation has not grown). */
  const giveBack = (kind: 'full' | 'young') => {
    const rss0 = process.memoryUsage.rss();
    const t0 = performance.now();
    if (kind === 'young') gc({ type: 'minor' });
    else {
      // Twice: the first GC frees the objects, but the pages its sweeping emptied are released by the
      // next one (a Node 20 test: old space 34 -> 8 MiB only after a second gc()).
      gc();
      gc();
      trimMalloc();
    }
    stats.trims++;
    stats.lastMs = performance.now() - t0;
    rssAfter = process.memoryUsage.rss();
    stats.lastFreedBytes = rss0 - rssAfter;
    o.log?.debug({ freedBytes: stats.lastFreedBytes, ms: Math.round(stats.lastMs) }, 'idle: memory given back');
  };

  const skip = (grown: number) => {
    stats.skips++;
    o.log?.debug({ grownBytes: grown, youngBytes: youngBytes() }, 'idle: nothing worth giving back');
  };

  const arm = (ms: number) => {
    if (timer) clearTimeout(timer);
    timerAt = Date.now() + Math.max(ms, 1);
    timer = setTimeout(fire, Math.max(ms, 1));
    timer.unref();
  };
  const fire = () => {
    timer = undefined;
    if (stopped) return;
    const now = Date.now();
    if (dirty) {
      const wait = Math.max(lastRequest + o.idleMs, lastTrim + o.minIntervalMs) - now;
      if (wait > 0) return arm(wait);
      dirty = false;
      const grown = process.memoryUsage.rss() - rssAfter;
      if (grown >= o.minGrowthBytes || youngBytes() >= o.minYoungBytes) {
        lastTrim = now;
        giveBack('full');
      } else skip(grown);
      deep = true;
      return arm(lastRequest + o.deepIdleMs - now);
    }
    if (!deep) return;
    const wait = lastRequest + o.deepIdleMs - now;
    if (wait > 0) return arm(wait);
    deep = false;
    if (youngBytes() < o.minYoungBytes) return skip(process.memoryUsage.rss() - rssAfter);
    // Not counted against minIntervalMs, which spaces the full ones: a scavenge pushing the next
    // quick one 10 s past it put that one (~600 ms with 10,000 rules) seconds after the next requests.
    giveBack('young');
  };

  return {
    touch: () => {
      lastRequest = Date.now();
      dirty = true;
      // A timer set for the deep give-back is brought forward to the quick one.
      if (!stopped && (!timer || timerAt > lastRequest + o.idleMs)) arm(o.idleMs);
    },
    status: () => ({ ...stats }),
    stop: () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
    },
  };
}

/** The agent's memory as `membrane status` shows it, with what the idle give-back did so far. */
export function memoryStatus(idle?: IdleMemory): NonNullable<AgentStatus['memory']> {
  const m = process.memoryUsage();
  return {
    rssBytes: m.rss,
    heapUsedBytes: m.heapUsed,
    heapTotalBytes: m.heapTotal,
    externalBytes: m.external,
    idleTrims: idle?.status().trims ?? 0,
    idleSkips: idle?.status().skips ?? 0,
  };
}
