// One agent per state dir: a second agent on the same state would hand out the same addresses.
import fs from 'node:fs';

export interface PidLock { release(): void }

export function acquirePidLock(file: string): PidLock {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      return { release: () => { if (readPid(file) === process.pid) fs.rmSync(file, { force: true }); } };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = readPid(file);
      if (pid && pid !== process.pid && alive(pid)) {
        throw new Error(`another membrane-agent (pid ${pid}) already uses this state dir (${file})`);
      }
      fs.rmSync(file, { force: true }); // stale: its process is gone (e.g. kill -9)
    }
  }
  throw new Error(`cannot take the agent lock ${file}`);
}

function readPid(file: string): number | null {
  try { return Number(fs.readFileSync(file, 'utf8').trim()) || null; } catch { return null; }
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}
