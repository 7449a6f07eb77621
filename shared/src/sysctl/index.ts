// /proc/sys reads and writes (forwarding, proxy_arp, proxy_ndp ...).
//
// /proc/sys/net/* shows the netns of the thread that opens the file, so these calls act in whatever netns
// the main thread is in: wrap them in withNetns(ns, ...) to change a container's settings (they are
// synchronous on purpose; an async write would run on a pool thread, in the host netns).
//
// Dotted keys follow sysctl(8): '.' separates components and a '/' inside a component stands for a '.'
// (so VLAN device "eth0.100" is written 'net.ipv4.conf.eth0/100.proxy_arp'). Easier: sysctlIfPath() or
// setSysctlPath() with a path.

import fs from 'node:fs';
import { ifNameProblem } from '../net/index.ts';

const ROOT = '/proc/sys/';

export class SysctlError extends Error {
  override readonly name = 'SysctlError';
  constructor(
    readonly key: string,
    readonly code: 'not_found' | 'invalid' | 'permission' | 'other',
    message: string,
  ) {
    super(message);
  }
}

/** 'net.ipv4.conf.eth0/100.proxy_arp' -> '/proc/sys/net/ipv4/conf/eth0.100/proxy_arp' */
export function sysctlKeyToPath(key: string): string {
  if (!key || key.startsWith('.') || key.startsWith('/') || key.includes('..'))
    throw new SysctlError(key, 'invalid', `invalid sysctl key "${key}"`);
  // swap '.' and '/' like sysctl(8)
  const rel = key.replace(/[./]/g, (ch) => (ch === '.' ? '/' : '.'));
  return ROOT + rel;
}

/** Per-interface knob: sysctlIfPath(4, 'eth0.100', 'proxy_arp'). family 6 -> net/ipv6/conf/... */
export function sysctlIfPath(family: 4 | 6, ifName: string, knob: string): string {
  const problem = ifNameProblem(ifName);
  if (problem) throw new SysctlError(ifName, 'invalid', `invalid interface name "${ifName}": it ${problem}`);
  if (!/^[A-Za-z0-9_]+$/.test(knob)) throw new SysctlError(knob, 'invalid', `invalid sysctl knob "${knob}"`);
  return `${ROOT}net/ipv${family}/conf/${ifName}/${knob}`;
}

function normalizePath(path: string): string {
  const p = path.startsWith('/') ? path : ROOT + path;
  if (!p.startsWith(ROOT) || p.split('/').includes('..')) throw new SysctlError(path, 'invalid', `not a /proc/sys path: ${path}`);
  return p;
}

function wrap(key: string, display: string, e: unknown): SysctlError {
  const err = e as NodeJS.ErrnoException;
  const code =
    err.code === 'ENOENT'
      ? 'not_found'
      : err.code === 'EINVAL'
        ? 'invalid'
        : err.code === 'EACCES' || err.code === 'EPERM'
          ? 'permission'
          : 'other';
  const why = code === 'not_found' ? 'no such key' : code === 'invalid' ? 'invalid argument' : err.message;
  return new SysctlError(key, code, `sysctl ${display}: ${why}`);
}

function write(path: string, value: string, key: string): void {
  try {
    // One write(2) of the whole value: /proc/sys handlers parse per write.
    fs.writeFileSync(path, value.endsWith('\n') ? value : `${value}\n`);
  } catch (e) {
    throw wrap(key, `${key}=${value}`, e);
  }
}

function read(path: string, key: string): string {
  try {
    return fs.readFileSync(path, 'utf8').trim();
  } catch (e) {
    throw wrap(key, key, e);
  }
}

/** setSysctlPath('/proc/sys/net/ipv4/conf/eth0.100/proxy_arp', '1'); relative paths are under /proc/sys. */
export function setSysctlPath(path: string, value: string): void {
  const p = normalizePath(path);
  write(p, value, p);
}

/** setSysctl('net.ipv4.conf.mbr1a2b.proxy_arp', '1') */
export function setSysctl(key: string, value: string): void {
  write(sysctlKeyToPath(key), value, key);
}

export function getSysctl(key: string): string {
  return read(sysctlKeyToPath(key), key);
}
