// A worker process as the agent finds it (manager.ts): its pid file, whether it runs, and whether it
// is that worker (an agent restarted adopts the workers it finds).
import fs from 'node:fs';

export function pidFromFile(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether pid runs the worker of that index: its output goes to that worker's log (a pid file can
 *  outlive its process, and the pid be another process's by now; a worker's command line is its
 *  title, `membrane-proxy N`, the same for every agent's). */
export function isWorker(pid: number, log: string): boolean {
  try {
    return fs.readlinkSync(`/proc/${pid}/fd/1`) === log;
  } catch {
    return false;
  }
}
