// The bpffs side of loading: where pins may live, whether an existing pin can be reused, and how to
// replace one without the path ever disappearing.
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from './libbpf.ts';
import * as codec from '../maps/codec.ts';

const BPF_FS_MAGIC = 0xcafe4a11;

/** Throws unless `dir` (or its nearest existing ancestor) is on a bpffs mount. */
export function assertOnBpffs(dir: string): void {
  let probe = path.resolve(dir);
  while (!fs.existsSync(probe)) probe = path.dirname(probe);
  const type = fs.statfsSync(probe).type >>> 0;
  if (type !== BPF_FS_MAGIC) {
    throw new Error(
      `pin directory ${dir} is not on a bpffs mount (${probe} has fs type 0x${type.toString(16)}); ` +
        'mount it with `mount -t bpf bpf /sys/fs/bpf`',
    );
  }
}

export function possibleCpus(): number {
  return codec.parseCpuList(fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8'));
}

/** Compare an existing pin with the object's definition; returns what differs (empty = reusable). */
export function pinnedMapMismatch(map: bpf.MapDescription, pinPath: string): string[] {
  let fd: number;
  try {
    fd = bpf.objGet(pinPath);
  } catch (err) {
    if (err instanceof bpf.BpfError && err.code === 'ENOENT') return [];
    throw err;
  }
  try {
    // struct bpf_map_info starts with u32 type, id, key_size, value_size, max_entries, map_flags.
    const info = bpf.objInfo(fd, 6, `map ${pinPath}`);
    const fields: [string, number, number][] = [
      ['type', info[0], map.type],
      ['key_size', info[2], map.keySize],
      ['value_size', info[3], map.valueSize],
      ['max_entries', info[4], map.maxEntries],
      ['map_flags', info[5], map.flags],
    ];
    return fields.filter(([, pinned, wanted]) => pinned !== wanted).map(([n, p, w]) => `${n} pinned=${p} object=${w}`);
  } finally {
    fs.closeSync(fd);
  }
}

/** Pin under a temporary name and rename over the old pin, so the path never disappears. */
export function replacePin(fd: number, pinPath: string): void {
  const tmp = `${pinPath}_new_${process.pid}`; // bpffs refuses names with dots
  fs.rmSync(tmp, { force: true });
  bpf.objPin(fd, tmp);
  fs.renameSync(tmp, pinPath);
}

/** Unlink the pins named `known` and the directory (uninstall, tests). Attached programs stay until
 *  detached. Refuses to delete pins it does not know, so a mistyped pinDir cannot wipe someone else's state. */
export function removeKnownPins(pinDir: string, known: string[]): void {
  if (!fs.existsSync(pinDir)) return;
  const ours = new Set(known);
  const isOurs = (name: string) => ours.has(name.replace(/_new_\d+$/, '')); // incl. interrupted replacePin
  const entries = fs.readdirSync(pinDir);
  for (const name of entries.filter(isOurs)) fs.rmSync(path.join(pinDir, name), { force: true });
  const foreign = entries.filter((name) => !isOurs(name));
  if (foreign.length) throw new Error(`${pinDir} still holds pins that are not Membrane's: ${foreign.join(', ')}`);
  fs.rmdirSync(pinDir);
}
