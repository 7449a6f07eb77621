// koffi bindings to the system libbpf.so.1 (1.1.x). Thin, typed wrappers that turn libbpf's negative
// errno returns into BpfError naming the operation, the object and the kernel's reason.
// Struct layouts mirror /usr/include/bpf/libbpf.h and bpf.h; sizes are asserted at bind time.
import koffi from 'koffi';
import { constants as osConstants } from 'node:os';

export type Pointer = bigint;

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

export class BpfError extends Error {
  /** Positive errno (libbpf returns -errno). */
  readonly errno: number;
  /** Symbolic errno, e.g. "ENOENT" (or "LIBBPF_ERRNO_<n>" for libbpf's own codes). */
  readonly code: string;
  constructor(
    readonly op: string,
    readonly target: string,
    errno: number,
    /** libbpf log lines captured during the failed call (verifier log, pin mismatches, ...). */
    readonly log: string[] = [],
  ) {
    const code = ERRNO_NAMES.get(errno) ?? `LIBBPF_ERRNO_${errno}`;
    const tail = log.length ? `\nlibbpf log (last ${Math.min(log.length, 40)} lines):\n${log.slice(-40).join('\n')}` : '';
    super(`${op} ${target}: ${strerror(errno)} (${code})${tail}`);
    this.name = 'BpfError';
    this.errno = errno;
    this.code = code;
  }
}

// enum bpf_tc_attach_point / enum bpf_tc_flags
export const BPF_TC_INGRESS = 1 << 0;
export const BPF_TC_EGRESS = 1 << 1;
export const BPF_TC_F_REPLACE = 1 << 0;
// bpf_map_update_elem flags
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
// enum bpf_attach_type values for tcx (kernel 6.6+; not in libbpf 1.1's headers)

// biome-ignore lint/suspicious/noExplicitAny: koffi functions take and return whatever their C signature says
type Fn = (...args: any[]) => any;
interface Bindings {
  [name: string]: Fn;
}

let bound: Bindings | null = null;
let logSink: ((level: number, line: string) => void) | null = null;
const recentLog: string[] = [];

