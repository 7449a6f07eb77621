// node --experimental-websocket --import tsx scripts/bench/l7-alloc.ts — not a test: what the L7 worker allocates per request,
// by function. Bytes allocated per request set how often the worker scavenges (its young generation is
// 16 MiB, WORKER_GC_FLAGS in l7/worker-flags.ts), and unlike a latency they do not move with the machine's
// load. In the bench:l7 world (l7-world.ts) the worker starts with an inspector on a loopback port of
// its own (--inspect=127.0.0.1:0 through MEMBRANE_L7_WORKER_NODE_FLAGS; the port read from its log);
// for each mode in ALLOC_MODES (close,keep-alive) a 3 s warm-up, then V8's sampling heap profiler
// (HeapProfiler.startSampling, counting objects that died young too) for ALLOC_SECONDS (5) of wrk at 10
// connections. Prints bytes per request, total and by function (the top ALLOC_TOP, 15; a line of the
// bundle, dist/bin/membrane-proxy, whose .map names the source).
// 2026-12-06 04:51-04:53 (537f4ae's worker, two runs at load 9-10): close 4,084 and 4,067 bytes per
// request, keep-alive 1,819 and 1,824, so at close a 16 MiB young generation fills every ~3,400
// requests (7 scavenges a second at 24,000 req/s). Close, per request: accept (worker.ts) 645,
// scanHeaders (head.ts) 579, requestSlot (queue.ts) 395, onRead (raw-socket.ts) 370, the listener's
// onconnection 238, parseRequestHead 152, toUpstream 142, parseResponseHead 112, record 110, the pool's
// give 109; close only: the request's "Connection: close" cut out (request-framing.ts consume:
// Buffer.concat of two subarrays, 256 + 191 + 97) and the response's "connection: close" added
// (response-framing.ts consume: a copy, 196 + 99), ~840 bytes, a fifth of the close path's.
// 07:20-07:34 with MEMBRANE_L7_WORKER_IO=epoll (load 6-10): 4c0aa57's worker close 3,942, keep-alive
// 1,596; after 5e24105 (head.ts's one Scan, no offsets array; "Connection: close" dropped in place)
// 3,098 and 1,008; after the next commit (one-slot arrays for the response queue and the replay list,
// the pool's entries as two arrays, the added close line copied without views, framing's LENGTH
// reused) 2,590 and 994. What is left at close is mostly accept (worker.ts, ~730) and the epoll
// socket's reads (onEvents, ~360 twice), then requestSlot's exchange, slot and view (~280).
import os from 'node:os';
import { startL7World } from './l7-world.ts';
import { type Mode, wrk } from './l7-wrk.ts';
import { inspectorOf } from './inspector.ts';

const MODES = (process.env.ALLOC_MODES ?? 'close,keep-alive').split(',') as Mode[];
const SECONDS = Number(process.env.ALLOC_SECONDS ?? 5);
const TOP = Number(process.env.ALLOC_TOP ?? 15);
delete process.env.NODE_EXTRA_CA_CERTS;
process.env.MEMBRANE_L7_WORKER_NODE_FLAGS = `${process.env.MEMBRANE_L7_WORKER_NODE_FLAGS ?? ''} --inspect=127.0.0.1:0`.trim();

interface Node {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: Node[];
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  try {
    const [worker] = await world.proxyPids('l7');
    const cdp = await inspectorOf(worker, 'worker');
    await cdp.call('HeapProfiler.enable');
    for (const mode of MODES) {
      await wrk(world.client, world.urls.l7, 10, mode, 3);
      await cdp.call('HeapProfiler.startSampling', {
        samplingInterval: 1024,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: true,
      });
      const s = await wrk(world.client, world.urls.l7, 10, mode, SECONDS);
      const { profile } = (await cdp.call('HeapProfiler.stopSampling')) as { profile: { head: Node } };
      const by = new Map<string, number>();
      let total = 0;
      // Node's and V8's own frames are named with the worker's frame that called them.
      const walk = (n: Node, caller: string) => {
        const f = n.callFrame;
        const name = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop()}:${f.lineNumber + 1}`;
        const ours = f.url.endsWith('membrane-proxy');
        const k = ours ? name : `${name} from ${caller}`;
        by.set(k, (by.get(k) ?? 0) + n.selfSize);
        total += n.selfSize;
        for (const c of n.children) walk(c, ours ? name : caller);
      };
      walk(profile.head, '-');
      console.log(
        `\n${mode}, 10 connections, ${SECONDS} s: ${s.requests} requests (${s.rps.toFixed(0)}/s), ${(total / s.requests).toFixed(0)} bytes allocated per request (sampled); load ${load0} → ${os.loadavg()[0].toFixed(2)}`,
      );
      console.log('| function (bundle line) | bytes per request | share |');
      console.log('|---|---|---|');
      for (const [k, v] of [...by].sort((a, b) => b[1] - a[1]).slice(0, TOP))
        console.log(`| ${k} | ${(v / s.requests).toFixed(0)} | ${((100 * v) / total).toFixed(1)} % |`);
    }
    cdp.close();
  } finally {
    await world.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
