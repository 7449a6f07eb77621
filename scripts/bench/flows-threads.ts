// node --import tsx scripts/bench/flows-threads.ts — not a test. Where the agent's CPU per connection
// goes with flow events on vs off: each agent thread's CPU (schedstat ns), user vs system time and
// context switches of the main thread, during connection-rate samples between two Membrane pods,
// on/off alternated (BENCH_PAIRS, default 6, of BENCH_SECONDS, default 2). Run under the bench lock.
import fs from 'node:fs';
import { startAgent } from '../../integration/lib/agent.ts';
import { connectionRate, median, sleep } from './lib.ts';
import { membrane, type Pods } from './topologies.ts';
import { setFlowEvents } from './switches.ts';

delete process.env.NODE_EXTRA_CA_CERTS;
const PAIRS = Number(process.env.BENCH_PAIRS ?? 6);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);

interface ThreadSample {
  ns: number;
  utime: number;
  stime: number;
  vcs: number;
  ivcs: number;
}

function threads(pid: number): Map<string, ThreadSample> {
  const out = new Map<string, ThreadSample>();
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const comm = fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim();
      const ns = Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      const stat = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const status = fs.readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
      const vcs = Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1] ?? 0);
      const ivcs = Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1] ?? 0);
      out.set(`${comm}/${t === String(pid) ? 'main' : t}`, { ns, utime: Number(f[11]), stime: Number(f[12]), vcs, ivcs });
    } catch {
      // exited
    }
  }
  return out;
}

const agent = await startAgent({ extraArgs: ['--log-level', 'info'] });
let pods: Pods | undefined;
const per: Record<string, Record<'on' | 'off', number[]>> = {};
try {
  pods = await membrane(agent);
  const pid = agent.pid()!;
  await sleep(3000);
  for (let pair = 0; pair < PAIRS; pair++) {
    for (const mode of (pair % 2 ? ['off', 'on'] : ['on', 'off']) as ('on' | 'off')[]) {
      setFlowEvents(agent.bpffsDir, mode === 'on');
      const a = threads(pid);
      const rate = await connectionRate(pods.a, pods.b, pods.ipB, SECONDS);
      await sleep(100);
      const b = threads(pid);
      const conns = rate * SECONDS;
      const add = (k: string, v: number) => {
        per[k] ??= { on: [], off: [] };
        per[k][mode].push(v);
      };
      add('conn/s', rate);
      let total = 0;
      for (const [k, s] of b) {
        const s0 = a.get(k);
        if (!s0) continue;
        const d = (s.ns - s0.ns) / 1000 / conns;
        total += d;
        if (d > 0.005 || k.endsWith('/main')) add(`${k} µs/conn`, d);
        if (k.endsWith('/main')) {
          add('main utime ms', (s.utime - s0.utime) * 10);
          add('main stime ms', (s.stime - s0.stime) * 10);
          add('main vol. switches', s.vcs - s0.vcs);
          add('main invol. switches', s.ivcs - s0.ivcs);
        }
      }
      add('all threads µs/conn', total);
    }
    process.stderr.write(`pair ${pair + 1} done\n`);
  }
} finally {
  if (pods) setFlowEvents(agent.bpffsDir, true);
  await pods?.cleanup();
  await agent.cleanup();
}
for (const [k, v] of Object.entries(per))
  process.stdout.write(
    `${k.padEnd(40)} off ${median(v.off).toFixed(3).padStart(10)}  on ${median(v.on).toFixed(3).padStart(10)}  (n ${v.on.length}/${v.off.length})\n`,
  );
