// A process of ours (agent, operator, relay, etcd's helpers) started in a netns of ours under
// nsenter, stopped by its PID only, and registered with the exit registry (cleanup.ts) so that it
// never outlives a killed test file; and the polling helpers the harness's tests use.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { REPO } from './agent.ts';
import { ownChild, signalAndWait } from './cleanup.ts';
import type { TestNetns } from './netns.ts';
import { pollUntil } from '../../shared/test/lib/poll.ts';

/** A supervised process of ours (agent, operator) started under nsenter. */
export interface Proc {
  pid(): number | undefined;
  running(): boolean;
  logFile: string;
  start(): Promise<void>;
  /** SIGTERM and wait. */
  stop(): Promise<void>;
  kill9(): Promise<void>;
}

/** `node --import tsx ARGS` in `ns` (not started until start()); a built script (ARGS[0] not a .ts file,
 *  e.g. dist/bin/membrane-agent) runs without the TypeScript loader, as a node runs it. */
export function supervisedProc(ns: TestNetns, args: string[], logFile: string, env: NodeJS.ProcessEnv = {}): Proc {
  let child: ChildProcess | undefined;
  const e: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete e.NODE_EXTRA_CA_CERTS;
  // A process that does not stop within 10 s of SIGTERM is killed: cleanup never hangs.
  const signal = (sig: NodeJS.Signals) => signalAndWait(child, sig, sig === 'SIGKILL' ? 0 : 10_000);
  const p: Proc = {
    logFile,
    pid: () => child?.pid,
    running: () => !!child && child.exitCode === null && child.signalCode === null,
    async start() {
      const fd = fs.openSync(logFile, 'a');
      // nsenter execs the command: the PID we hold is the agent's / operator's own.
      const loader = args[0]?.endsWith('.ts') ? ['--import', 'tsx'] : [];
      child = spawn('nsenter', [`--net=${ns.path}`, process.execPath, ...loader, ...args], {
        cwd: REPO,
        env: e,
        stdio: ['ignore', fd, fd],
      });
      fs.closeSync(fd);
      ownChild(child);
    },
    stop: () => signal('SIGTERM'),
    kill9: () => signal('SIGKILL'),
  };
  return p;
}

export function tail(file: string, lines = 40): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Polls until `fn` is true, a throw counting as not yet (pollUntil's loop); resolves with the ms it
 *  took, or throws naming `what` after `ms`. */
export async function eventually(what: string, fn: () => boolean | Promise<boolean>, ms = 15_000, every = 50): Promise<number> {
  const t0 = Date.now();
  const held = await pollUntil(
    async () =>
      !!(await Promise.resolve()
        .then(fn)
        .catch(() => false)),
    ms,
    every,
  );
  if (!held) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
  return Date.now() - t0;
}
