// How the demo talks: a numbered headline per step, a line of explanation, then each command as a
// user would type it ($ ...) and its output. Commands run with the demo's environment
// (MEMBRANE_SOCKET, DOCKER_HOST), so what is printed is what one would type with those exported.
import { spawnSync } from 'node:child_process';

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);

const t0 = Date.now();
/** Seconds since the demo started. */
export const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);

export function step(n: number, total: number, title: string, why: string): void {
  process.stdout.write(`\n${bold(`[${n}/${total}] ${title}`)} ${dim(`(${elapsed()} s)`)}\n${dim(why)}\n`);
}

export function note(s: string): void {
  process.stdout.write(`${s}\n`);
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `cmd args` and prints it as `$ shown` (default: the command itself) with its output, indented.
 * `expect`: the exit code that is not a failure of the demo (default 0).
 */
export function run(
  cmd: string,
  args: string[],
  o: { env: NodeJS.ProcessEnv; shown?: string; prompt?: string; expect?: number[]; timeoutMs?: number },
): RunResult {
  process.stdout.write(`${o.prompt ?? ''}$ ${o.shown ?? [cmd, ...args].join(' ')}\n`);
  const r = spawnSync(cmd, args, { env: o.env, encoding: 'utf8', timeout: o.timeoutMs ?? 60_000 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.replace(/\s+$/, '');
  if (out)
    process.stdout.write(
      `${out
        .split('\n')
        .map((l) => `  ${l}`)
        .join('\n')}\n`,
    );
  const code = r.status ?? -1;
  if (!(o.expect ?? [0]).includes(code))
    throw new Error(`${o.shown ?? cmd} exited with ${r.signal ?? code}${r.error ? ` (${r.error.message})` : ''}`);
  return { code, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
