// What a run may leave on the node, named by the run's unique tag: processes whose command line
// carries it, mounts and directories under its dirs, its links and its pins. The demo checks this at
// its end and its test checks it again from outside.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

export interface Leftovers {
  processes: string[];
  mounts: string[];
  links: string[];
  paths: string[];
}

function linkExists(name: string): boolean {
  try {
    execFileSync('ip', ['link', 'show', 'dev', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Processes (other than this one) whose command line contains `tag`. */
export function processesWith(tag: string): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid)) {
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
    } catch {
      continue;
    }
    if (cmd.includes(tag)) out.push(`${pid} ${cmd.slice(0, 160)}`);
  }
  return out;
}

export function mountsWith(tag: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && m.includes(tag));
}

export function leftovers(tag: string, links: string[], paths: string[]): Leftovers {
  return {
    processes: processesWith(tag),
    mounts: mountsWith(tag),
    links: links.filter(linkExists),
    paths: paths.filter((p) => fs.existsSync(p)),
  };
}

export function nothingLeft(l: Leftovers): boolean {
  return !l.processes.length && !l.mounts.length && !l.links.length && !l.paths.length;
}
