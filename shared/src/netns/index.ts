// Network-namespace handles and the setns discipline.
//
// setns(CLONE_NEWNET) switches only the *calling thread*. Node runs JS on one thread, so the rule is:
// switch, do synchronous work (open a netlink socket, write a sysctl), switch back before returning to
// the event loop. Anything asynchronous started inside would finish on another thread or after the
// switch back, i.e. in the wrong netns, so withNetns() refuses promises.
//
// Threads inherit the netns of the thread that creates them. libuv starts its whole thread pool on the
// first queued job; if that ever happened inside withNetns, every fs/dns/crypto worker would live in a
// container's netns forever. warmThreadPool() starts the pool up front, from the host netns, and checks.

import fs from 'node:fs';
import koffi from 'koffi';

const CLONE_NEWNET = 0x40000000;
const NS_GET_NSTYPE = 0xb703; // _IO(0xb7, 0x3), linux/nsfs.h (4.11+)

const libc = koffi.load('libc.so.6');
const setnsNative = libc.func('int setns(int fd, int nstype)');
const ioctlNative = libc.func('int ioctl(int fd, unsigned long request, ...)');
const strerror = libc.func('const char *strerror(int errnum)');

export type NetnsErrorCode = 'netns_not_found' | 'netns_error';

export class NetnsError extends Error {
  override readonly name = 'NetnsError';
  constructor(
    readonly code: NetnsErrorCode,
    message: string,
    readonly path: string,
    readonly errno?: number,
  ) {
    super(message);
  }
}

export interface NetNs {
  readonly path: string;
  /** -1 once closed. */
  readonly fd: number;
  close(): void;
}

class NetnsHandle implements NetNs {
  #fd: number;
  constructor(
    readonly path: string,
    fd: number,
    private readonly permanent = false,
  ) {
    this.#fd = fd;
  }
  get fd(): number {
    return this.#fd;
  }
  close(): void {
    // The agent's own netns handle is shared by everyone and is what withNetns switches back to.
    if (this.permanent || this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    fs.closeSync(fd);
  }
  toString(): string {
    return this.path;
  }
}

/** Open a netns by path (/var/run/netns/NAME, /proc/PID/ns/net, ...). Caller closes it. */
export function openNetns(path: string): NetNs {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR' || err.code === 'ESRCH')
      throw new NetnsError('netns_not_found', `network namespace ${path} does not exist`, path, 2);
    throw new NetnsError('netns_error', `network namespace ${path}: ${err.message}`, path, -(err.errno ?? 0));
  }
  // A path that opens but is not a netns: a stale /var/run/netns mount point (netns deleted, bind mount
  // gone, empty file left) or a mistake (/proc/PID/ns/mnt). For the caller both mean "no such netns".
  const type = ioctlNative(fd, NS_GET_NSTYPE, 'int', 0) as number;
  if (type !== CLONE_NEWNET) {
    const errno = type < 0 ? koffi.errno() : 0;
    fs.closeSync(fd);
    const why = type < 0 ? 'not a namespace file' : 'a namespace of another type';
    throw new NetnsError('netns_not_found', `network namespace ${path} does not exist (${why})`, path, errno);
  }
  return new NetnsHandle(path, fd);
}

// Opened at module load, on the main thread, before anyone can switch it: the agent's own netns.
// (libuv opens everything O_CLOEXEC, so these fds never leak into child processes.)
const hostNs: NetNs = new NetnsHandle('/proc/thread-self/ns/net', fs.openSync('/proc/thread-self/ns/net', 'r'), true);
const { ino: hostInode, dev: hostDev } = fs.fstatSync(hostNs.fd, { bigint: true });

/** The netns the agent (main thread) lives in. Never closed; close() is a no-op. */
export function currentThreadNetns(): NetNs {
  return hostNs;
}

/** What the main thread is in right now; only withNetns changes it. */
let active: NetNs = hostNs;

function enter(ns: NetNs): void {
  if (setnsNative(ns.fd, CLONE_NEWNET) !== 0) {
    const errno = koffi.errno();
    throw new NetnsError('netns_error', `setns ${ns.path}: ${strerror(errno)}`, ns.path, errno);
  }
}

