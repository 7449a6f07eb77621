// membrane-cni entry point: CNI on env/stdin/stdout. Only the Result/Error JSON goes to stdout.
import fs from 'node:fs';
import { runCni } from './run.ts';

function readStdin(): Buffer {
  try {
    return fs.readFileSync(0);
  } catch (e) {
    // stdin closed or a TTY-less EAGAIN: an empty config is then reported as a decode error
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN' || (e as NodeJS.ErrnoException).code === 'EOF') return Buffer.alloc(0);
    throw e;
  }
}

runCni({ env: process.env, readStdin }).then(
  ({ stdout, exitCode }) => {
    if (stdout) fs.writeSync(1, stdout.endsWith('\n') ? stdout : stdout + '\n');
    // exit now: keep-alive sockets of the agent client must not hold the process
    process.exit(exitCode);
  },
  (e: unknown) => {
    fs.writeSync(1, JSON.stringify({ code: 999, msg: `membrane-cni crashed: ${(e as Error)?.message ?? String(e)}` }) + '\n');
    process.exit(1);
  },
);
