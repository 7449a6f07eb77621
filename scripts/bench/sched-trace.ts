// Where iperf3's sender and receiver run while a throughput sample runs (bench:datapath-cpu with
// BENCH_TRACE=seconds): `perf record` of the scheduler's switch, waking, wake-up and migration
// tracepoints and NET_RX softirq entry/exit, system-wide, for a window in the middle of the sample;
// then `perf script` is reduced to a few numbers per sample: how much of the window each thread ran
// and on which CPU, how much both ran at once (on different CPUs) or queued on one, who woke the
// receiver and whether the wake-up moved it to the waker's CPU, and which context took the NET_RX
// softirq time on each CPU. Measurement only: perf's own wake-ups to drain its buffers are in the
// window too, the same for every peer.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
const EVENTS = [
  'sched:sched_switch',
  'sched:sched_waking',
  'sched:sched_wakeup',
  'sched:sched_migrate_task',
  'irq:softirq_entry',
  'irq:softirq_exit',
];
const NET_RX = 3;

export interface SchedSummary {
  /** Share of the window each thread ran, per CPU ([cpu0, cpu1, ...]). */
  serverOn: number[];
  clientOn: number[];
  /** Share of the window both ran at once (necessarily on two CPUs). */
  both: number;
  /** Share of the window one was runnable but waiting while the other ran on its CPU. */
  queued: number;
  /** Share of the window both were last placed on the same CPU (running, runnable or sleeping). */
  sameCpu: number;
  migrations: { server: number; client: number };
  /** Wake-ups of the receiver (server): by waker context, and how many landed on the waker's CPU. */
  serverWakeups: Record<string, number>;
  serverWakeupsToWakerCpu: number;
  clientWakeups: Record<string, number>;
  clientWakeupsToWakerCpu: number;
  /** Idle share and NET_RX softirq share of the window per CPU, and the softirq's share by the context it interrupted. */
  idle: number[];
  netRx: number[];
  netRxBy: Record<string, number>;
  switches: number;
  /** Share of the window other tasks ran (all CPUs together), by command name, the largest first. */
  others: Record<string, number>;
}

interface Ev {
  comm: string;
  pid: number;
  cpu: number;
  t: number;
  name: string;
  f: string;
}

const LINE = /^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$/;
const num = (f: string, k: string) => Number(new RegExp(`\\b${k}=(\\d+)`).exec(f)?.[1] ?? NaN);

