// Network namespaces a test creates itself (unique names), with commands run inside by nsenter
// (`ip netns exec` remounts /sys and hides bpffs).
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import type { Test } from 'tap';
import { randomId } from './agent.ts';
import { ownChild, ownNetns } from './cleanup.ts';

const execFileP = promisify(execFile);

export interface TestNetns {
  name: string;
  path: string;
  /** Run a command inside; rejects with stderr on a non-zero exit, or when it is still running after
   *  timeoutMs (default 60 s: only a hung command meets it; at load 30 a python3 start took over 20 s). */
  exec(cmd: string, args: string[], opts?: { timeoutMs?: number }): Promise<string>;
  /** Start a long-running command inside. */
  spawn(cmd: string, args: string[]): ChildProcess;
  remove(): void;
}

export function createNetns(prefix = 'mbt'): TestNetns {
  const name = `${prefix}-${randomId()}`;
  execFileSync('ip', ['netns', 'add', name]);
  // Deleted at exit even when the test's teardown never runs (tap's timeout, a crash, a SIGKILL).
  const release = ownNetns(name);
  const path = `/var/run/netns/${name}`;
  execFileSync('nsenter', [`--net=${path}`, 'ip', 'link', 'set', 'lo', 'up']);
  return {
    name,
    path,
    async exec(cmd, args, opts = {}) {
      const { stdout } = await execFileP('nsenter', [`--net=${path}`, cmd, ...args], { timeout: opts.timeoutMs ?? 60_000 });
      return stdout;
    },
    spawn(cmd, args) {
      const child = spawn('nsenter', [`--net=${path}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      ownChild(child);
      return child;
    },
    remove() {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
      } catch {
        /* already gone */
      }
      release();
    },
  };
}

/** `count` netns for one test, removed when it ends (after the teardowns registered before). */
export function netnsFor(t: Test, count: number, prefix?: string): TestNetns[] {
  const nss: TestNetns[] = [];
  t.teardown(() => {
    for (const ns of nss) ns.remove();
  });
  for (let i = 0; i < count; i++) nss.push(createNetns(prefix));
  return nss;
}

export async function ping(from: TestNetns, ip: string, count = 2): Promise<boolean> {
  try {
    await from.exec('ping', [ip.includes(':') ? '-6' : '-4', '-c', String(count), '-i', '0.2', '-W', '2', ip]);
    return true;
  } catch {
    return false;
  }
}

export function linkExists(name: string): boolean {
  try {
    execFileSync('ip', ['link', 'show', 'dev', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function hostRoutes(dev: string): string {
  try {
    return execFileSync('ip', ['-4', 'route', 'show', 'dev', dev], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

export function routeExists(dst: string): boolean {
  const fam = dst.includes(':') ? '-6' : '-4';
  return execFileSync('ip', [fam, 'route', 'show', dst], { encoding: 'utf8' }).trim().length > 0;
}

/** A deleted endpoint's veth (and the routes on it) goes right after its DEL answered (the agent's
 *  reaper, and for a deleted netns the kernel's cleanup workqueue): true once none of `names` exists
 *  (polled every 50 ms), false after timeoutMs. The deadline is generous because a loaded 2-vCPU CI
 *  machine can take seconds; it costs nothing when the link goes at once. */
export async function linkGone(names: string | string[], timeoutMs = 15_000): Promise<boolean> {
  const all = [names].flat();
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
    if (!all.some(linkExists)) return true;
  }
  return !all.some(linkExists);
}
