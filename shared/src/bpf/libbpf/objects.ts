// bpf objects (ELF files): open, load, their programs and maps, and pinned objects by path.
import koffi from 'koffi';
import { BpfError, bind, check, type Pointer, takeLibbpfLog } from './native.ts';

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

/** false: bpf_object__load leaves the program alone (its pinned copy from an earlier load is used). */
export function setProgramAutoload(obj: Pointer, name: string, autoload: boolean): void {
  const prog = bind().find_program(obj, name);
  if (!prog) throw new BpfError('bpf_object__find_program_by_name', name, 2);
  check(bind().program_set_autoload(prog, autoload), 'bpf_program__set_autoload', name);
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
