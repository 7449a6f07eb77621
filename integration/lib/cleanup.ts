// What a test file created on this shared machine (processes, netns, host links, bpffs pin dirs,
// state dirs) is removed by the test's own teardown; this registry is the safety net for when the
// teardown never runs: tap kills the file on timeout (SIGTERM), someone presses ^C (SIGINT), or the
// file crashes. On 'exit' the registry removes, synchronously, only what was registered here — by
// PID and by the unique name we created, never by pattern — in an order that works: processes
// first (they hold pins and sockets), then links, then netns, then directories.
//
// Every harness (agent.ts, netns.ts, cluster.ts) registers what it creates and releases the entry
// once its own teardown removed the thing.
import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

/** Drops the entry (the owner removed the thing itself). */
export type Release = () => void;

type Kind = 'proc' | 'link' | 'netns' | 'dir';
const ORDER: Kind[] = ['proc', 'link', 'netns', 'dir'];

interface Entry {
  kind: Kind;
  remove(): void;
}

const entries = new Set<Entry>();
let installed = false;

function register(kind: Kind, remove: () => void): Release {
  install();
  const e: Entry = { kind, remove };
  entries.add(e);
  return () => {
    entries.delete(e);
  };
}

/** A child we spawned: SIGKILLed at exit if it is still running (its PID is ours only while it runs). */
export function ownChild(child: ChildProcess): Release {
  const release = register('proc', () => {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  child.once('exit', release);
  return release;
}

/** Sends `sig` to a child of ours and resolves once it has exited (at once if it is not running).
 *  With `killAfterMs`, a child still running that long after the signal is SIGKILLed: the caller's
 *  cleanup never hangs. */
export function signalAndWait(child: ChildProcess | undefined, sig: NodeJS.Signals, killAfterMs?: number): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    let hard: NodeJS.Timeout | undefined;
    child.once('exit', () => {
      clearTimeout(hard);
      resolve();
    });
    child.kill(sig);
    if (killAfterMs === undefined) return;
    hard = setTimeout(() => {
      try {
        child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }, killAfterMs);
  });
}

/** Whether process `pid` is running: it exists and is not a zombie (a killed process stays one until
 *  its parent reaps it, which for a child reparented to init is a moment later). Any user's process
 *  counts (read from /proc, not probed with a signal). */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** A netns we added (`ip netns add NAME`). */
export function ownNetns(name: string): Release {
  return register('netns', () => quiet('ip', ['netns', 'del', name]));
}

/** A link we created, in the netns at `netnsPath` (default: this process's). */
export function ownLink(name: string, netnsPath?: string): Release {
  const cmd = ['ip', 'link', 'del', name];
  return register('link', () => (netnsPath ? quiet('nsenter', [`--net=${netnsPath}`, ...cmd]) : quiet(cmd[0], cmd.slice(1))));
}

/** A directory we created (state dir, bpffs pin dir, scratch dir): removed with its contents. */
export function ownDir(dir: string): Release {
  return register('dir', () => fs.rmSync(dir, { recursive: true, force: true }));
}

/** Runs every registered removal now (also what 'exit' does); each entry once. */
export function removeAllOwned(): void {
  for (const kind of ORDER) {
    for (const e of [...entries]) {
      if (e.kind !== kind) continue;
      entries.delete(e);
      try {
        e.remove();
      } catch {
        /* best effort: the next entry still runs */
      }
    }
  }
}

/** How many things are registered (for tests of this module). */
export function ownedCount(): number {
  return entries.size;
}

function quiet(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
  } catch {
    /* already gone */
  }
}

function install(): void {
  if (installed) return;
  installed = true;
  // 'exit' handlers must be synchronous: the event loop is over.
  process.on('exit', removeAllOwned);
  // Node's default for these signals exits without running 'exit' handlers: clean, then exit with
  // the conventional 128+signal code so the runner still sees the file as killed.
  const onSignal = (sig: NodeJS.Signals) => {
    removeAllOwned();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
}
