// The Node/V8 flags the agent starts its L7 proxy workers with (manager.ts spawnWorker): a young
// generation sized for the proxy's allocation rate, and the operator's own through
// MEMBRANE_L7_WORKER_NODE_FLAGS. Pure.

/** A young generation of 16-32 MiB per semi-space instead of V8's adaptive default (which stays near
 *  1-6 MiB at the worker's allocation rate): almost everything a request allocates dies young, so a
 *  scavenge costs about the same whatever the space's size, and a larger space means several times
 *  fewer of them. Same-run A/B against nginx (docs/performance-history.md, L7 HTTP): proxy CPU per one-request
 *  connection 101-110 -> 76-81 µs, and every req/s and p99 goal met in one of two runs.
 *  Scavenges stay parallel (V8's default). Tried and not kept (1ebfdd1, reverted): --no-parallel-scavenge,
 *  each scavenge on the worker's own thread. Under load it shortened pauses (helpers waiting for a CPU:
 *  median 0.74 -> 0.35 ms at load 8-10), but in the quiet window (bench:l7:ab, 8 rounds, 10 connections)
 *  it cost keep-alive CPU per request 18.2 -> 19.4 µs (1.07x, higher in 6 of 8 rounds) and moved
 *  nothing in one request per connection (CPU 0.985x, p99 1.16 vs 1.20 ms). (bench:l7's keep-alive 50
 *  at 0.77x and 0.79x nginx's req/s in two runs with it was the window's, not the flag's: 0.78x without
 *  it right after.) It can still be given through MEMBRANE_L7_WORKER_NODE_FLAGS. */
const WORKER_GC_FLAGS = ['--min-semi-space-size=16', '--max-semi-space-size=32'];

/** MEMBRANE_L7_WORKER_NODE_FLAGS: extra Node/V8 flags for the workers only (space-separated, read at
 *  each spawn, after the defaults so they can override them), for benchmarks and profiles (e.g.
 *  --trace-gc, a GC setting to A/B); the agent's own NODE_OPTIONS reach the workers too but also the
 *  agent, and take few V8 flags. */
export function workerNodeFlags(): string[] {
  return [...WORKER_GC_FLAGS, ...(process.env.MEMBRANE_L7_WORKER_NODE_FLAGS ?? '').split(/\s+/).filter(Boolean)];
}
