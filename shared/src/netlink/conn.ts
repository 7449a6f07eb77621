// One libnl route socket plus the plumbing every operation shares: run a request and turn a failure into
// a NetlinkError that names the operation and the object, build nl_addr objects from text, and free.

import type { NetNs } from '../netns/index.ts';
import { withNetns } from '../netns/index.ts';
import { NetlinkError } from './errors.ts';
import {
  enableExtAck,
  lastKernelError,
  lib,
  NETLINK_ROUTE,
  prepareSocket,
  resetKernelError,
  type KernelError,
  type Ptr,
} from './lib.ts';
import { afOf } from './parse.ts';
import { ipBytes, parseIfAddr, type IfAddr } from '../net/index.ts';

// A forgotten handle must not leak its socket forever (close() unregisters, so no double free).
const finalizer = new FinalizationRegistry<Ptr>((sk) => lib().nl_socket_free(sk));

export class Conn {
  #sk: Ptr | null;
  /** Resolves an ifindex to a name for error messages; set by the owner (needs link lookups). */
  nameOf: (index: number) => string | null = () => null;

  private constructor(
    sk: Ptr,
    readonly netns: NetNs | undefined,
  ) {
    this.#sk = sk;
    finalizer.register(this, sk, this);
  }

  /**
   * Open a route socket. With ns, the socket is created inside it (a socket belongs to the netns it was
   * created in, for good) and every request on it acts there; without, in the caller's current netns.
   */
  static open(ns?: NetNs): Conn {
    const l = lib();
    const sk = l.nl_socket_alloc() as Ptr | null;
    if (sk === null) throw new NetlinkError({ op: 'netlink open', object: where(ns), reason: 'out of memory', nle: 5 });
    try {
      prepareSocket(sk);
      resetKernelError();
      // nl_connect() is where socket(2) happens, so that is the only call that must run inside ns.
      const rc = ns ? withNetns(ns, () => l.nl_connect(sk, NETLINK_ROUTE)) : l.nl_connect(sk, NETLINK_ROUTE);
      if (rc < 0) throw new NetlinkError({ op: 'netlink connect', object: where(ns), reason: l.nl_geterror(rc), nle: -rc });
      enableExtAck(sk);
    } catch (e) {
      l.nl_socket_free(sk);
      throw e;
    }
    return new Conn(sk, ns);
  }

  get closed(): boolean {
    return this.#sk === null;
  }

  close(): void {
    if (this.#sk === null) return;
    finalizer.unregister(this);
    lib().nl_socket_free(this.#sk);
    this.#sk = null;
  }

  get sk(): Ptr {
    if (this.#sk === null) throw new Error(`netlink handle (${where(this.netns)}) is closed`);
    return this.#sk;
  }

  /** Run one libnl call that talks to the kernel; rc < 0 becomes a NetlinkError. */
  exec(op: string, object: string | (() => string), call: (sk: Ptr) => number): number {
    const sk = this.sk;
    resetKernelError();
    const rc = call(sk);
    if (rc >= 0) return rc;
    const k = lastKernelError; // take it before describing the object issues more requests
    throw this.error(op, object, rc, k);
  }

  error(op: string, object: string | (() => string), rc: number, k: KernelError | null = null): NetlinkError {
    const l = lib();
    let obj: string;
    try {
      obj = typeof object === 'function' ? object() : object;
    } catch {
      obj = '?';
    }
    if (k && k.errno > 0)
      return new NetlinkError({ op, object: obj, reason: l.strerror(k.errno), errno: k.errno, nle: -rc, detail: k.extack });
    return new NetlinkError({ op, object: obj, reason: l.nl_geterror(rc), nle: -rc });
  }

  /** "dev mbr1a2b3c" for messages; falls back to the index when the link is gone or lookup fails. */
  dev(index: number): string {
    let name: string | null = null;
    try {
      name = this.nameOf(index);
    } catch {
      // describing an error must not throw another one
    }
    return name ? `dev ${name}` : `ifindex ${index}`;
  }
}

export function where(ns?: NetNs): string {
  return ns ? `in ${ns.path}` : 'in the current netns';
}

/** Input validation failure, reported like kernel errors so callers handle one error type. */
export function invalid(op: string, object: string, reason: string): NetlinkError {
  return new NetlinkError({ op, object, reason, code: 'invalid', errno: 22 });
}

/** Parse text or throw an 'invalid' NetlinkError naming op/object. */
export function cidrOrThrow(op: string, object: string, s: string): IfAddr {
  try {
    return parseIfAddr(s);
  } catch (e) {
    throw invalid(op, object, (e as Error).message);
  }
}

/** Build an nl_addr for c, hand it to fn, always drop our reference (setters take their own). */
export function withNlAddr<T>(c: IfAddr, fn: (a: Ptr) => T): T {
  const l = lib();
  const bytes = ipBytes(c.ip);
  const a = l.nl_addr_build(afOf(c.family), bytes, bytes.length) as Ptr | null;
  if (a === null) throw new Error('nl_addr_build: out of memory');
  try {
    l.nl_addr_set_prefixlen(a, c.prefix);
    return fn(a);
  } finally {
    l.nl_addr_put(a);
  }
}

/** Walk a libnl cache, then free it (objects are borrowed from the cache, not referenced). */
export function drainCache<T>(cache: Ptr, read: (obj: Ptr) => T | undefined): T[] {
  const l = lib();
  const out: T[] = [];
  try {
    for (let o = l.nl_cache_get_first(cache) as Ptr | null; o !== null; o = l.nl_cache_get_next(o) as Ptr | null) {
      const v = read(o);
      if (v !== undefined) out.push(v);
    }
  } finally {
    l.nl_cache_free(cache);
  }
  return out;
}
