// npm run bench:l7:floor — not a test: bench:l7's world (l7-world.ts) plus a plain Node byte pipe
// (l7-pipe.ts: the workers' RawSockets, no HTTP parsing, no policy, no records, one upstream
// connection per client connection) on the node in front of the same server, interleaved with the
// L7 proxy and the nginx peer, keep-alive only (the pipe pools nothing). Its CPU per request is
// what any proxy on Node's libuv handles pays before doing its job: the floor under the L7 workers'.
// FLOOR_CONNS (default 10,50), FLOOR_ROUNDS (2), FLOOR_SECONDS (5); FLOOR_KOFFI=1 adds io-koffi-pipe.ts,
// the same pipe on a koffi epoll loop without libuv (what libuv's callbacks cost per request).
import { spawn } from 'node:child_process';
import os from 'node:os';
import { startL7World } from './l7-world.ts';
import { type Sample, wrk } from './l7-wrk.ts';
import { median } from './lib.ts';

const CONNS = (process.env.FLOOR_CONNS ?? '10,50').split(',').map(Number);
const ROUNDS = Number(process.env.FLOOR_ROUNDS ?? 2);
const SECONDS = Number(process.env.FLOOR_SECONDS ?? 5);
delete process.env.NODE_EXTRA_CA_CERTS;

async function main(): Promise<void> {
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const gw = new URL(world.urls.nginx).hostname;
  const port = 20000 + Math.floor(Math.random() * 2000);
  const start = (script: string, p: number) =>
    spawn(process.execPath, ['--import', 'tsx', script, gw, String(p), world.ip, '80'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pipe = start('scripts/bench/l7-pipe.ts', port);
  const koffi = process.env.FLOOR_KOFFI === '1' ? start('scripts/bench/io-koffi-pipe.ts', port + 1) : undefined;
  const variants = koffi ? (['l7', 'nginx', 'pipe', 'koffi'] as const) : (['l7', 'nginx', 'pipe'] as const);
  try {
    for (const p of [pipe, koffi]) if (p) await new Promise((r) => p.stdout!.once('data', r));
    const urls: Record<string, string> = {
      l7: world.urls.l7,
      nginx: world.urls.nginx,
      pipe: `http://${gw}:${port}/`,
      koffi: `http://${gw}:${port + 1}/`,
    };
    const pids: Record<string, number[]> = {
      l7: await world.proxyPids('l7'),
      nginx: await world.proxyPids('nginx'),
      pipe: [pipe.pid!],
      koffi: koffi ? [koffi.pid!] : [],
    };
    for (const v of variants) await wrk(world.client, urls[v], 10, 'keep-alive', 3); // warm-up
    const rows: string[] = [];
    for (const c of CONNS) {
      const s: Record<string, Sample[]> = { l7: [], nginx: [], pipe: [], koffi: [] };
      for (let r = 0; r < ROUNDS; r++)
        for (const v of variants) {
          const agent = v === 'l7' ? world.agentPid() : undefined;
          s[v].push(await wrk(world.client, urls[v], c, 'keep-alive', SECONDS, pids[v], agent));
        }
      const m = (v: string, k: 'rps' | 'p99' | 'cpuUsPerReq') => median(s[v].map((x) => x[k] as number));
      rows.push(
        `| ${c} | ${variants.map((v) => `${Math.round(m(v, 'rps'))} / ${m(v, 'p99').toFixed(2)} / ${m(v, 'cpuUsPerReq').toFixed(0)}`).join(' | ')} |`,
      );
    }
    console.log(`keep-alive, ${ROUNDS} rounds × ${SECONDS} s, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`);
    console.log(`| conns | L7 req/s / p99 ms / CPU µs per request | nginx | Node pipe |${koffi ? ' koffi epoll pipe |' : ''}`);
    console.log(`|---|---|---|---|${koffi ? '---|' : ''}`);
    for (const r of rows) console.log(r);
  } finally {
    pipe.kill('SIGTERM');
    koffi?.kill('SIGTERM');
    await world.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
