// Merging the nodes' answers into one stream ordered by time. Pure.
//   history (no follow): each node answers with its own flows in time order; the relay merges them
//     and keeps the newest `number` (or the oldest, with `first`), as one node would;
//   follow: responses arrive from every node as they happen, a little out of order between nodes; a
//     sort buffer holds each one for a short window (or until the buffer is full) and releases them
//     oldest first. Hubble Relay does the same (sort-buffer-len-max, sort-buffer-drain-timeout).
import type { Timestamp } from '../flows/types.ts';

export interface Timed {
  time?: Timestamp;
}

/** Nanoseconds as a bigint: flows from one millisecond on two nodes still order exactly. */
export function timeNs(t: Timestamp | undefined): bigint {
  return t ? BigInt(t.seconds ?? 0) * 1_000_000_000n + BigInt(t.nanos ?? 0) : 0n;
}

export function byTime(a: Timed, b: Timed): number {
  const x = timeNs(a.time),
    y = timeNs(b.time);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Every node's list, each already in time order, as one list in time order (stable between nodes). */
export function mergeOrdered<T extends Timed>(lists: T[][]): T[] {
  const out: T[] = [];
  const at = lists.map(() => 0);
  const heads = lists.map((l) => (l.length ? timeNs(l[0].time) : undefined));
  for (;;) {
    let best = -1;
    for (let i = 0; i < lists.length; i++) {
      const h = heads[i];
      if (h !== undefined && (best < 0 || h < heads[best]!)) best = i;
    }
    if (best < 0) return out;
    out.push(lists[best][at[best]++]);
    heads[best] = at[best] < lists[best].length ? timeNs(lists[best][at[best]].time) : undefined;
  }
}

/** The newest `number` flows of a merged history (the oldest with `first`); 0 keeps all. Responses that
 *  are no flow (lost events, node status) stay where they fall in the kept range. */
export function selectHistory<T extends Timed & { flow?: unknown }>(merged: T[], number: number, first: boolean): T[] {
  if (!number) return merged;
  let flows = 0;
  if (first) {
    const out: T[] = [];
    for (const r of merged) {
      out.push(r);
      if (r.flow && ++flows === number) break;
    }
    return out;
  }
  // From the Nth flow counted from the end (everything, when there are fewer).
  let start = 0;
  for (let i = merged.length - 1; i >= 0; i--) {
    if (merged[i].flow && ++flows === number) {
      start = i;
      break;
    }
  }
  return merged.slice(start);
}

/** Holds followed responses for `windowMs` and releases them in time order. */
export class SortBuffer<T extends Timed> {
  private items: T[] = [];

  constructor(
    private readonly windowMs: number,
    private readonly maxLen: number,
  ) {}

  get size(): number {
    return this.items.length;
  }

  push(r: T): void {
    // Mostly in order already: search from the end.
    const t = timeNs(r.time);
    let i = this.items.length;
    while (i > 0 && timeNs(this.items[i - 1].time) > t) i--;
    this.items.splice(i, 0, r);
  }

  /** Those older than now - window, and beyond the length limit the oldest anyway. */
  drain(nowMs: number): T[] {
    const cutoff = BigInt(Math.floor((nowMs - this.windowMs) * 1e6));
    let n = 0;
    while (n < this.items.length && (timeNs(this.items[n].time) <= cutoff || this.items.length - n > this.maxLen)) n++;
    return this.items.splice(0, n);
  }

  flush(): T[] {
    return this.items.splice(0);
  }
}
