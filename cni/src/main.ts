// membrane-cni entry point: CNI on env/stdin/stdout. Only the Result/Error JSON goes to stdout.
import fs from 'node:fs';
import { runCni } from './run.ts';

/**
 * All of stdin, or less: once what arrived is one complete JSON document (the network configuration
 * is exactly that), the plugin goes on without waiting for the runtime to close its end. The close
 * comes a scheduling round of the runtime later; under load that was 4-18 ms of every ADD and DEL here
 * (MEMBRANE_CNI_TIMING between main and stdin).
 */
function readStdin(): Buffer {
  const chunks: Buffer[] = [];
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      // stdin closed or a TTY-less EAGAIN: what came so far (an empty config is reported as a decode error)
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN' || (e as NodeJS.ErrnoException).code === 'EOF') break;
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
    const all = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    if (completeJson(all)) return all;
  }
  return Buffer.concat(chunks);
}

/** One whole JSON object (ends in "}" and parses); anything else waits for more, or for EOF. */
function completeJson(b: Buffer): boolean {
  let end = b.length - 1;
  while (end >= 0 && (b[end] === 0x20 || b[end] === 0x0a || b[end] === 0x0d || b[end] === 0x09)) end--;
  if (end < 0 || b[end] !== 0x7d) return false;
  try {
    JSON.parse(b.toString('utf8'));
    return true;
  } catch {
    return false;
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
