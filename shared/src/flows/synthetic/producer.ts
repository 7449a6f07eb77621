// Synthetic event producer (tests and scripts/bench/flows.ts only): loads producer.bpf.c with its
// `events` / `events_lost` maps pointed at a pin directory (the agent's, so the agent's reader sees
// the events, or a scratch one) and emits trace events in bulk through BPF_PROG_TEST_RUN.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import * as bpf from '../../bpf/libbpf.ts';
import { TRACE_EVENT_SIZE } from '../event.ts';

const SOURCE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'producer.bpf.c');

/** Compile once per source version into the temp dir (tests and benchmarks run from the repo). */
export function compileProducer(): string {
  const src = fs.readFileSync(SOURCE);
  const hash = crypto.createHash('sha256').update(src).digest('hex').slice(0, 12);
  const out = path.join(os.tmpdir(), `membrane-synthetic-producer-${hash}.o`);
  if (fs.existsSync(out)) return out;
  const tmp = `${out}.${process.pid}`;
  execFileSync('clang', [
    '-O2',
    '-g',
    '-target',
    'bpf',
    '-Wall',
    '-I',
    `/usr/include/${os.arch() === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`,
    '-c',
    SOURCE,
    '-o',
    tmp,
  ]);
  fs.renameSync(tmp, out);
  return out;
}

let setMaxEntries: ((map: bpf.Pointer, max: number) => number) | undefined;

/** Size the object's map like an existing pin (the datapath may use another ring size), so libbpf
 *  reuses the pin instead of refusing it. */
function matchPinnedSize(map: bpf.MapDescription, pinPath: string): void {
  let fd: number;
  try {
    fd = bpf.objGet(pinPath);
  } catch {
    return;
  } // not pinned yet: ours gets created
  try {
    const maxEntries = bpf.objInfo(fd, 5, pinPath)[4]; // bpf_map_info: type, id, key_size, value_size, max_entries
    if (maxEntries === map.maxEntries) return;
    setMaxEntries ??= koffi.load('libbpf.so.1').func('int bpf_map__set_max_entries(void *map, uint32_t max)') as (
      m: bpf.Pointer,
      n: number,
    ) => number;
    const ret = setMaxEntries(map.ptr, maxEntries);
    if (ret < 0) throw new bpf.BpfError('bpf_map__set_max_entries', `${map.name} -> ${maxEntries}`, -ret);
  } finally {
    fs.closeSync(fd);
  }
}

export class SyntheticProducer {
  private constructor(
    private obj: bpf.Pointer | null,
    private readonly progFd: number,
  ) {}

  /** `pinDir` holds (or receives) the `events` and `events_lost` pins. Existing pins are reused,
   *  missing ones are created and pinned there; `seq` stays private to this producer. */
  static open(pinDir: string): SyntheticProducer {
    const objectPath = compileProducer();
    fs.mkdirSync(pinDir, { recursive: true, mode: 0o700 });
    const obj = bpf.openObject(objectPath);
    try {
      for (const map of bpf.objectMaps(obj)) {
        if (map.name !== 'events' && map.name !== 'events_lost') continue;
        const pinPath = path.join(pinDir, map.name);
        matchPinnedSize(map, pinPath);
        bpf.setMapPinPath(map, pinPath);
      }
      bpf.loadObject(obj, objectPath);
      return new SyntheticProducer(obj, bpf.programFd(obj, 'produce'));
    } catch (e) {
      bpf.closeObject(obj);
      throw e;
    }
  }

  /** Runs the program `count` times on one encoded trace_event: `count` events (or lost counts). */
  emit(event: Buffer, count = 1): void {
    if (!this.obj) throw new Error('producer is closed');
    if (event.length !== TRACE_EVENT_SIZE)
      throw new RangeError(`a trace_event has ${TRACE_EVENT_SIZE} bytes, got ${event.length}`);
    bpf.progTestRun(this.progFd, event, { repeat: count });
  }

  close(): void {
    if (this.obj) bpf.closeObject(this.obj);
    this.obj = null;
  }
}