function fatal(msg: string): never {
  // Continuing would run the agent (API server sockets, later netlink handles) inside a container.
  try {
    fs.writeSync(2, `FATAL membrane: ${msg}; aborting\n`);
  } finally {
    process.abort();
  }
}

/**
 * Run fn with the calling (main) thread inside ns, then switch back to where it was, also when fn throws.
 * fn must be synchronous. Nesting works (restores the outer netns). If the switch back fails the process
 * aborts: a thread stuck in a container netns is unsafe.
 */
export function withNetns<T>(ns: NetNs, fn: () => T): T {
  if (ns === active) return fn();
  const prev = active;
  enter(ns); // throws before anything changed
  active = ns;
  let result: T;
  try {
    result = fn();
  } finally {
    active = prev;
    if (setnsNative(prev.fd, CLONE_NEWNET) !== 0)
      fatal(`cannot switch back from netns ${ns.path} to ${prev.path}: ${strerror(koffi.errno())}`);
  }
  if (result !== null && typeof result === 'object' && typeof (result as { then?: unknown }).then === 'function') {
    // The awaited part would run after we switched back. Swallow its outcome (it is a bug either way)
    // so it does not also surface as an unhandled rejection.
    (result as unknown as Promise<unknown>).then(undefined, () => {});
    throw new TypeError('withNetns: fn must be synchronous (it returned a promise)');
  }
  return result;
}

/** Same namespace? (same nsfs inode on the same device) */
export function sameNetns(a: NetNs, b: NetNs): boolean {
  if (a === b) return true;
  const sa = fs.fstatSync(a.fd, { bigint: true });
  const sb = fs.fstatSync(b.fd, { bigint: true });
  return sa.dev === sb.dev && sa.ino === sb.ino;
}

/**
 * Why `ns` must never be configured as a container's netns, or null when it may be: it is the netns
 * the agent itself runs in (whatever path names it: /proc/self/ns/net, /proc/<agent pid>/ns/net, a bind
 * mount of it), or the init process's (the node's own, when the agent runs elsewhere). Compared by
 * nsfs device and inode, the identity of a namespace.
 */
export function forbiddenNetnsReason(ns: NetNs): string | null {
  const st = fs.fstatSync(ns.fd, { bigint: true });
  if (st.ino === hostInode && st.dev === hostDev) return `the membrane agent's own network namespace (net:[${st.ino}])`;
  let init: fs.BigIntStats | undefined;
  try {
    init = fs.statSync('/proc/1/ns/net', { bigint: true });
  } catch {
    /* another pid namespace without /proc/1, or no permission */
  }
  if (init && st.ino === init.ino && st.dev === init.dev)
    return `the node's own network namespace (the init process's, net:[${st.ino}])`;
  return null;
}

/** nsfs inode of a netns, as in `ip netns identify` / `ls -l /proc/PID/ns/net` ("net:[INODE]"). */
export function netnsInode(ns: NetNs): bigint {
  return fs.fstatSync(ns.fd, { bigint: true }).ino;
}

/** Threads of this process that are not in the agent's netns (should always be empty outside withNetns). */
export function threadsOutsideHostNetns(): number[] {
  const out: number[] = [];
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const ino = fs.statSync(`/proc/self/task/${tid}/ns/net`, { bigint: true }).ino;
      if (ino !== hostInode) out.push(Number(tid));
    } catch {
      // thread exited meanwhile
    }
  }
  return out;
}

/**
 * Start libuv's worker threads now, from the host netns, so none is ever born inside a container netns.
 * libuv creates the whole pool (UV_THREADPOOL_SIZE, default 4) on the first job. Call once at startup.
 */
export async function warmThreadPool(): Promise<void> {
  if (active !== hostNs) throw new Error('warmThreadPool: must be called from the host netns');
  const n = Math.max(4, Number(process.env.UV_THREADPOOL_SIZE) || 4);
  await Promise.all(Array.from({ length: n }, () => fs.promises.stat('/proc/self')));
  const strays = threadsOutsideHostNetns();
  if (strays.length > 0)
    throw new Error(`threads ${strays.join(',')} are outside the agent's netns (pool started inside withNetns?)`);
}
