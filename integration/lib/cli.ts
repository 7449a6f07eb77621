// The `membrane` CLI from source as a test runs it: a child process (async, so that servers in the
// test's own process keep answering), with the caller's variables added and no CA bundle
// (NODE_EXTRA_CA_CERTS costs every Node start 35-65 ms here).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { REPO } from './agent.ts';

export interface CliResult {
  code: number | null;
  out: string;
  err: string;
}

/** `membrane ARGS` with `env` (e.g. MEMBRANE_SOCKET, MEMBRANE_OBSERVER_SOCKET) added to ours. */
export function membrane(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const e: NodeJS.ProcessEnv = { ...process.env, ...env };
  delete e.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO, 'shared/src/cli/main.ts'), ...args], {
    cwd: REPO,
    env: e,
  });
  let out = '',
    err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
  });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, out, err })));
}
