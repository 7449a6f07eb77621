// What is left on the node: the leak checks of the integration tests.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const TCX_SHOW = path.join(import.meta.dirname, 'tcx-show-child.ts');

/** Number of entries in a pinned map (bpftool reads it without our code in the way). */
export function mapEntries(pinDir: string, map: string): number {
  const file = `${pinDir}/${map}`;
  if (!fs.existsSync(file)) return 0;
  const out = execFileSync('bpftool', ['-j', 'map', 'dump', 'pinned', file], { encoding: 'utf8' });
  return (JSON.parse(out) as unknown[]).length;
}

/** What runs on a device's hook: its classic tc filters, then its tcx programs (`tcx <name> id <id>`
 *  lines; Membrane attaches with tcx, bpf/tcx.ts). In a netns when netnsPath is given. */
export function tcFilters(dev: string, dir: 'ingress' | 'egress', netnsPath?: string): string {
  const run = (cmd: string[]) => {
    const argv = netnsPath ? ['nsenter', `--net=${netnsPath}`, ...cmd] : cmd;
    try {
      return execFileSync(argv[0], argv.slice(1), { encoding: 'utf8' });
    } catch {
      return '';
    }
  };
  return run(['tc', 'filter', 'show', 'dev', dev, dir]) + run([process.execPath, '--import', 'tsx', TCX_SHOW, dev, dir]);
}

export function hostRouteTo(ip: string): string {
  const fam = ip.includes(':') ? '-6' : '-4';
  return execFileSync('ip', [fam, 'route', 'show', 'exact', ip.includes(':') ? `${ip}/128` : `${ip}/32`], {
    encoding: 'utf8',
  }).trim();
}