function bind(): Bindings {
  if (bound) return bound;
  const lib = koffi.load('libbpf.so.1');
  const libc = koffi.load('libc.so.6');
  koffi.opaque('bpf_object');
  koffi.opaque('bpf_program');
  koffi.opaque('bpf_map');
  // `size_t :0` at the end of both structs only pads them to 8-byte alignment, which koffi's C
  // layout rules reproduce; the asserts catch a drift.
  const hook = koffi.struct('bpf_tc_hook', { sz: 'size_t', ifindex: 'int', attach_point: 'int', parent: 'uint32_t' });
  const opts = koffi.struct('bpf_tc_opts', {
    sz: 'size_t',
    prog_fd: 'int',
    flags: 'uint32_t',
    prog_id: 'uint32_t',
    handle: 'uint32_t',
    priority: 'uint32_t',
  });
  const testRun = koffi.struct('bpf_test_run_opts', {
    sz: 'size_t',
    data_in: 'uint64_t',
    data_out: 'uint64_t',
    data_size_in: 'uint32_t',
    data_size_out: 'uint32_t',
    ctx_in: 'uint64_t',
    ctx_out: 'uint64_t',
    ctx_size_in: 'uint32_t',
    ctx_size_out: 'uint32_t',
    retval: 'uint32_t',
    repeat: 'int',
    duration: 'uint32_t',
    flags: 'uint32_t',
    cpu: 'uint32_t',
    batch_size: 'uint32_t',
  });
  if (koffi.sizeof(hook) !== 24 || koffi.sizeof(opts) !== 32 || koffi.sizeof(testRun) !== 80) {
    throw new Error('libbpf struct layout mismatch (bpf_tc_hook/bpf_tc_opts/bpf_test_run_opts)');
  }
  const b: Bindings = {
    open_file: lib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
    load: lib.func('int bpf_object__load(bpf_object *obj)'),
    close: lib.func('void bpf_object__close(bpf_object *obj)'),
    find_program: lib.func('bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)'),
    program_fd: lib.func('int bpf_program__fd(bpf_program *prog)'),
    find_map: lib.func('bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)'),
    next_map: lib.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *prev)'),
    map_name: lib.func('const char *bpf_map__name(bpf_map *map)'),
    map_is_internal: lib.func('bool bpf_map__is_internal(bpf_map *map)'),
    map_fd: lib.func('int bpf_map__fd(bpf_map *map)'),
    map_type: lib.func('int bpf_map__type(bpf_map *map)'),
    map_key_size: lib.func('uint32_t bpf_map__key_size(bpf_map *map)'),
    map_value_size: lib.func('uint32_t bpf_map__value_size(bpf_map *map)'),
    map_max_entries: lib.func('uint32_t bpf_map__max_entries(bpf_map *map)'),
    map_flags: lib.func('uint32_t bpf_map__map_flags(bpf_map *map)'),
    map_set_pin_path: lib.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),
    map_set_max_entries: lib.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)'),
    obj_pin: lib.func('int bpf_obj_pin(int fd, const char *path)'),
    obj_get: lib.func('int bpf_obj_get(const char *path)'),
    obj_get_info_by_fd: lib.func('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *len)'),
    tc_hook_create: lib.func('int bpf_tc_hook_create(bpf_tc_hook *hook)'),
    tc_attach: lib.func('int bpf_tc_attach(const bpf_tc_hook *hook, _Inout_ bpf_tc_opts *opts)'),
    tc_detach: lib.func('int bpf_tc_detach(const bpf_tc_hook *hook, const bpf_tc_opts *opts)'),
    tc_query: lib.func('int bpf_tc_query(const bpf_tc_hook *hook, _Inout_ bpf_tc_opts *opts)'),
    map_update_elem: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
    map_lookup_elem: lib.func('int bpf_map_lookup_elem(int fd, const void *key, void *value)'),
    map_delete_elem: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
    map_get_next_key: lib.func('int bpf_map_get_next_key(int fd, const void *key, void *next_key)'),
    // opts may be NULL (libbpf 1.1 validates it with OPTS_VALID, which accepts NULL).
    map_update_batch: lib.func(
      'int bpf_map_update_batch(int fd, const void *keys, const void *values, _Inout_ uint32_t *count, void *opts)',
    ),
    map_delete_batch: lib.func('int bpf_map_delete_batch(int fd, const void *keys, _Inout_ uint32_t *count, void *opts)'),
    map_lookup_batch: lib.func(
      'int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, _Inout_ uint32_t *count, void *opts)',
    ),
    prog_test_run_opts: lib.func('int bpf_prog_test_run_opts(int prog_fd, _Inout_ bpf_test_run_opts *opts)'),
    strerror: lib.func('int libbpf_strerror(int err, void *buf, size_t size)'),
  };
  // libbpf prints through a printf-style callback with a va_list; format it with libc's vsnprintf
  // (va_list travels as a pointer on x86_64 and arm64) so verifier logs can be attached to errors.
  const printFn = koffi.proto('int membrane_libbpf_print_fn(int level, void *fmt, void *ap)');
  const vsnprintf = libc.func('int vsnprintf(void *buf, size_t size, void *fmt, void *ap)');
  const setPrint = lib.func('void *libbpf_set_print(membrane_libbpf_print_fn *fn)');
  const printer = koffi.register((level: number, fmt: Pointer, ap: Pointer) => {
    if (level > 1 && !logSink) return 0; // LIBBPF_DEBUG is verbose: only format it when someone listens
    const buf = Buffer.alloc(8192);
    const n = vsnprintf(buf, buf.length, fmt, ap);
    const text = buf
      .subarray(0, Math.max(0, Math.min(n, buf.length - 1)))
      .toString()
      .replace(/\n$/, '');
    if (level <= 1) {
      for (const line of text.split('\n')) recentLog.push(line);
      if (recentLog.length > 400) recentLog.splice(0, recentLog.length - 400);
    }
    logSink?.(level, text);
    return 0;
  }, koffi.pointer(printFn));
  setPrint(printer);
  bound = b;
  return b;
}

/** Receive libbpf's log lines (level 0 warn, 1 info, 2 debug). Without a sink, warn+info are only kept
 *  for error messages and nothing is printed. */
