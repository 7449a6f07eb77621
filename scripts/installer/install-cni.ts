// Installs membrane-cni where the runtimes look (scripts/install does it too; scripts/install-cni
// alone is this). The reference plugins the runtime path needs (portmap, chained for hostPort; and
// loopback, which containerd's CRI runs for every pod) are linked into the bin dir when the
// distribution keeps them elsewhere.
import fs from 'node:fs';
import path from 'node:path';
import { atomicWrite, cniDirs, conflist, conflistsBefore, findReferencePlugin } from './cni.ts';
import { sha256, type Entry } from './manifest.ts';
import { under } from './layout.ts';

export interface CniInstallOptions {
  root: string;
  binDir?: string;
  confDir?: string;
  containerdConfig: string;
  socket: string;
  name: string;
  /** membrane-cni's log file (default /var/log/membrane/cni.log under the root). */
  logFile?: string;
  source: string;
  noConf?: boolean;
  force?: boolean;
  /** Install the executable as membrane-cni.sea behind a /bin/sh launcher that drops the runtime's
   *  NODE_EXTRA_CA_CERTS and NODE_OPTIONS (Node reads both at start, +40-65 ms per call). */
  launcher?: boolean;
  /** A conflist an earlier installation wrote and nobody changed since: rewritten (the socket may have moved). */
  unchangedSinceInstall?: (file: string) => boolean;
}

export function installCni(o: CniInstallOptions, say: (s: string) => void): Entry[] {
  const dirs = cniDirs(o);
  say(`CNI bin dir ${dirs.binDir} (${dirs.binFrom}), conf dir ${dirs.confDir} (${dirs.confFrom})`);
  const entries: Entry[] = [];
  const exe = path.join(dirs.binDir, o.launcher ? 'membrane-cni.sea' : 'membrane-cni');
  atomicWrite(exe, { from: o.source }, 0o755);
  entries.push({ path: exe, kind: 'file' });
  say(exe);
  if (o.launcher) {
    const l = path.join(dirs.binDir, 'membrane-cni');
    atomicWrite(
      l,
      `#!/bin/sh\n# membrane-cni launcher: Node must not start with the runtime's NODE_EXTRA_CA_CERTS / NODE_OPTIONS\nunset NODE_EXTRA_CA_CERTS NODE_OPTIONS\nexec '${exe}' "$@"\n`,
      0o755,
    );
    entries.push({ path: l, kind: 'file' });
    say(`${l} (launcher)`);
  }

  const found: Record<string, string | undefined> = {};
  for (const plugin of ['loopback', 'portmap']) {
    const p = (found[plugin] = findReferencePlugin(o.root, dirs.binDir, plugin));
    const inBin = path.join(dirs.binDir, plugin);
    if (!p)
      say(
        `${plugin} not found in ${dirs.binDir} or ${['/usr/lib/cni', '/opt/cni/bin', '/usr/libexec/cni'].map((d) => under(o.root, d)).join(', ')} (apt-get install containernetworking-plugins)${plugin === 'portmap' ? ': hostPort mappings will not work' : ''}`,
      );
    else if (path.dirname(p) !== dirs.binDir && !fs.existsSync(inBin)) {
      fs.symlinkSync(p, inBin);
      entries.push({ path: inBin, kind: 'file' });
      say(`${inBin} -> ${p} (the runtime looks only in its bin dir)`);
    }
  }

  if (o.noConf) return entries;
  const file = path.join(dirs.confDir, `10-${o.name}.conflist`);
  if (fs.existsSync(file) && !o.force && !o.unchangedSinceInstall?.(file)) {
    say(`${file} exists, left as it is (--force overwrites)`);
    return entries;
  }
  atomicWrite(
    file,
    conflist({
      name: o.name,
      socket: o.socket,
      logFile: o.logFile ?? under(o.root, '/var/log/membrane/cni.log'),
      portmap: !!found.portmap,
    }),
  );
  entries.push({ path: file, kind: 'config', sha256: sha256(file) });
  say(`${file}${found.portmap ? ' (membrane-cni, then portmap)' : ''}`);
  const before = conflistsBefore(dirs.confDir, file);
  if (before.length)
    say(
      `note: ${before.join(', ')} sort${before.length === 1 ? 's' : ''} before it in ${dirs.confDir}; containerd uses only the first network config (max_conf_num 1)`,
    );
  return entries;
}
