// What the L7 metrics count (requests by method, status and verdict; latency buckets per endpoint;
// refused connections), summed in the proxy worker as it answers and handed to the agent as deltas
// beside its record batches (worker.ts flush), where metrics.ts adds them to its series. Summed
// here rather than counted by the agent from the records: the agent's work per batch no longer grows
// with the requests in it (its share of a CPU is what sets the keep-alive tail, README), and the
// counts stay exact when records are lost (an agent that did not keep up, a batch over the buffer
// bound, a worker between two agents). Pure.

/** Upper bounds of the latency buckets, seconds (membrane_l7_request_duration_seconds). */
export const L7_LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** One number for a method code, status and verdict code (records.ts): the requests counter's key. */
export const requestKey = (methodCode: number, status: number, verdict: number): number =>
  (methodCode * 1000 + status) * 4 + verdict;

export const keyMethodCode = (key: number): number => Math.floor(key / 4000);
export const keyStatus = (key: number): number => Math.floor(key / 4) % 1000;
export const keyVerdict = (key: number): number => key % 4;

/** Latency counts of one endpoint: per bucket (not cumulative; the last one is over the largest bound). */
export interface LatencyCounts {
  buckets: number[];
  sum: number;
  count: number;
}

/** Counts since the last take(), as the worker sends them (frames.ts, { t: 'counts' }). */
export interface CountsDelta {
  /** [requestKey, how many] */
  requests: [number, number][];
  /** [endpoint id, its counts] */
  latency: [number, LatencyCounts][];
  refused: number;
}

const isCountPair = (p: unknown): boolean =>
  Array.isArray(p) && p.length === 2 && Number.isFinite(p[0]) && Number.isFinite(p[1]) && p[1] >= 0;
const isLatencyEntry = (p: unknown): boolean =>
  Array.isArray(p) &&
  p.length === 2 &&
  Number.isFinite(p[0]) &&
  typeof p[1] === 'object' &&
  p[1] !== null &&
  Array.isArray(p[1].buckets) &&
  p[1].buckets.every((n: unknown) => Number.isFinite(n)) &&
  Number.isFinite(p[1].sum) &&
  Number.isFinite(p[1].count);

/** Whether a message from a worker has the shape of a CountsDelta (a worker of another version may differ). */
export function isCountsDelta(d: unknown): d is CountsDelta {
  const c = d as CountsDelta;
  return (
    typeof d === 'object' &&
    d !== null &&
    Array.isArray(c.requests) &&
    c.requests.every(isCountPair) &&
    Array.isArray(c.latency) &&
    c.latency.every(isLatencyEntry) &&
    Number.isFinite(c.refused)
  );
}

/** The bucket index of a latency in seconds (L7_LATENCY_BUCKETS.length: over the largest bound). */
export function bucketOf(seconds: number): number {
  let i = 0;
  while (i < L7_LATENCY_BUCKETS.length && seconds > L7_LATENCY_BUCKETS[i]) i++;
  return i;
}

export class RequestCounts {
  private readonly requests = new Map<number, number>();
  private readonly latency = new Map<number, LatencyCounts>();
  private refused = 0;
  private any = false;
  /** The last key and endpoint: a worker's responses are mostly alike. */
  private lastKey = -1;
  private lastCount = 0;
  private lastEndpoint = 0;
  private lastLatency: LatencyCounts | undefined;

  /** A response: counted by method, status and verdict; its latency for `endpoint` (0: none). */
  response(methodCode: number, status: number, verdict: number, endpoint: number, latencyNs: number): void {
    const key = requestKey(methodCode, status, verdict);
    if (key !== this.lastKey) {
      this.settle();
      this.lastKey = key;
    }
    this.lastCount++;
    this.any = true;
    if (!endpoint) return;
    let l = endpoint === this.lastEndpoint ? this.lastLatency : this.latency.get(endpoint);
    if (!l) this.latency.set(endpoint, (l = { buckets: new Array(L7_LATENCY_BUCKETS.length + 1).fill(0), sum: 0, count: 0 }));
    this.lastEndpoint = endpoint;
    this.lastLatency = l;
    const seconds = latencyNs / 1e9;
    l.buckets[bucketOf(seconds)]++;
    l.sum += seconds;
    l.count++;
  }

  /** Connections refused (source-limit.ts). */
  refusals(n: number): void {
    this.refused += n;
    this.any = true;
  }

  /** The counts since the last take(), or undefined when there are none; starts over. */
  take(): CountsDelta | undefined {
    if (!this.any) return undefined;
    this.settle();
    const delta: CountsDelta = { requests: [...this.requests], latency: [...this.latency], refused: this.refused };
    this.requests.clear();
    this.latency.clear();
    this.lastEndpoint = 0;
    this.lastLatency = undefined;
    this.refused = 0;
    this.any = false;
    return delta;
  }

  private settle(): void {
    if (this.lastCount) this.requests.set(this.lastKey, (this.requests.get(this.lastKey) ?? 0) + this.lastCount);
    this.lastCount = 0;
    this.lastKey = -1;
  }
}
