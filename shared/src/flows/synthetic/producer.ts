// Synthetic event producer (tests and scripts/bench/flows.ts only): loads producer.bpf.c with its
// `events` / `events_lost` maps pointed at a pin directory (the agent's, so the agent's reader sees
// the events, or a scratch one) and emits trace events in bulk through BPF_PROG_TEST_RUN.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
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
  execFileSync('clang', ['-O2', '-g', '-target', 'bpf', '-Wall', '-I', `/usr/include/${os.arch() === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`, '-c', SOURCE, '-o', tmp]);
  fs.renameSync(tmp, out);
  return out;
}

export class SyntheticProducer {
  private constructor(private obj: bpf.Pointer | null, private readonly progFd: number) {}

  /** `pinDir` holds (or receives) the `events` and `events_lost` pins. Existing pins are reused,
   *  missing ones are created and pinned there; `seq` stays private to this producer. */
  static open(pinDir: string): SyntheticProducer {
    const objectPath = compileProducer();
    fs.mkdirSync(pinDir, { recursive: true, mode: 0o700 });
    const obj = bpf.openObject(objectPath);
    try {
      for (const map of bpf.objectMaps(obj)) {
        if (map.name === 'events' || map.name === 'events_lost') bpf.setMapPinPath(map, path.join(pinDir, map.name));
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
    if (event.length !== TRACE_EVENT_SIZE) throw new RangeError(`a trace_event has ${TRACE_EVENT_SIZE} bytes, got ${event.length}`);
    bpf.progTestRun(this.progFd, event, { repeat: count });
  }

  close(): void {
    if (this.obj) bpf.closeObject(this.obj);
    this.obj = null;
  }
}
