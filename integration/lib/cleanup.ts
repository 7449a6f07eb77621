// What a test file created on this shared machine (processes, netns, host links, bpffs pin dirs,
// state dirs) is removed by the test's own teardown; this registry is the safety net for when the
// teardown never runs: tap kills the file on timeout (an IPC message, then SIGALRM, then SIGKILL a
// second later), someone presses ^C (SIGINT) or closes the terminal (SIGHUP), SIGTERM, or the file
// crashes. On 'exit' the registry removes, synchronously, only what was registered here — by PID
// and by the unique name we created, never by pattern — in an order that works: processes first
// (they hold pins and sockets), then links, then netns, then directories.
//
// A SIGKILL runs no handler at all, so every entry is also written to a ledger file
// (/run/membrane-test-owned/), and a detached guardian (guardian.sh) that holds a pipe from this
// process replays that ledger once the pipe closes — however the process ended. A ledger whose owner
// and guardian are both gone is replayed by the next test file that starts.
//
// Every harness (agent.ts, netns.ts, cluster.ts) registers what it creates and releases the entry
// once its own teardown removed the thing.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Drops the entry (the owner removed the thing itself). */
export type Release = () => void;

type Kind = 'proc' | 'link' | 'netns' | 'dir';
const ORDER: Kind[] = ['proc', 'link', 'netns', 'dir'];

interface Entry {
  kind: Kind;
  /** Its line in the ledger. */
  id: number;
  remove(): void;
}

const entries = new Set<Entry>();
let installed = false;

/** Where ledgers live: tmpfs, so a reboot (which also drops every netns and link) forgets them. */
export const LEDGER_DIR = '/run/membrane-test-owned';
const GUARDIAN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'guardian.sh');
let ledger: string | undefined;
let ledgerSeq = 0;

/** Registers `remove`; `record` is how guardian.sh finds the same thing after a SIGKILL
 *  (kind-specific fields, none holding a tab or newline). */
function register(kind: Kind, remove: () => void, record: string[]): Release {
  install();
  const e: Entry = { kind, id: ++ledgerSeq, remove };
  entries.add(e);
  note(['+', String(e.id), kind, ...record]);
  return () => forget(e);
}

function forget(e: Entry): void {
  if (entries.delete(e)) note(['-', String(e.id)]);
}

function note(fields: string[]): void {
  if (!ledger || fields.some((f) => /[\t\n]/.test(f))) return;
  try {
    fs.appendFileSync(ledger, `${fields.join('\t')}\n`);
  } catch {
    /* the in-process registry still covers every exit but SIGKILL */
  }
}

/** The start time of process `pid` (clock ticks since boot): with the PID, what names one process
 *  for good (a PID alone is reused). */
export function startTime(pid: number): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ').pop()?.split(' ')[19];
  } catch {
    return undefined;
  }
}

/** A child we spawned: SIGKILLed at exit if it is still running (its PID is ours only while it runs). */
export function ownChild(child: ChildProcess): Release {
  const pid = child.pid;
  const release = register(
    'proc',
    () => {
      if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    },
    pid === undefined ? [] : [String(pid), startTime(pid) ?? ''],
  );
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
 *  counts (read from /proc, not probed with a signal). A zombie leader with other threads still listed
 *  is running: /proc/PID/stat is its main thread's, which exits first, while the others (a Node
 *  process's libuv and V8 threads) hold the process's files, its listening sockets included, until
 *  the last has exited. After a SIGKILL under load that takes a while: a test that took the Z as gone
 *  saw a killed L7 worker's listener accept a SYN (l7-restart; harness-alive.test.ts). */
export function alive(pid: number): boolean {
  try {
    if (!/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))) return true;
    return fs.readdirSync(`/proc/${pid}/task`).length > 1;
  } catch {
    return false;
  }
}

/** A netns we added (`ip netns add NAME`). */
export function ownNetns(name: string): Release {
  return register('netns', () => quiet('ip', ['netns', 'del', name]), [name]);
}

/** A link we created, in the netns at `netnsPath` (default: this process's). */
export function ownLink(name: string, netnsPath?: string): Release {
  const cmd = ['ip', 'link', 'del', name];
  return register(
    'link',
    () => (netnsPath ? quiet('nsenter', [`--net=${netnsPath}`, ...cmd]) : quiet(cmd[0], cmd.slice(1))),
    netnsPath ? [name, netnsPath] : [name],
  );
}

/** A directory we created (state dir, bpffs pin dir, scratch dir): removed with its contents. */
export function ownDir(dir: string): Release {
  return register('dir', () => fs.rmSync(dir, { recursive: true, force: true }), [path.resolve(dir)]);
}

/** Runs every registered removal now (also what 'exit' does); each entry once. */
export function removeAllOwned(): void {
  for (const kind of ORDER) {
    for (const e of [...entries]) {
      if (e.kind !== kind) continue;
      forget(e);
      try {
        e.remove();
      } catch {
        /* best effort: the next entry still runs */
      }
    }
  }
}

/** At exit, after removeAllOwned: nothing is left for the guardian, which then finds no ledger. */
function dropLedger(): void {
  if (!ledger) return;
  fs.rmSync(ledger, { force: true });
  ledger = undefined;
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

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGALRM: 14, SIGTERM: 15 };

function install(): void {
  if (installed) return;
  installed = true;
  replayOrphanLedgers();
  startGuardian();
  // 'exit' handlers must be synchronous: the event loop is over.
  process.on('exit', () => {
    removeAllOwned();
    dropLedger();
  });
  // Node's default for these signals exits without running 'exit' handlers: clean, then exit with
  // the conventional 128+signal code so the runner still sees the file as killed. SIGALRM is tap's
  // timeout (tap's own handler prints the timeout first; it is registered before any test code).
  const onSignal = (sig: NodeJS.Signals) => {
    removeAllOwned();
    process.exit(128 + SIGNALS[sig]);
  };
  for (const sig of Object.keys(SIGNALS)) process.once(sig as NodeJS.Signals, onSignal);
}

/** The ledger of this process and its guardian: a detached `sh` (its own session, so a signal to our
 *  process group spares it) reading a pipe whose only writer is this process (libuv opens it
 *  close-on-exec: no child of ours holds it). */
function startGuardian(): void {
  try {
    fs.mkdirSync(LEDGER_DIR, { recursive: true, mode: 0o700 });
    const file = path.join(LEDGER_DIR, `${process.pid}-${startTime(process.pid) ?? 0}`);
    fs.writeFileSync(file, '');
    const g = spawn('sh', [GUARDIAN, file], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    g.on('error', () => undefined);
    g.unref();
    (g.stdin as unknown as { unref(): void } | null)?.unref();
    g.stdin?.on('error', () => undefined);
    ledger = file;
  } catch {
    ledger = undefined; // not root, or no /run: the in-process registry only
  }
}

/** Ledgers whose owner is gone and whose guardian never replayed them (it was killed too). */
function replayOrphanLedgers(): void {
  let names: string[];
  try {
    names = fs.readdirSync(LEDGER_DIR);
  } catch {
    return;
  }
  for (const name of names) {
    const [pid, start] = name.split('-');
    if (!/^\d+$/.test(pid ?? '') || startTime(Number(pid)) === start) continue; // owner still running
    const file = path.join(LEDGER_DIR, name);
    try {
      // Give the owner's own guardian its moment first.
      if (Date.now() - fs.statSync(file).mtimeMs < 30_000) continue;
      execFileSync('sh', [GUARDIAN, file], { stdio: 'ignore', timeout: 60_000 });
    } catch {
      /* gone meanwhile, or the next file tries again */
    }
  }
}
