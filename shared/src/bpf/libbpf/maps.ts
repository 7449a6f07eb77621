// Map elements: single and batched update/lookup/delete, and whole-map walks.
import { constants as osConstants } from 'node:os';
import { BpfError, bind, check } from './native.ts';

// bpf_map_update_elem flags
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;

export function mapUpdate(fd: number, mapName: string, key: Buffer, value: Buffer, flags = BPF_ANY): void {
  check(bind().map_update_elem(fd, key, value, flags), 'bpf_map_update_elem', `map ${mapName} key ${key.toString('hex')}`);
}

/** Value bytes, or null when the key is absent. `valueSize` must include per-CPU expansion. */
export function mapLookup(fd: number, mapName: string, key: Buffer, valueSize: number): Buffer | null {
  const value = Buffer.alloc(valueSize);
  const ret = bind().map_lookup_elem(fd, key, value);
  if (ret === -osConstants.errno.ENOENT) return null;
  check(ret, 'bpf_map_lookup_elem', `map ${mapName} key ${key.toString('hex')}`);
  return value;
}

/** Returns false when the key was already absent. */
export function mapDelete(fd: number, mapName: string, key: Buffer): boolean {
  const ret = bind().map_delete_elem(fd, key);
  if (ret === -osConstants.errno.ENOENT) return false;
  check(ret, 'bpf_map_delete_elem', `map ${mapName} key ${key.toString('hex')}`);
  return true;
}

/** Update `count` consecutive keys/values in one syscall (hash maps). Throws naming how many were done. */
export function mapUpdateBatch(fd: number, mapName: string, keys: Buffer, values: Buffer, count: number): void {
  if (!count) return;
  const n = [count];
  const ret = bind().map_update_batch(fd, keys, values, n, null);
  if (ret < 0) throw new BpfError('bpf_map_update_batch', `map ${mapName} (${n[0]} of ${count} updated)`, -ret);
}

/** Delete `count` consecutive keys in one syscall. Keys already absent make the kernel stop with
 *  ENOENT; the rest is then deleted one by one (absent ones skipped). */
export function mapDeleteBatch(fd: number, mapName: string, keys: Buffer, keySize: number, count: number): void {
  if (!count) return;
  const n = [count];
  const ret = bind().map_delete_batch(fd, keys, n, null);
  if (ret === 0) return;
  if (ret !== -osConstants.errno.ENOENT)
    throw new BpfError('bpf_map_delete_batch', `map ${mapName} (${n[0]} of ${count} deleted)`, -ret);
  for (let i = n[0]; i < count; i++) mapDelete(fd, mapName, keys.subarray(i * keySize, (i + 1) * keySize));
}

/** Delete `count` consecutive keys, batched; returns which were deleted (false: already absent). The
 *  kernel stops a batch at the first absent key, so the batch resumes after it. */
export function mapDeleteEach(fd: number, mapName: string, keys: Buffer, keySize: number, count: number): boolean[] {
  const out = new Array<boolean>(count).fill(false);
  for (let start = 0; start < count; ) {
    const n = [count - start];
    const ret = bind().map_delete_batch(fd, keys.subarray(start * keySize), n, null);
    for (let i = 0; i < n[0]; i++) out[start + i] = true;
    if (ret === 0) break;
    if (ret !== -osConstants.errno.ENOENT)
      throw new BpfError('bpf_map_delete_batch', `map ${mapName} (${start + n[0]} of ${count} deleted)`, -ret);
    start += n[0] + 1; // keys[start + n] was absent
  }
  return out;
}

/** Every key and value of a hash map in batches of `chunk` (values include per-CPU expansion). */
export function mapDumpBatch(
  fd: number,
  mapName: string,
  keySize: number,
  valueSize: number,
  chunk = 4096,
): { keys: Buffer[]; values: Buffer[] } {
  const keys: Buffer[] = [];
  const values: Buffer[] = [];
  const token = Buffer.alloc(Math.max(keySize, 8));
  const kb = Buffer.alloc(keySize * chunk);
  const vb = Buffer.alloc(valueSize * chunk);
  let first = true;
  for (;;) {
    const n = [chunk];
    const ret = bind().map_lookup_batch(fd, first ? null : token, token, kb, vb, n, null);
    if (ret < 0 && ret !== -osConstants.errno.ENOENT) throw new BpfError('bpf_map_lookup_batch', `map ${mapName}`, -ret);
    for (let i = 0; i < n[0]; i++) {
      keys.push(Buffer.from(kb.subarray(i * keySize, (i + 1) * keySize)));
      values.push(Buffer.from(vb.subarray(i * valueSize, (i + 1) * valueSize)));
    }
    if (ret < 0) return { keys, values }; // ENOENT: that was the last batch
    first = false;
  }
}

