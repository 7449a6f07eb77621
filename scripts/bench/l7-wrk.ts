// bench:l7's measuring: one wrk run in the client pod, parsed, with the CPU time the proxying
// processes spent on it per request (Membrane's workers plus its agent, or nginx's workers).
import fs from 'node:fs';
import type { TestNetns } from '../../integration/lib/netns.ts';

export type Mode = 'keep-alive' | 'close';

export interface Sample {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  requests: number;
  cpuUsPerReq?: number;
  agentUsPerReq?: number;
  /** One request per connection: the client's TIME_WAITs made during the run (to the URL's address
   *  and port), per 100 connections: how often the client, not the proxy, closed first. */
  clientTwPct?: number;
  /** Time the proxying processes' threads spent runnable but waiting for a CPU, µs per request
   *  (schedstat run_delay): what a loaded machine's scheduler adds to a request's latency. */
  waitUsPerReq?: number;
}

const TICK_US = 1e6 / 100; // /proc/<pid>/stat times are in USER_HZ (100 on Linux)

/** CPU time (user + system, µs) the processes have used so far; a process that is gone counts 0. */
export function cpuUs(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15 (utime, stime), counted after "pid (comm) "
    } catch {
      /* gone */
    }
  }
  return ticks * TICK_US;
}

/** Time (µs) every thread of the processes has waited on a run queue so far (/proc/<pid>/task/<tid>/schedstat,
 *  second field, ns); a process or thread that is gone counts 0. */
export function runDelayUs(pids: number[]): number {
  let ns = 0;
  for (const pid of pids) {
    let tids: string[] = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[1]);
      } catch {
        /* gone */
      }
    }
  }
  return ns / 1000;
}

export function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export function parseWrk(out: string): Sample {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    return m ? Number(m[1]) : NaN;
  };
  const dur = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) return NaN;
    const v = Number(m[1]);
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v; // ms
  };
  const errors =
    [...out.matchAll(/(connect|read|write|timeout) (\d+)/g)].reduce((n, m) => n + Number(m[2]), 0) +
    (num(/Non-2xx or 3xx responses: (\d+)/) || 0);
  return {
    requests: num(/(\d+) requests in /),
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    p50: dur(/ 50%\s+([\d.]+)(us|ms|s)/),
    p99: dur(/ 99%\s+([\d.]+)(us|ms|s)/),
    errors,
  };
}

/** wrk's numbers, and the CPU time `proxy` (the processes between client and server) spent per
 *  request, with the part of it that is the agent's (`agent`, one of them) apart. */
export async function wrk(
  client: TestNetns,
  url: string,
  conns: number,
  mode: Mode,
  seconds: number,
  proxy: number[] = [],
  agent?: number,
): Promise<Sample> {
  const args = [
    '-t',
    String(Math.min(2, conns)),
    '-c',
    String(conns),
    '-d',
    `${seconds}s`,
    '--latency',
    ...(mode === 'close' ? ['-H', 'Connection: close'] : []),
    url,
  ];
  // Each run starts without the client's TIME_WAITs of earlier runs (ss -K destroys them): a proxy
  // that let the client close first in one cell (nginx at one connection leaves one for about every
  // other connection) otherwise leaves the client short of ports towards its address in the next
  // cell, and that cell measures the previous one's leftovers (nginx fell to 1,000 req/s at close 10
  // and 50 that way). A run's own TIME_WAITs still count (clientTwPct) and still cost it.
  await client.exec('sh', ['-c', 'ss -K -Htan state time-wait > /dev/null']);
  const cpu0 = cpuUs(proxy);
  const each0 = proxy.map((pid) => cpuUs([pid]));
  const agent0 = agent ? cpuUs([agent]) : 0;
  const wait0 = runDelayUs(proxy);
  const out = await client.exec('wrk', args, { timeoutMs: (seconds + 30) * 1000 });
  const sample = parseWrk(out);
  // BENCH_PER_PROCESS=1: each process's CPU per request apart (e.g. an A/B of two proxy workers).
  if (process.env.BENCH_PER_PROCESS === '1' && sample.requests > 0)
    process.stderr.write(
      `  CPU µs/request by process: ${proxy.map((pid, i) => `${pid} ${((cpuUs([pid]) - each0[i]) / sample.requests).toFixed(1)}`).join(', ')}\n`,
    );
  if (proxy.length && sample.requests > 0) sample.cpuUsPerReq = (cpuUs(proxy) - cpu0) / sample.requests;
  if (proxy.length && sample.requests > 0) sample.waitUsPerReq = (runDelayUs(proxy) - wait0) / sample.requests;
  if (mode === 'close' && sample.requests > 0)
    sample.clientTwPct = (100 * (await timeWaitsSince(client, url, seconds))) / sample.requests;
  if (agent && sample.requests > 0) sample.agentUsPerReq = (cpuUs([agent]) - agent0) / sample.requests;
  return sample;
}

/** The client's TIME_WAIT sockets to `url`'s address and port made in the last `seconds` s: their
 *  timer (60 s when made) still has at least 60 - seconds - 1 s to run. Counted in the pod (awk), as
 *  tens of thousands of lines would overflow exec's buffer. */
async function timeWaitsSince(client: TestNetns, url: string, seconds: number): Promise<number> {
  const u = new URL(url);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const filter = `dst ${host.includes(':') ? `[${host}]` : host} dport = :${u.port || '80'}`;
  const awk = `awk -v t=${60 - seconds - 1} 'match($0, /timewait,[0-9]+sec/) { if (substr($0, RSTART + 9, RLENGTH - 12) + 0 >= t) n++ } END { print n + 0 }'`;
  const out = await client.exec('sh', ['-c', `ss -Htano state time-wait ${filter} | ${awk}`]);
  return Number(out.trim()) || 0;
}
