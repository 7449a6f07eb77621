// What is left on the node: the leak checks of the integration tests.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

/** Number of entries in a pinned map (bpftool reads it without our code in the way). */
export function mapEntries(pinDir: string, map: string): number {
  const file = `${pinDir}/${map}`;
  if (!fs.existsSync(file)) return 0;
  const out = execFileSync('bpftool', ['-j', 'map', 'dump', 'pinned', file], { encoding: 'utf8' });
  return (JSON.parse(out) as unknown[]).length;
}

export function tcFilters(dev: string, dir: 'ingress' | 'egress'): string {
  try {
    return execFileSync('tc', ['filter', 'show', 'dev', dev, dir], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

export function hostRouteTo(ip: string): string {
  const fam = ip.includes(':') ? '-6' : '-4';
  return execFileSync('ip', [fam, 'route', 'show', 'exact', ip.includes(':') ? `${ip}/128` : `${ip}/32`], {
    encoding: 'utf8',
  }).trim();
}