export function setLibbpfLogSink(sink: ((level: number, line: string) => void) | null): void {
  bind();
  logSink = sink;
}

/** Warn/info lines logged since the last call (bounded). */
export function takeLibbpfLog(): string[] {
  return recentLog.splice(0, recentLog.length);
}

export function strerror(errno: number): string {
  const buf = Buffer.alloc(256);
  bind().strerror(-Math.abs(errno), buf, buf.length);
  const end = buf.indexOf(0);
  return buf.subarray(0, end < 0 ? buf.length : end).toString();
}

/** Throw BpfError for a negative libbpf return; otherwise pass the value through. */
function check(ret: number, op: string, target: string, withLog = false): number {
  if (ret < 0) throw new BpfError(op, target, -ret, withLog ? takeLibbpfLog() : []);
  return ret;
}

export function openObject(path: string): Pointer {
  takeLibbpfLog();
  const obj = bind().open_file(path, null);
  if (!obj) throw new BpfError('bpf_object__open_file', path, koffi.errno() || 22, takeLibbpfLog());
  return obj;
}

export function loadObject(obj: Pointer, path: string): void {
  takeLibbpfLog();
  check(bind().load(obj), 'bpf_object__load', path, true);
}

export function closeObject(obj: Pointer): void {
  bind().close(obj);
}

export function programFd(obj: Pointer, name: string): number {
  const prog = bind().find_program(obj, name);
  if (!prog) throw new BpfError('bpf_object__find_program_by_name', name, 2);
  return check(bind().program_fd(prog), 'bpf_program__fd', name);
}

export interface MapDescription {
  ptr: Pointer;
  name: string;
  internal: boolean;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

/** Maps declared by an opened (not necessarily loaded) object. */
export function objectMaps(obj: Pointer): MapDescription[] {
  const b = bind();
  const maps: MapDescription[] = [];
  for (let m: Pointer | null = b.next_map(obj, null); m; m = b.next_map(obj, m)) {
    maps.push({
      ptr: m,
      name: b.map_name(m),
      internal: b.map_is_internal(m),
      type: b.map_type(m),
      keySize: b.map_key_size(m),
      valueSize: b.map_value_size(m),
      maxEntries: b.map_max_entries(m),
      flags: b.map_flags(m),
    });
  }
  return maps;
}

export function mapFd(map: MapDescription): number {
  return check(bind().map_fd(map.ptr), 'bpf_map__fd', map.name);
}

export function setMapPinPath(map: MapDescription, path: string): void {
  check(bind().map_set_pin_path(map.ptr, path), 'bpf_map__set_pin_path', `${map.name} -> ${path}`);
}

/** Before load: size a map differently from the object's definition. */
export function setMapMaxEntries(map: MapDescription, maxEntries: number): void {
  check(bind().map_set_max_entries(map.ptr, maxEntries), 'bpf_map__set_max_entries', `${map.name} = ${maxEntries}`);
  map.maxEntries = maxEntries;
}

export function objPin(fd: number, path: string): void {
  check(bind().obj_pin(fd, path), 'bpf_obj_pin', path);
}

/** Returns an fd the caller must close (fs.closeSync). */
export function objGet(path: string): number {
  return check(bind().obj_get(path), 'bpf_obj_get', path);
}

/** The first `words` u32 fields of bpf_{prog,map}_info, in host byte order. */
export function objInfo(fd: number, words: number, what: string): Uint32Array {
  const info = new Uint32Array(words);
  const len = [info.byteLength];
  check(bind().obj_get_info_by_fd(fd, info, len), 'bpf_obj_get_info_by_fd', what);
  return info;
}

/** bpf_prog_info: u32 type, u32 id, ... */
export function progId(fd: number, what: string): number {
  return objInfo(fd, 2, what)[1];
}

function tcHook(ifindex: number, attachPoint: number) {
  return { sz: 24, ifindex, attach_point: attachPoint, parent: 0 };
}

function pointName(attachPoint: number): string {
  return attachPoint === BPF_TC_INGRESS ? 'ingress' : attachPoint === BPF_TC_EGRESS ? 'egress' : 'clsact';
}

/** Create the clsact qdisc; an existing one is fine. */
export function tcHookCreate(ifindex: number): void {
  const ret = bind().tc_hook_create(tcHook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS));
  if (ret !== -osConstants.errno.EEXIST) check(ret, 'bpf_tc_hook_create', `ifindex ${ifindex} (clsact)`);
}

