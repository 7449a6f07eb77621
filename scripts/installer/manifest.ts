// What an installation wrote, so that uninstall removes exactly that and nothing it did not write.
// A configuration file (the agent's, a conflist) is removed only while it is as installed, unless
// purging: a changed one is the operator's.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export type EntryKind = 'file' | 'config' | 'dir';

export interface Entry {
  path: string;
  kind: EntryKind;
  /** For config files: the content as installed. */
  sha256?: string;
}

export interface Manifest {
  version: 1;
  installedAt: string;
  entries: Entry[];
}

export function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

export function readManifest(file: string): Manifest | undefined {
  try {
    const m = JSON.parse(fs.readFileSync(file, 'utf8')) as Manifest;
    return m.version === 1 && Array.isArray(m.entries) ? m : undefined;
  } catch {
    return undefined;
  }
}

export function writeManifest(file: string, entries: Entry[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const m: Manifest = { version: 1, installedAt: new Date().toISOString(), entries };
  fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(m, null, 2)}\n`);
  fs.renameSync(`${file}.tmp`, file);
}

/** Removes the entries; returns what it removed and what it kept (changed config files). */
export function removeEntries(entries: Entry[], purge: boolean): { removed: string[]; kept: string[] } {
  const removed: string[] = [];
  const kept: string[] = [];
  for (const e of entries) {
    if (!fs.existsSync(e.path) && !isSymlink(e.path)) continue;
    if (e.kind === 'config' && !purge && e.sha256 && sha256(e.path) !== e.sha256) {
      kept.push(e.path);
      continue;
    }
    fs.rmSync(e.path, { recursive: e.kind === 'dir', force: true });
    removed.push(e.path);
  }
  return { removed, kept };
}

function isSymlink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Removes `dir` and its parents up to (not including) `stop` while they are empty. */
export function removeEmptyDirs(dir: string, stop: string): void {
  for (let d = dir; d.startsWith(stop + path.sep) && d !== stop; d = path.dirname(d)) {
    try {
      fs.rmdirSync(d);
    } catch {
      return;
    }
  }
}
