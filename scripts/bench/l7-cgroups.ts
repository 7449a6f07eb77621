// bench:l7's services each in a cpu cgroup of its own, all of equal weight, as a node runs them: a
// container runtime gives every pod its cgroup (the client pod's wrk, the server pod's nginx), and a
// service manager gives every service its own (Membrane's agent with the proxy workers it starts, or
// nginx with its workers). The kernel then shares a busy CPU between services, not between sessions:
// without cgroups, kernel.sched_autogroup_enabled makes each session a scheduling group, and which
// processes share one was an accident of how the script started them (wrk, the server and Membrane's
// agent in the script's session; the L7 workers and nginx each in one of their own). Both proxies get
// the same: one group each, next to the same client and server groups. The groups are siblings under
// the root, not children of one bench group: a machine that others load would give that one group a
// single share for all four services. `CpuGroups.setup(false)` puts every process back in the root
// (its session's group again). l7-world.ts makes them with BENCH_CGROUPS=1; l7-cgroup-ab.ts compares
// both setups in one run.
import fs from 'node:fs';
import path from 'node:path';
import { randomId } from '../../integration/lib/agent.ts';

export type Service = 'client' | 'server' | 'nginx' | 'membrane';
const SERVICES: Service[] = ['client', 'server', 'nginx', 'membrane'];

const V1 = '/sys/fs/cgroup/cpu';
const V2 = '/sys/fs/cgroup';

/** The cpu controller's root: cgroup v1's cpu hierarchy, or the v2 root when it has the controller. */
function cpuRoot(): { root: string; weightFile: string; weight: string } {
  if (fs.existsSync(path.join(V1, 'cpu.shares'))) return { root: V1, weightFile: 'cpu.shares', weight: '1024' };
  const controllers = fs.existsSync(path.join(V2, 'cgroup.controllers'))
    ? fs.readFileSync(path.join(V2, 'cgroup.controllers'), 'utf8')
    : '';
  if (controllers.split(/\s+/).includes('cpu')) return { root: V2, weightFile: 'cpu.weight', weight: '100' };
  throw new Error('no cpu cgroup controller (cgroup v1 /sys/fs/cgroup/cpu or v2 with cpu): BENCH_CGROUPS=0 runs without');
}

export class CpuGroups {
  private readonly root: string;
  private readonly dirs = new Map<Service, string>();
  /** Processes placed (setup moves them back and forth). */
  private readonly members = new Map<Service, () => number[]>();
  on = false;

  constructor() {
    const { root, weightFile, weight } = cpuRoot();
    this.root = root;
    const prefix = `mbb-l7-${randomId()}`;
    for (const s of SERVICES) {
      const dir = path.join(root, `${prefix}-${s}`);
      fs.mkdirSync(dir);
      this.dirs.set(s, dir);
      fs.writeFileSync(path.join(dir, weightFile), weight); // the default, written so it is stated
    }
    process.once('exit', () => this.remove());
  }

  /** `pids` (read again at each setup: workers come and go) belong to `service`. */
  add(service: Service, pids: () => number[]): void {
    this.members.set(service, pids);
    if (this.on) for (const pid of pids()) this.move(pid, this.dirs.get(service)!);
  }

  /** Every member in its service's group (true) or back in the root (false). */
  setup(on: boolean): void {
    this.on = on;
    for (const [service, pids] of this.members)
      for (const pid of pids()) this.move(pid, on ? this.dirs.get(service)! : this.root);
  }

  /** A shell command line that runs `cmd` in `service`'s group when they are on (for commands run
   *  through nsenter, e.g. wrk in the client pod): sh moves itself, then execs. */
  wrap(service: Service, cmd: string, args: string[]): [string, string[]] {
    if (!this.on) return [cmd, args];
    const procs = path.join(this.dirs.get(service)!, 'cgroup.procs');
    return ['sh', ['-c', `echo $$ > ${procs} && exec "$@"`, 'sh', cmd, ...args]];
  }

  private move(pid: number, dir: string): void {
    try {
      fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(pid));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e; // gone
    }
  }

  /** The groups removed, whatever is still in them (only processes this bench put there, or their
   *  children) moved back to the root first. */
  remove(): void {
    for (const dir of this.dirs.values()) {
      try {
        for (const pid of fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean))
          this.move(Number(pid), this.root);
        fs.rmdirSync(dir);
      } catch {
        /* best effort (a process moved in meanwhile keeps its group) */
      }
    }
    this.dirs.clear();
  }
}
