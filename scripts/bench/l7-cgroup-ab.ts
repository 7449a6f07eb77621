// node --import tsx scripts/bench/l7-cgroup-ab.ts — not a test: bench:l7's two scheduling setups
// against each other in one world (l7-world.ts), round by round: every service in a cpu cgroup of
// its own (l7-cgroups.ts, BENCH_CGROUPS=1) and every process in its session's group (autogroup,
// bench:l7's default). Both proxies are measured in both setups, so what it reports is how each setup
// moves the L7/nginx ratios, not one proxy's luck. The order of setups, and of the proxies within a
// setup, alternates by round. CG_ROUNDS (4), CG_MODES (close,keep-alive), CG_CONNS (10,50),
// CG_SECONDS (5). Medians; the load average at start and end.
import os from 'node:os';
import { startL7World, type Variant } from './l7-world.ts';
import { type Mode, type Sample, wrk } from './l7-wrk.ts';
import { median } from './lib.ts';

const ROUNDS = Number(process.env.CG_ROUNDS ?? 4);
const MODES = (process.env.CG_MODES ?? 'close,keep-alive').split(',') as Mode[];
const CONNS = (process.env.CG_CONNS ?? '10,50').split(',').map(Number);
const SECONDS = Number(process.env.CG_SECONDS ?? 5);
delete process.env.NODE_EXTRA_CA_CERTS;

async function main(): Promise<void> {
  process.env.BENCH_CGROUPS = '1'; // the world makes the groups; each round puts the processes in or out
  const load0 = os.loadavg()[0].toFixed(2);
  const world = await startL7World('0');
  const groups = world.groups!;
  const samples = new Map<string, Sample[]>();
  const put = (k: string, s: Sample) => samples.set(k, [...(samples.get(k) ?? []), s]);
  try {
    for (const v of ['l7', 'nginx'] as Variant[]) for (const mode of MODES) await wrk(world.client, world.urls[v], 10, mode, 5);
    for (let r = 0; r < ROUNDS; r++) {
      for (const on of r % 2 ? [false, true] : [true, false]) {
        groups.setup(on);
        for (const mode of MODES)
          for (const conns of CONNS)
            for (const v of (r % 2 ? ['nginx', 'l7'] : ['l7', 'nginx']) as Variant[]) {
              const s = await wrk(world.client, world.urls[v], conns, mode, SECONDS, await world.proxyPids(v));
              put(`${on ? 'cgroups' : 'sessions'}|${mode}|${conns}|${v}`, s);
              process.stderr.write(
                `${on ? 'cgroups' : 'sessions'} ${mode} ${conns} ${v}: ${s.rps.toFixed(0)} req/s p99 ${s.p99} ms\n`,
              );
            }
      }
      process.stderr.write(`round ${r + 1}/${ROUNDS} done, load ${os.loadavg()[0].toFixed(2)}\n`);
    }
  } finally {
    await world.close();
  }
  const m = (k: string, f: keyof Sample) => median((samples.get(k) ?? []).map((s) => Number(s[f])));
  console.log(`${ROUNDS} rounds × ${SECONDS} s, medians; load ${load0} → ${os.loadavg()[0].toFixed(2)}`);
  console.log(
    '| setup | mode | conns | L7/nginx req/s | L7/nginx p99 | req/s L7 / nginx | p99 ms L7 / nginx | CPU µs/req L7 / nginx |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  for (const mode of MODES)
    for (const conns of CONNS)
      for (const setup of ['sessions', 'cgroups']) {
        const [l, n] = ['l7', 'nginx'].map((v) => `${setup}|${mode}|${conns}|${v}`);
        console.log(
          `| ${setup} | ${mode} | ${conns} | ${(m(l, 'rps') / m(n, 'rps')).toFixed(2)}× | ${(m(l, 'p99') / m(n, 'p99')).toFixed(2)}× | ${m(l, 'rps').toFixed(0)} / ${m(n, 'rps').toFixed(0)} | ${m(l, 'p99').toFixed(2)} / ${m(n, 'p99').toFixed(2)} | ${m(l, 'cpuUsPerReq').toFixed(0)} / ${m(n, 'cpuUsPerReq').toFixed(0)} |`,
        );
      }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
