// The durable queue of DELs that could not reach the agent: its format and both ends. membrane-cni
// queues (one file per attachment, replaced atomically); the agent drains the queue when it starts,
// before it serves the API, and then periodically. Node built-ins only: the CNI executable bundles
// this file.
//
// Where: next to the agent's API socket, `<agentSocket>.pending-deletes/`, so that the plugin and the
// agent find it from the one setting they always share (a CNI config names only `agentSocket`; an
// agent with another --state-dir still drains it). The socket lives on /run, which a reboot empties:
// so do the netns the queued DELs were about, and the agent's restore drops endpoints whose netns is
// gone. The agent also drains `<stateDir>/cni-pending-deletes`, where older plugins queued.
//
// Format: <dir>/<32 hex of sha256(containerId NUL ifName)>.json holding a
// PendingDelete (version 1). node:crypto is loaded on first use (a plugin start must not pay for it).
// Queuing the same attachment twice overwrites the entry. Files that do not parse are renamed to
// <name>.bad so a broken entry never blocks the rest.
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDirSync, removeStaleTemps, writeFileAtomicSync } from '../io/atomic-write.ts';

/** The queue's directory for the agent at `socket` (its --socket, the CNI config's agentSocket). */
export function pendingDeletesDir(socket: string): string {
  return `${path.resolve(socket)}.pending-deletes`;
}

/** Where plugins before the socket-derived queue put it: under the CNI config's stateDir. */
export function legacyPendingDeletesDir(stateDir: string): string {
  return path.join(stateDir, 'cni-pending-deletes');
}

export interface PendingDelete {
  version: 1;
  containerId: string;
  ifName: string;
  /** CNI_NETNS at DEL time ('' when the runtime sent none). */
  netns: string;
  /** The CNI network (conf name) and the agent network, when known. */
  cniNetwork?: string;
  network?: string;
  queuedAt: string;
  /** Why the agent could not be asked directly. */
  reason: string;
}

export interface DrainReport {
  deleted: PendingDelete[];
  failed: { entry: PendingDelete; error: string }[];
  invalid: string[];
}

export function pendingFileName(containerId: string, ifName: string): string {
  return crypto().createHash('sha256').update(`${containerId}\0${ifName}`).digest('hex').slice(0, 32) + '.json';
}

/** Writes the entry durably; returns its path. Throws when the directory cannot be written. */
export function queuePendingDelete(dir: string, entry: Omit<PendingDelete, 'version' | 'queuedAt'>): string {
  const full: PendingDelete = { version: 1, ...entry, queuedAt: new Date().toISOString() };
  const target = path.join(dir, pendingFileName(entry.containerId, entry.ifName));
  writeFileAtomicSync(target, JSON.stringify(full) + '\n');
  return target;
}

/** Every queued entry, oldest first. Missing directory = empty queue. */
export function listPendingDeletes(dir: string): { file: string; entry?: PendingDelete }[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  // queuedAt has millisecond resolution; the file's nanosecond mtime orders DELs queued in the same one.
  const out = names.map((n) => {
    const file = path.join(dir, n);
    let mtimeNs = 0n;
    try {
      mtimeNs = fs.statSync(file, { bigint: true }).mtimeNs;
    } catch {
      /* drained meanwhile */
    }
    return { file, entry: readEntry(file), mtimeNs };
  });
  out.sort(
    (a, b) =>
      (a.entry?.queuedAt ?? '').localeCompare(b.entry?.queuedAt ?? '') ||
      (a.mtimeNs < b.mtimeNs ? -1 : a.mtimeNs > b.mtimeNs ? 1 : 0),
  );
  return out.map(({ file, entry }) => ({ file, entry }));
}

/**
 * Runs `deleteFn` for every queued entry, one at a time. An entry is removed only after `deleteFn`
 * resolved; a failure keeps it for the next drain and the drain goes on. `deleteFn` must be idempotent
 * (an unknown endpoint is success). Leftover temp files of crashed writers are removed.
 */
export async function drainPendingDeletes(
  dir: string,
  deleteFn: (entry: PendingDelete) => Promise<unknown>,
): Promise<DrainReport> {
  const report: DrainReport = { deleted: [], failed: [], invalid: [] };
  removeStaleTemps(dir);
  for (const { file, entry } of listPendingDeletes(dir)) {
    if (!entry) {
      try {
        fs.renameSync(file, `${file}.bad`);
      } catch {
        /* raced with another drain */
      }
      report.invalid.push(file);
      continue;
    }
    try {
      await deleteFn(entry);
    } catch (e) {
      report.failed.push({ entry, error: (e as Error)?.message ?? String(e) });
      continue;
    }
    // a DEL queued again while we were deleting has a newer queuedAt: keep that one
    const now = readEntry(file);
    if (now && now.queuedAt !== entry.queuedAt) continue;
    try {
      fs.unlinkSync(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    report.deleted.push(entry);
  }
  if (report.deleted.length) fsyncDirSync(dir);
  return report;
}

const crypto = () => process.getBuiltinModule('node:crypto');

function readEntry(file: string): PendingDelete | undefined {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as PendingDelete;
    if (v && v.version === 1 && typeof v.containerId === 'string' && v.containerId && typeof v.ifName === 'string' && v.ifName)
      return v;
  } catch {
    /* fall through */
  }
  return undefined;
}
