// npm run bench:l7:profile — not a test, not a benchmark: bench:l7's world (l7-world.ts) with the L7
// policy, wrk on the L7 port, and `perf record -g` sampling the proxy workers (PROF_AGENT=1: the agent
// too) for PROF_SECONDS, so a profile shows where a request's CPU goes. The agent and its workers run
// with --perf-basic-prof, so JavaScript frames have names (`perf report -i PROF_OUT`). PROF_STRACE=1
// then counts the workers' system calls for 5 s more (`strace -c -f`, in PROF_OUT.strace).
// PROF_MODE=keep-alive|close, PROF_CONNS (default 50). PROF_VARIANT=nginx samples the nginx peer's
// workers instead (same world, same wrk), so the two proxies' kernel and user shares can be compared.
import { spawn } from 'node:child_process';
import { startL7World, type Variant } from './l7-world.ts';
import { wrk } from './l7-wrk.ts';

const MODE = (process.env.PROF_MODE ?? 'keep-alive') as 'keep-alive' | 'close';
const CONNS = Number(process.env.PROF_CONNS ?? 50);
const SECONDS = Number(process.env.PROF_SECONDS ?? 10);
const VARIANT: Variant = process.env.PROF_VARIANT === 'nginx' ? 'nginx' : 'l7';
const OUT = process.env.PROF_OUT ?? `/tmp/membrane-l7-${MODE}.perf.data`;

async function main(): Promise<void> {
  process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --perf-basic-prof`.trim(); // the agent passes it on
  const world = await startL7World('0');
  try {
    await wrk(world.client, world.urls[VARIANT], 10, MODE, 5); // warm-up (JIT)
    const all = await world.proxyPids(VARIANT); // l7: the workers, then the agent; nginx: its workers
    const pids = VARIANT === 'nginx' || process.env.PROF_AGENT === '1' ? all : all.slice(0, -1);
    const perf = spawn(
      'perf',
      ['record', '-F', '1999', '-g', '-o', OUT, '-p', pids.join(','), '--', 'sleep', String(SECONDS - 1)],
      {
        stdio: 'inherit',
      },
    );
    // Listened for now: perf (SECONDS - 1) usually ends while wrk still runs, and an 'exit' listener
    // added after that would wait forever (holding the bench lock).
    const perfDone = new Promise((r) => perf.once('exit', r));
    const agent = VARIANT === 'l7' ? world.agentPid() : undefined;
    const s = await wrk(world.client, world.urls[VARIANT], CONNS, MODE, SECONDS, all, agent);
    await perfDone;
    console.log(JSON.stringify({ variant: VARIANT, mode: MODE, conns: CONNS, pids, out: OUT, ...s }));
    if (process.env.PROF_STRACE === '1') {
      const st = spawn('strace', ['-c', '-f', '-o', `${OUT}.strace`, ...pids.flatMap((p) => ['-p', String(p)])], {
        stdio: 'ignore',
      });
      const s2 = await wrk(world.client, world.urls[VARIANT], CONNS, MODE, 5);
      const stDone = new Promise((r) => st.once('exit', r));
      st.kill('SIGINT');
      await stDone;
      console.log(JSON.stringify({ strace: `${OUT}.strace`, requests: s2.requests }));
    }
  } finally {
    await world.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