/** A first batch this small is read into two buffers kept from dump to dump (what a dump returns is
 *  a copy): a walk of a mostly empty table after every ADD then allocates only what it finds. */
const SCRATCH_BYTES = 128 * 1024;
const scratchBuffers: Buffer[] = [];
function scratch(i: 0 | 1, bytes: number): Buffer {
  if (!scratchBuffers[i] || scratchBuffers[i].length < bytes) scratchBuffers[i] = Buffer.allocUnsafe(bytes);
  return scratchBuffers[i].subarray(0, bytes);
}

/** Every key and value of a map as two packed buffers (`count` records each): no object per entry,
 *  for walks over large tables. Batches start at `firstChunk` records and grow fourfold up to `chunk`:
 *  a mostly empty table costs a small buffer, not one of `chunk` records every walk (they are
 *  malloc'd outside the V8 heap and linger until a GC). */
export function mapDumpPacked(
  fd: number,
  mapName: string,
  keySize: number,
  valueSize: number,
  chunk = 8192,
  maxBatches = Infinity,
  firstChunk = chunk,
): { keys: Buffer; values: Buffer; count: number } {
  const keyParts: Buffer[] = [];
  const valueParts: Buffer[] = [];
  let count = 0;
  const token = Buffer.alloc(Math.max(keySize, 8));
  let first = true;
  for (let size = Math.min(firstChunk, chunk); ; size = Math.min(size * 4, chunk)) {
    // Only the first batch: the parts are copied out together at the end.
    const small = first && (keySize + valueSize) * size <= SCRATCH_BYTES;
    const kb = small ? scratch(0, keySize * size) : Buffer.allocUnsafe(keySize * size);
    const vb = small ? scratch(1, valueSize * size) : Buffer.allocUnsafe(valueSize * size);
    const n = [size];
    const ret = bind().map_lookup_batch(fd, first ? null : token, token, kb, vb, n, null);
    if (ret < 0 && ret !== -osConstants.errno.ENOENT) throw new BpfError('bpf_map_lookup_batch', `map ${mapName}`, -ret);
    keyParts.push(kb.subarray(0, n[0] * keySize));
    valueParts.push(vb.subarray(0, n[0] * valueSize));
    count += n[0];
    if (ret < 0 || keyParts.length >= maxBatches) break; // ENOENT: that was the last batch
    first = false;
  }
  return { keys: Buffer.concat(keyParts), values: Buffer.concat(valueParts), count };
}

/** All keys, bounded by `limit` (a concurrently modified hash can restart the walk). */
export function mapKeys(fd: number, mapName: string, keySize: number, limit: number): Buffer[] {
  const keys: Buffer[] = [];
  let prev: Buffer | null = null;
  while (keys.length < limit) {
    const next = Buffer.alloc(keySize);
    const ret = bind().map_get_next_key(fd, prev, next);
    if (ret === -osConstants.errno.ENOENT) break;
    check(ret, 'bpf_map_get_next_key', `map ${mapName}`);
    keys.push(next);
    prev = next;
  }
  return keys;
}

/** How many keys, bounded by `limit`, walking with two key buffers in turn: no Buffer per key. A
 *  metrics scrape counts the maps (mapPressure), and with 10,000 CIDR rules the ipcache alone holds
 *  10,000+ prefixes: mapKeys' Buffer per key was the garbage behind ~90-165 ms of GC after each
 *  recount, on every node (profiled with bench cross-node-events, RULES=10000). */
export function mapCount(fd: number, mapName: string, keySize: number, limit: number): number {
  let a = Buffer.alloc(keySize),
    b = Buffer.alloc(keySize);
  let n = 0;
  for (let prev: Buffer | null = null; n < limit; n++) {
    const ret = bind().map_get_next_key(fd, prev, a);
    if (ret === -osConstants.errno.ENOENT) break;
    check(ret, 'bpf_map_get_next_key', `map ${mapName}`);
    prev = a; // the next call reads it while writing the other buffer
    [a, b] = [b, a];
  }
  return n;
}
