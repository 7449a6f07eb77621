// koffi bindings to the system libbpf.so.1 (1.1.x): the one place that loads the library, declares
// the C signatures and struct layouts (mirroring /usr/include/bpf/libbpf.h and bpf.h; sizes are
// asserted at bind time), captures libbpf's log, and turns negative errno returns into BpfError
// naming the operation, the object and the kernel's reason.
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

// biome-ignore lint/suspicious/noExplicitAny: koffi functions take and return whatever their C signature says
type Fn = (...args: any[]) => any;
interface Bindings {
  [name: string]: Fn;
}

let bound: Bindings | null = null;
let logSink: ((level: number, line: string) => void) | null = null;
const recentLog: string[] = [];

export function bind(): Bindings {
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
  // libbpf 1.1's bpf_link_create copies opts->flags into attr.link_create.flags for every attach
  // type (tcx included, which 1.1 does not know by name) and wants the later fields zeroed. The union's
  // largest member (kprobe_multi) stands for it.
  const linkOpts = koffi.struct('bpf_link_create_opts', {
    sz: 'size_t',
    flags: 'uint32_t',
    iter_info: 'void *',
    iter_info_len: 'uint32_t',
    target_btf_id: 'uint32_t',
    kprobe_multi: koffi.struct({ flags: 'uint32_t', cnt: 'uint32_t', syms: 'void *', addrs: 'void *', cookies: 'void *' }),
  });
  if (koffi.sizeof(hook) !== 24 || koffi.sizeof(opts) !== 32 || koffi.sizeof(testRun) !== 80 || koffi.sizeof(linkOpts) !== 64) {
    throw new Error('libbpf struct layout mismatch (bpf_tc_hook/bpf_tc_opts/bpf_test_run_opts/bpf_link_create_opts)');
  }
  const b: Bindings = {
    open_file: lib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
    load: lib.func('int bpf_object__load(bpf_object *obj)'),
    close: lib.func('void bpf_object__close(bpf_object *obj)'),
    find_program: lib.func('bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)'),
    program_fd: lib.func('int bpf_program__fd(bpf_program *prog)'),
    program_set_autoload: lib.func('int bpf_program__set_autoload(bpf_program *prog, bool autoload)'),
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
    // opts may be NULL (OPTS_VALID accepts NULL)
    link_create: lib.func('int bpf_link_create(int prog_fd, int target_fd, int attach_type, const bpf_link_create_opts *opts)'),
    link_update: lib.func('int bpf_link_update(int link_fd, int new_prog_fd, void *opts)'),
    link_detach: lib.func('int bpf_link_detach(int link_fd)'),
    prog_query: lib.func(
      'int bpf_prog_query(int target_fd, int type, uint32_t query_flags, _Out_ uint32_t *attach_flags, _Out_ uint32_t *prog_ids, _Inout_ uint32_t *prog_cnt)',
    ),
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
export function check(ret: number, op: string, target: string, withLog = false): number {
  if (ret < 0) throw new BpfError(op, target, -ret, withLog ? takeLibbpfLog() : []);
  return ret;
}
