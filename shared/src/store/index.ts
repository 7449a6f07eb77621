// Persistent key/value documents. Everything the agent must not lose (IPAM, endpoints, networks) goes
// through this interface so a cluster store (etcd) can replace the files later.
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir, writeFileAtomic } from '../io/atomic-write.ts';

/** A value given as its JSON text (a caller that has it already: no second stringify). */
export interface RawJson {
  readonly rawJson: true;
  readonly json: string;
}

/** `json` must be valid JSON text; the stores write it as it is. */
export function rawJson(json: string): RawJson {
  return { rawJson: true, json };
}

export function isRawJson(v: unknown): v is RawJson {
  return typeof v === 'object' && v !== null && (v as RawJson).rawJson === true && typeof (v as RawJson).json === 'string';
}

const jsonOf = (v: unknown, indent?: number): string => (isRawJson(v) ? v.json : JSON.stringify(v, null, indent));

export interface Store {
  get<T>(key: string): Promise<T | undefined>;
  /** Durable when it resolves: a crash afterwards never loses the value, a crash before leaves the old
   *  one. `value` may be given as JSON text (rawJson). */
  put(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<boolean>;
  /** Every document whose key starts with `prefix/`. */
  list<T>(prefix: string): Promise<{ key: string; value: T }[]>;
  /** Several changes at once, durable when it resolves; atomic (all or none after a crash) where the
   *  store can do it (the journal, memory). `freeing`: see JournalStore.batch. */
  batch?(changes: StoreChange[], opts?: { freeing?: boolean }): Promise<void>;
}

export type StoreChange = { op: 'put'; key: string; value: unknown } | { op: 'del'; key: string };

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._:@=+-]*$/;

/** One JSON file per key under a directory; every put is an atomic replace (shared/src/io/atomic-write.ts). */
export class FileStore implements Store {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  private fileOf(key: string): string {
    const parts = key.split('/');
    for (const p of parts) {
      if (!SEGMENT.test(p)) throw new Error(`invalid store key "${key}"`);
    }
    return path.join(this.dir, ...parts) + '.json';
  }

  async get<T>(key: string): Promise<T | undefined> {
    try {
      return JSON.parse(await fs.promises.readFile(this.fileOf(key), 'utf8')) as T;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new Error(`store: cannot read ${this.fileOf(key)}: ${(e as Error).message}`);
    }
  }

  async put(key: string, value: unknown): Promise<void> {
    const file = this.fileOf(key);
    await writeFileAtomic(file, jsonOf(value, 1) + '\n');
  }

  async delete(key: string): Promise<boolean> {
    const file = this.fileOf(key);
    try {
      await fs.promises.unlink(file);
      await fsyncDir(path.dirname(file));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  async list<T>(prefix: string): Promise<{ key: string; value: T }[]> {
    const dir = path.join(this.dir, ...prefix.split('/'));
    let names: string[];
    try {
      names = await fs.promises.readdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: { key: string; value: T }[] = [];
    for (const name of names.sort()) {
      if (!name.endsWith('.json')) continue; // temp files of an interrupted write are ignored
      const key = `${prefix}/${name.slice(0, -5)}`;
      const value = await this.get<T>(key);
      if (value !== undefined) out.push({ key, value });
    }
    return out;
  }
}

/** In-memory store for unit tests of pure logic. */
export class MemoryStore implements Store {
  private readonly docs = new Map<string, string>();
  async get<T>(key: string): Promise<T | undefined> {
    const v = this.docs.get(key);
    return v === undefined ? undefined : (JSON.parse(v) as T);
  }
  async put(key: string, value: unknown): Promise<void> {
    this.docs.set(key, jsonOf(value));
  }
  async delete(key: string): Promise<boolean> {
    return this.docs.delete(key);
  }
  async batch(changes: StoreChange[]): Promise<void> {
    const json = changes.map((c) => (c.op === 'put' ? jsonOf(c.value) : undefined)); // all or nothing
    for (const [i, c] of changes.entries()) {
      if (c.op === 'put') this.docs.set(c.key, json[i]!);
      else this.docs.delete(c.key);
    }
  }
  async list<T>(prefix: string): Promise<{ key: string; value: T }[]> {
    return [...this.docs.keys()]
      .filter((k) => k.startsWith(prefix + '/'))
      .sort()
      .map((key) => ({ key, value: JSON.parse(this.docs.get(key)!) as T }));
  }
}