export function tcAttach(ifindex: number, attachPoint: number, progFd: number, handle: number, priority: number): void {
  const opts = { sz: 32, prog_fd: progFd, flags: BPF_TC_F_REPLACE, prog_id: 0, handle, priority };
  check(bind().tc_attach(tcHook(ifindex, attachPoint), opts), 'bpf_tc_attach', `ifindex ${ifindex} ${pointName(attachPoint)}`);
}

/** Returns false when there was nothing to detach (no filter, no qdisc or no such link). */
export function tcDetach(ifindex: number, attachPoint: number, handle: number, priority: number): boolean {
  const opts = { sz: 32, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = bind().tc_detach(tcHook(ifindex, attachPoint), opts);
  if (isGone(ret)) return false;
  check(ret, 'bpf_tc_detach', `ifindex ${ifindex} ${pointName(attachPoint)}`);
  return true;
}

/** Program id attached at (handle, priority), or undefined when none / no qdisc / no link. */
export function tcQuery(ifindex: number, attachPoint: number, handle: number, priority: number): number | undefined {
  const opts = { sz: 32, prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const ret = bind().tc_query(tcHook(ifindex, attachPoint), opts);
  if (isGone(ret)) return undefined;
  check(ret, 'bpf_tc_query', `ifindex ${ifindex} ${pointName(attachPoint)}`);
  return opts.prog_id;
}

// Netlink answers a missing filter with ENOENT, a missing clsact with EINVAL, a missing link with ENODEV.
function isGone(ret: number): boolean {
  const e = osConstants.errno;
  return ret === -e.ENOENT || ret === -e.EINVAL || ret === -e.ENODEV;
}

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

/** Every key and value of a map as two packed buffers (`count` records each): no object per entry,
 *  for walks over large tables. */
export function mapDumpPacked(
  fd: number,
  mapName: string,
  keySize: number,
  valueSize: number,
  chunk = 8192,
  maxBatches = Infinity,
): { keys: Buffer; values: Buffer; count: number } {
  const keyParts: Buffer[] = [];
  const valueParts: Buffer[] = [];
  let count = 0;
  const token = Buffer.alloc(Math.max(keySize, 8));
  let first = true;
  for (;;) {
    const kb = Buffer.alloc(keySize * chunk);
    const vb = Buffer.alloc(valueSize * chunk);
    const n = [chunk];
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

export interface TestRunResult {
  retval: number;
  data: Buffer;
  durationNs: number;
}

/** BPF_PROG_TEST_RUN with a packet; returns the program's verdict and the (possibly rewritten) packet.
 *  `ifindex` sets skb->ifindex through the __sk_buff context (the device must exist; default lo). */
export function progTestRun(progFd: number, packet: Buffer, opts: { repeat?: number; ifindex?: number } = {}): TestRunResult {
  const out = Buffer.alloc(packet.length + 256);
  // struct __sk_buff up to and including `ifindex` (offset 40); every other field must stay zero.
  const ctx = Buffer.alloc(44);
  ctx.writeUInt32LE(opts.ifindex ?? 0, 40);
  const run = {
    sz: 80,
    data_in: koffi.address(packet),
    data_out: koffi.address(out),
    data_size_in: packet.length,
    data_size_out: out.length,
    ctx_in: opts.ifindex ? koffi.address(ctx) : 0n,
    ctx_out: 0n,
    ctx_size_in: opts.ifindex ? ctx.length : 0,
    ctx_size_out: 0,
    retval: 0,
    repeat: opts.repeat ?? 1,
    duration: 0,
    flags: 0,
    cpu: 0,
    batch_size: 0,
  };
  check(bind().prog_test_run_opts(progFd, run), 'bpf_prog_test_run_opts', `prog fd ${progFd}`);
  return { retval: run.retval, data: Buffer.from(out.subarray(0, run.data_size_out)), durationNs: run.duration };
}