/** Reduces `perf script` output. server: the receiving iperf3's pid; the client is the other iperf3. */
export function summarize(script: string, serverPid: number, ncpu: number): SchedSummary {
  const evs: Ev[] = [];
  for (const l of script.split('\n')) {
    const m = LINE.exec(l);
    if (m) evs.push({ comm: m[1], pid: Number(m[2]), cpu: Number(m[3]), t: Number(m[4]), name: m[5], f: m[6] });
  }
  let clientPid = -1;
  for (const e of evs) {
    if (e.comm === 'iperf3' && e.pid !== serverPid && e.pid !== 0) {
      clientPid = e.pid;
      break;
    }
  }
  const t0 = evs[0]?.t ?? 0,
    t1 = evs[evs.length - 1]?.t ?? 0,
    span = Math.max(1e-9, t1 - t0);
  const role = (pid: number) => (pid === serverPid ? 'server' : pid === clientPid ? 'client' : pid === 0 ? 'idle' : 'other');
  // State per CPU: who runs; per thread: where placed and whether runnable.
  const curr: number[] = Array(ncpu).fill(-1);
  const commOf = new Map<number, string>();
  const others: Record<string, number> = {};
  const place = new Map<number, number>();
  const runnable = new Map<number, boolean>();
  const serverOn = Array(ncpu).fill(0),
    clientOn = Array(ncpu).fill(0),
    idle = Array(ncpu).fill(0),
    netRx = Array(ncpu).fill(0);
  const netRxBy: Record<string, number> = {};
  const siStart: (number | undefined)[] = Array(ncpu).fill(undefined);
  const siCtx: string[] = Array(ncpu).fill('');
  const wake = { server: {} as Record<string, number>, client: {} as Record<string, number> };
  const toWaker = { server: 0, client: 0 };
  const wakerOf = new Map<number, number>(); // wakee pid -> waker cpu, from sched_waking
  const migrations = { server: 0, client: 0 };
  let both = 0,
    queued = 0,
    sameCpu = 0,
    switches = 0,
    last = t0;
  const running = (pid: number) => curr.indexOf(pid);
  const advance = (t: number) => {
    const dt = t - last;
    if (dt <= 0) return;
    for (let c = 0; c < ncpu; c++) {
      if (curr[c] === serverPid) serverOn[c] += dt;
      else if (curr[c] === clientPid) clientOn[c] += dt;
      else if (curr[c] === 0) idle[c] += dt;
      else if (curr[c] > 0) {
        const k = commOf.get(curr[c]) ?? '?';
        others[k] = (others[k] ?? 0) + dt;
      }
    }
    const rs = running(serverPid),
      rc = running(clientPid);
    if (rs >= 0 && rc >= 0) both += dt;
    else if ((rs >= 0 && runnable.get(clientPid)) || (rc >= 0 && runnable.get(serverPid))) queued += dt;
    const ps = place.get(serverPid),
      pc = place.get(clientPid);
    if (ps !== undefined && ps === pc) sameCpu += dt;
    last = t;
  };
  for (const e of evs) {
    advance(e.t);
    switch (e.name) {
      case 'sched:sched_switch': {
        switches++;
        const prev = num(e.f, 'prev_pid'),
          next = num(e.f, 'next_pid');
        const state = /prev_state=(\S+)/.exec(e.f)?.[1] ?? '';
        runnable.set(prev, state === 'R' || state === 'R+');
        curr[e.cpu] = next;
        commOf.set(next, /next_comm=(.+?) next_pid=/.exec(e.f)?.[1] ?? '?');
        place.set(next, e.cpu);
        runnable.set(next, true);
        break;
      }
      case 'sched:sched_waking': {
        const pid = num(e.f, 'pid');
        if (pid === serverPid || pid === clientPid) {
          const who = pid === serverPid ? 'server' : 'client';
          // The waker: a task, or an interrupted idle CPU; in softirq when NET_RX is running there.
          const ctx = `${role(e.pid)}${siStart[e.cpu] !== undefined ? ' (softirq)' : ''} on CPU ${e.cpu}`;
          wake[who][ctx] = (wake[who][ctx] ?? 0) + 1;
          wakerOf.set(pid, e.cpu);
        }
        break;
      }
      case 'sched:sched_wakeup': {
        const pid = num(e.f, 'pid'),
          target = num(e.f, 'target_cpu');
        runnable.set(pid, true);
        place.set(pid, target);
        if ((pid === serverPid || pid === clientPid) && wakerOf.get(pid) === target)
          toWaker[pid === serverPid ? 'server' : 'client']++;
        break;
      }
      case 'sched:sched_migrate_task': {
        const pid = num(e.f, 'pid');
        place.set(pid, num(e.f, 'dest_cpu'));
        if (pid === serverPid) migrations.server++;
        if (pid === clientPid) migrations.client++;
        break;
      }
      case 'irq:softirq_entry':
        if (num(e.f, 'vec') === NET_RX) {
          siStart[e.cpu] = e.t;
          siCtx[e.cpu] = /ksoftirqd/.test(e.comm) ? 'ksoftirqd' : role(e.pid);
        }
        break;
      case 'irq:softirq_exit':
        if (num(e.f, 'vec') === NET_RX && siStart[e.cpu] !== undefined) {
          const dt = e.t - siStart[e.cpu]!;
          netRx[e.cpu] += dt;
          const k = `${siCtx[e.cpu]} on CPU ${e.cpu}`;
          netRxBy[k] = (netRxBy[k] ?? 0) + dt;
          siStart[e.cpu] = undefined;
        }
        break;
    }
  }
  const share = (xs: number[]) => xs.map((x) => x / span);
  return {
    serverOn: share(serverOn),
    clientOn: share(clientOn),
    both: both / span,
    queued: queued / span,
    sameCpu: sameCpu / span,
    migrations,
    serverWakeups: wake.server,
    serverWakeupsToWakerCpu: toWaker.server,
    clientWakeups: wake.client,
    clientWakeupsToWakerCpu: toWaker.client,
    idle: share(idle),
    netRx: share(netRx),
    netRxBy: Object.fromEntries(Object.entries(netRxBy).map(([k, v]) => [k, v / span])),
    switches: switches / span,
    others: Object.fromEntries(
      Object.entries(others)
        .sort((a, b) => b[1] - a[1])
        .slice(0, 4)
        .map(([k, v]) => [k, v / span]),
    ),
  };
}

