// One agent per state dir: a second agent on the same state would hand out the same addresses.
//
// The lock is flock(2) on the pid file, not the file's existence: the kernel grants it to exactly one
// process however many start at once, and releases it when that process dies, even by SIGKILL, so
// there is no stale lock to guess about and no window between "is it stale?" and "take it". The file
// is never removed (removing a lock file lets a third process lock a new inode while a second one
// still holds the old); it holds the owner's pid for people and for the error message.
import fs from 'node:fs';
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const flock = libc.func('int flock(int fd, int operation)');
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
const EINTR = 4;

export interface PidLock {
  release(): void;
}

/** flock(LOCK_EX | LOCK_NB) on fd: false when another process holds it (fd is then closed). */
function lockOrClose(fd: number, file: string): boolean {
  for (;;) {
    if ((flock(fd, LOCK_EX | LOCK_NB) as number) === 0) return true;
    const errno = koffi.errno();
    if (errno === EINTR) continue;
    fs.closeSync(fd);
    if (errno === EWOULDBLOCK) return false;
    throw new Error(`cannot lock ${file}: errno ${errno}`);
  }
}

export function acquirePidLock(file: string): PidLock {
  // libuv opens with O_CLOEXEC: processes the agent starts (L7 proxy workers) never inherit the lock.
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  if (!lockOrClose(fd, file)) {
    const pid = readPid(file);
    throw new Error(
      `another membrane-agent (${pid ? `pid ${pid}` : 'starting'}) already uses this state dir (${file} is locked)`,
    );
  }
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } catch {
    /* a full disk: the lock is the flock, the pid only informs */
  }
  let held = true;
  return {
    release: () => {
      if (!held) return;
      held = false;
      try {
        fs.ftruncateSync(fd, 0);
      } catch {
        /* the lock goes with the fd anyway */
      }
      fs.closeSync(fd);
    },
  };
}

/** One agent per bpffs dir as well (agents with separate state dirs can still name the same
 *  --bpffs-dir): the tcx links are pinned there by ifindex, and ifindexes repeat across netns, so a
 *  second agent would take the first one's link for its own device (a program swapped into another
 *  netns's link) and leave its own pods with no program at all. The lock is flock(2) on the directory
 *  itself (bpffs holds no regular files), released with the process like the pid file's. */
export function acquireDirLock(dir: string): PidLock {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  if (!lockOrClose(fd, dir))
    throw new Error(
      `another membrane-agent already uses the bpffs dir ${dir} (it is locked): give each agent its own --bpffs-dir`,
    );
  let held = true;
  return {
    release: () => {
      if (!held) return;
      held = false;
      fs.closeSync(fd);
    },
  };
}

function readPid(file: string): number | null {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim()) || null;
  } catch {
    return null;
  }
}
