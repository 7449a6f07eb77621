// The CPU time Membrane's own programs take in a benchmark: run_cnt and run_time_ns of every tc
// program attached in the given netns (the kernel counts them while kernel.bpf_stats_enabled is 1).
// Unlike throughput and latency on a shared 2-CPU machine, the time per program run barely moves with
// the machine's load, so it says what the datapath itself costs (and whether e.g. 10,000 rules make
// an established packet dearer).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const TCX_SHOW = path.join(import.meta.dirname, '../../integration/lib/tcx-show-child.ts');

const SYSCTL = '/proc/sys/kernel/bpf_stats_enabled';

export interface BpfTotals {
  runs: number;
  ns: number;
}

/** One file per bench process that wants the statistics on (named by its pid). */
const USERS = '/run/membrane-bench-bpf-stats';

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/** Turns the kernel's per-program statistics on; the returned function turns them off again once no
 *  other live bench process still wants them. Saving and restoring the old value, as this did, leaves
 *  the sysctl at 1 after overlapping runs (the second saves the first's 1) or a killed one (found so
 *  on 2026-12-05 with no bench running), and with it every
 *  later benchmark paid the statistics' two sched_clock() reads per program run (kvm-clock in this
 *  VM: ~1.1 µs per cross-node connection, `PERF=` of cross-node-prog-ab, pvclock_clocksource_read_nowd)
 *  in Membrane's cells and not in the plain peers'. */
export function enableBpfStats(): () => void {
  fs.mkdirSync(USERS, { recursive: true });
  const mine = `${USERS}/${process.pid}`;
  fs.writeFileSync(mine, '');
  fs.writeFileSync(SYSCTL, '1');
  return () => {
    fs.rmSync(mine, { force: true });
    let others = 0;
    for (const f of fs.readdirSync(USERS)) {
      if (alive(Number(f))) others++;
      else fs.rmSync(`${USERS}/${f}`, { force: true }); /* a run that died before turning them off */
    }
    if (!others) fs.writeFileSync(SYSCTL, '0');
  };
}

/** Ids of the tc and tcx programs attached to any link of these netns (each program once). bpftool 7.1
 *  lists only classic tc ones; tcx-show-child asks the kernel for the tcx ones (Membrane's). */
export function attachedPrograms(netnsPaths: string[]): number[] {
  const ids = new Set<number>();
  for (const ns of netnsPaths) {
    const out = execFileSync('nsenter', [`--net=${ns}`, 'bpftool', 'net', 'show', '-j'], { encoding: 'utf8' });
    for (const e of JSON.parse(out) as { tc?: { id: number }[] }[]) for (const t of e.tc ?? []) ids.add(t.id);
    const tcx = execFileSync('nsenter', [`--net=${ns}`, process.execPath, '--import', 'tsx', TCX_SHOW, '--ids'], {
      encoding: 'utf8',
    });
    for (const id of JSON.parse(tcx) as number[]) ids.add(id);
  }
  return [...ids];
}

/** Runs and run time so far, summed over the programs (a program that is gone counts 0). */
export function bpfTotals(ids: number[]): BpfTotals {
  const t: BpfTotals = { runs: 0, ns: 0 };
  for (const id of ids) {
    try {
      const p = JSON.parse(execFileSync('bpftool', ['prog', 'show', 'id', String(id), '-j'], { encoding: 'utf8' }));
      t.runs += p.run_cnt ?? 0;
      t.ns += p.run_time_ns ?? 0;
    } catch {
      /* unloaded meanwhile */
    }
  }
  return t;
}

export const bpfDelta = (a: BpfTotals, b: BpfTotals): BpfTotals => ({ runs: b.runs - a.runs, ns: b.ns - a.ns });