/** Records `seconds` of the tracepoints system-wide after `delayMs`, then summarizes. */
export async function traceSched(serverPid: number, seconds: number, delayMs: number): Promise<SchedSummary> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-sched-'));
  try {
    await new Promise((r) => setTimeout(r, delayMs));
    const data = path.join(dir, 'perf.data');
    const ev = EVENTS.flatMap((e) => ['-e', e]);
    // Large per-CPU buffers: perf wakes up to drain them less often (its own wake-ups are in the window).
    await execFileP('perf', ['record', '-q', '-a', '-m', '2048', '-o', data, ...ev, '--', 'sleep', String(seconds)], {
      timeout: (seconds + 30) * 1000,
    });
    const { stdout } = await execFileP('perf', ['script', '-i', data], { maxBuffer: 1 << 30, timeout: 120_000 });
    return summarize(stdout, serverPid, os.cpus().length);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const counts = (r: Record<string, number>) =>
  Object.entries(r)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');

/** One line per sample for the bench's log. */
export function formatSummary(s: SchedSummary): string {
  return [
    `  server ran ${s.serverOn.map(pct).join('/')} client ${s.clientOn.map(pct).join('/')} (per CPU), both at once ${pct(s.both)}, one queued behind the other ${pct(s.queued)}, placed on one CPU ${pct(s.sameCpu)}`,
    `  idle ${s.idle.map(pct).join('/')}, NET_RX softirq ${s.netRx.map(pct).join('/')} (${Object.entries(s.netRxBy)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${pct(v)}`)
      .join(
        ', ',
      )}), ${(s.switches / 1000).toFixed(1)}k switches/s, migrations server ${s.migrations.server} client ${s.migrations.client}`,
    `  others ran: ${Object.entries(s.others)
      .map(([k, v]) => `${k} ${pct(v)}`)
      .join(', ')}`,
    `  server woken by: ${counts(s.serverWakeups)}; onto the waker's CPU ${s.serverWakeupsToWakerCpu}`,
    `  client woken by: ${counts(s.clientWakeups)}; onto the waker's CPU ${s.clientWakeupsToWakerCpu}`,
  ].join('\n');
}

/** /proc/PID/sched's counters: migrations and switches so far. */
function schedCounters(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of fs.readFileSync(`/proc/${pid}/sched`, 'utf8').split('\n')) {
    const m = /^(se\.nr_migrations|nr_switches|nr_voluntary_switches|nr_involuntary_switches)\s+:\s+(\d+)/.exec(l);
    if (m) out[m[1].replace('se.', '')] = Number(m[2]);
  }
  return out;
}

/** Per-CPU time so far (ms): user, system, idle, softirq (/proc/stat, 100 ticks a second). */
function cpuTimes(): number[][] {
  return fs
    .readFileSync('/proc/stat', 'utf8')
    .split('\n')
    .filter((l) => /^cpu\d+ /.test(l))
    .map((l) => [1, 3, 4, 7].map((i) => Number(l.split(/\s+/)[i]) * 10));
}

const onCpu = (pid: number) => Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[36]);

/** The trace's counterpart that writes no records (BENCH_SCHED=s): over `seconds` after `delayMs`,
 *  each thread's migrations and switches (/proc/PID/sched), each CPU's user/system/idle/softirq share
 *  (/proc/stat), and how often both threads were last on the same CPU (their /proc/PID/stat CPU,
 *  polled every 10 ms). The client is the other iperf3 process. */
export async function sampleSched(serverPid: number, seconds: number, delayMs: number): Promise<string> {
  await new Promise((r) => setTimeout(r, delayMs));
  const client = fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d) && Number(d) !== serverPid)
    .find((d) => {
      try {
        return fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim() === 'iperf3';
      } catch {
        return false;
      }
    });
  if (!client) return '  no iperf3 client found';
  const pids = [serverPid, Number(client)];
  const c0 = pids.map(schedCounters),
    t0 = cpuTimes();
  let polls = 0,
    same = 0;
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    const [s, c] = pids.map(onCpu);
    polls++;
    if (s === c) same++;
    await new Promise((r) => setTimeout(r, 10));
  }
  const c1 = pids.map(schedCounters),
    t1 = cpuTimes();
  const d = (i: number, k: string) => c1[i][k] - c0[i][k];
  const per = (i: number) =>
    `migrations ${d(i, 'nr_migrations')}, switches ${d(i, 'nr_voluntary_switches')} voluntary / ${d(i, 'nr_involuntary_switches')} involuntary`;
  const cpus = t1
    .map((t, c) => t.map((v, j) => `${(((v - t0[c][j]) / (seconds * 1000)) * 100).toFixed(0)}`).join('/'))
    .join(', ');
  return `  server ${per(0)}; client ${per(1)}; on one CPU ${((same / polls) * 100).toFixed(0)} % of ${polls} polls; per CPU user/system/idle/softirq % ${cpus}`;
}
