// A process's V8 --trace-gc lines as events on the wall clock, for the benches that line a process's
// GCs up with their own runs (l7-close-world.ts CW_GC). V8 stamps each line with ms since its isolate
// started; the process's start (/proc/PID/stat, 10 ms ticks) stands in for that, so a time is good to a
// few tens of ms. V8 writes the lines through stdio's buffer: the last few KiB reach the log only
// when more follow (or at a clean exit).
import fs from 'node:fs';

export interface GcEvent {
  /** Wall-clock ms (Date.now()'s scale). */
  t: number;
  kind: string;
  /** Heap used after it, MB. */
  heap: number;
  /** Pause on the main thread, ms. */
  ms: number;
  /** Incremental marking steps before it (also on the main thread, spread over the marking), ms. */
  steps: number;
  /** V8's reason (allocation failure, memory reducer, finalize incremental marking, ...). */
  reason: string;
}

/** When the process started (Date.now()'s scale). */
export function processStartMs(pid: number): number {
  const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const ticks = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[19]);
  const up = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  return Date.now() - up * 1000 + ticks * 10;
}

/** Where a process's stdout goes (its log file), read while it runs. */
export function stdoutPath(pid: number): string | undefined {
  try {
    return fs.readlinkSync(`/proc/${pid}/fd/1`);
  } catch {
    return undefined;
  }
}

/** The GCs of `pid` (started at `startMs`) in `log`: only its own lines (the log may be shared). */
export function gcEvents(log: string, pid: number, startMs: number): GcEvent[] {
  const re = new RegExp(
    String.raw`^\[${pid}:[^\]]*\]\s+(\d+) ms: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Compact)[^,\d]*?([\d.]+) \(([\d.]+)\) -> ([\d.]+) \(([\d.]+)\) MB, (?:pooled: [\d.]+ MB, )?([\d.]+) \/ ([\d.]+) ms\s+(?:\(\+ ([\d.]+) ms in \d+ steps[^)]*\) )?\(average mu[^)]*\) ([^;]*);`,
    'gm',
  );
  return [...fs.readFileSync(log, 'utf8').matchAll(re)].map((m) => ({
    t: startMs + Number(m[1]),
    kind: m[2],
    heap: Number(m[5]),
    ms: Number(m[7]),
    steps: Number(m[9] ?? 0),
    reason: m[10].trim(),
  }));
}

/** Count, summed and largest pause, and the kinds other than Scavenge (with their reasons). */
export function gcSummary(gcs: GcEvent[]): string {
  if (!gcs.length) return 'none';
  const sum = gcs.reduce((a, g) => a + g.ms, 0);
  const max = Math.max(...gcs.map((g) => g.ms));
  const major = gcs.filter((g) => g.kind !== 'Scavenge').map((g) => `${g.kind} ${g.ms}ms (${g.reason})`);
  return `${gcs.length} / ${sum.toFixed(1)} / ${max.toFixed(1)} ms, ${gcs[gcs.length - 1].heap} MB${major.length ? `; ${major.join(', ')}` : ''}`;
}
