import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The compiled datapath: explicit path, else dist/bpf/endpoint.o next to the bundle or the repo root. */
export function resolveBpfObject(explicit?: string): string {
  if (explicit) return explicit;
  const here = path.dirname(process.argv[1] ? path.resolve(process.argv[1]) : fileURLToPath(import.meta.url));
  const candidates = [
    path.resolve(here, '../bpf/endpoint.o'), // dist/bin/membrane-agent -> dist/bpf
    path.resolve(here, '../../../dist/bpf/endpoint.o'), // shared/src/agent/main.ts run from source
    path.resolve(process.cwd(), 'dist/bpf/endpoint.o'),
  ];
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found)
    throw new Error(`compiled datapath not found (looked in ${candidates.join(', ')}): run "npm run build" or pass --bpf-object`);
  return found;
}
