// The datapath loaded for BPF_PROG_TEST_RUN tests: a fresh pin directory, both programs' fds, and
// everything removed at teardown. Tests that need root and bpffs skip themselves without them.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { type Datapath, type EndpointDatapathConfig, loadDatapath, removePins } from '../../src/bpf/datapath.ts';
import { objGet, progTestRun } from '../../src/bpf/libbpf.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const OK = 0,
  SHOT = 2,
  REDIRECT = 7;

/** Veth pairs of our own (`<prefix><tag><suffix>`, each with a `p` peer) for endpoints that need a
 *  real ifindex; deleted at teardown. Returns the ifindexes of the named ends, in order. */
export function vethIfindexes(prefix: string, suffixes: string[]): number[] {
  const tag = randomBytes(3).toString('hex');
  const devs = suffixes.map((s) => `${prefix}${tag}${s}`);
  t.teardown(() => {
    for (const d of devs) {
      try {
        execFileSync('ip', ['link', 'del', d], { stdio: 'ignore' });
      } catch {
        /* gone */
      }
    }
  });
  for (const d of devs) execFileSync('ip', ['link', 'add', d, 'type', 'veth', 'peer', 'name', `${d}p`]);
  return devs.map((d) => Number(fs.readFileSync(`/sys/class/net/${d}/ifindex`, 'utf8')));
}

/** Ends the test file (plan 0) unless it runs as root with bpffs mounted. */
export function requireBpf(): void {
  const mounted = fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === '/sys/fs/bpf' && l.split(' ')[2] === 'bpf');
  if (process.getuid?.() !== 0 || !mounted) {
    t.plan(0, 'needs root and bpffs at /sys/fs/bpf');
    process.exit(0);
  }
}

export interface Harness {
  dp: Datapath;
  pinDir: string;
  /** from_container / to_container on a packet; ifindex: the interface the packet is seen on (default lo). */
  from(pkt: Buffer, ifindex?: number): number;
  to(pkt: Buffer, ifindex?: number): number;
  fromFd: number;
  toFd: number;
}

/** Builds the object and loads it in t.before; `setup` adds endpoints. Cleans up in t.teardown. */
export function bpfHarness(opts: { ctMax?: number; endpoints?: EndpointDatapathConfig[] } = {}): Harness {
  execFileSync('bash', [path.join(ROOT, 'scripts/build-bpf.sh')], { stdio: 'inherit' });
  const pinDir = `/sys/fs/bpf/mbt-${randomBytes(4).toString('hex')}`;
  const h = {
    pinDir,
    fromFd: -1,
    toFd: -1,
    from: (pkt: Buffer, ifindex?: number) => progTestRun(h.fromFd, pkt, { ifindex }).retval,
    to: (pkt: Buffer, ifindex?: number) => progTestRun(h.toFd, pkt, { ifindex }).retval,
  } as Harness;
  t.before(() => {
    h.dp = loadDatapath({ objectPath: path.join(ROOT, 'dist/bpf/endpoint.o'), pinDir, ctMax: opts.ctMax });
    for (const e of opts.endpoints ?? []) h.dp.upsertEndpoint(e);
    h.fromFd = objGet(path.join(pinDir, 'prog_from_container'));
    h.toFd = objGet(path.join(pinDir, 'prog_to_container'));
  });
  t.teardown(() => {
    for (const fd of [h.fromFd, h.toFd]) if (fd >= 0) fs.closeSync(fd);
    h.dp?.close();
    removePins(pinDir);
  });
  return h;
}

/** The verdict of from_container / to_container on a packet and the reason whose drop counter it
 *  moved (none: no counter moved). */
export function runCounted(h: Harness, hook: 'from' | 'to', pkt: Buffer, ifindex?: number): { verdict: number; reason?: number } {
  const before = h.dp.dropCounters();
  const verdict = hook === 'from' ? h.from(pkt, ifindex) : h.to(pkt, ifindex);
  const after = h.dp.dropCounters();
  const moved = Object.keys(after)
    .map(Number)
    .filter((r) => after[r].packets !== (before[r]?.packets ?? 0n));
  return moved.length ? { verdict, reason: moved[0] } : { verdict };
}

/** Drop counter of one reason (bpf/lib/drop.h). */
export function drops(dp: Datapath, reason: number): bigint {
  return dp.dropCounters()[reason]?.packets ?? 0n;
}
