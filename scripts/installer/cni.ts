// membrane-cni for the runtimes: which bin and conf dirs they read (explicit dirs, else containerd's
// CRI config, else the CNI defaults), where the distribution keeps the reference plugins, and the
// conflist. Installing the binary replaces a running one atomically.
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { under } from './layout.ts';

export const CNI_DEFAULT_BIN_DIR = '/opt/cni/bin';
export const CNI_DEFAULT_CONF_DIR = '/etc/cni/net.d';
/** Where distributions put the reference plugins: Debian/Ubuntu, upstream tarballs, Fedora/RHEL. */
export const REFERENCE_PLUGIN_DIRS = ['/usr/lib/cni', '/opt/cni/bin', '/usr/libexec/cni'];

export interface CniDirs {
  binDir: string;
  confDir: string;
  /** Where each came from, for the installer's report. */
  binFrom: string;
  confFrom: string;
}

/** containerd's CRI CNI dirs from its config.toml: 1.x ("io.containerd.grpc.v1.cri") and 2.x
 *  ("io.containerd.cri.v1.runtime", bin_dirs). Undefined where the file does not say. */
export function containerdCniDirs(tomlText: string): { binDir?: string; confDir?: string } {
  const doc = parseToml(tomlText) as { plugins?: Record<string, { cni?: Record<string, unknown> }> };
  for (const plugin of ['io.containerd.cri.v1.runtime', 'io.containerd.grpc.v1.cri']) {
    const cni = doc.plugins?.[plugin]?.cni;
    if (!cni) continue;
    const bins = Array.isArray(cni.bin_dirs) ? cni.bin_dirs : [];
    const binDir = typeof cni.bin_dir === 'string' ? cni.bin_dir : typeof bins[0] === 'string' ? bins[0] : undefined;
    const confDir = typeof cni.conf_dir === 'string' ? cni.conf_dir : undefined;
    return { binDir, confDir };
  }
  return {};
}

export function cniDirs(o: { root: string; binDir?: string; confDir?: string; containerdConfig: string }): CniDirs {
  let fromContainerd: { binDir?: string; confDir?: string } = {};
  if (fs.existsSync(o.containerdConfig)) {
    try {
      fromContainerd = containerdCniDirs(fs.readFileSync(o.containerdConfig, 'utf8'));
    } catch (e) {
      throw new Error(`cannot read ${o.containerdConfig}: ${(e as Error).message} (pass --cni-bin-dir and --cni-conf-dir)`);
    }
  }
  const pick = (explicit: string | undefined, containerd: string | undefined, fallback: string): [string, string] =>
    explicit
      ? [explicit, 'given']
      : containerd
        ? [under(o.root, containerd), `containerd's ${o.containerdConfig}`]
        : [under(o.root, fallback), 'the CNI default'];
  const [binDir, binFrom] = pick(o.binDir, fromContainerd.binDir, CNI_DEFAULT_BIN_DIR);
  const [confDir, confFrom] = pick(o.confDir, fromContainerd.confDir, CNI_DEFAULT_CONF_DIR);
  return { binDir, confDir, binFrom, confFrom };
}

/** The reference plugin `name` in the bin dir, else where the distribution keeps it. */
export function findReferencePlugin(root: string, binDir: string, name: string): string | undefined {
  for (const dir of [binDir, ...REFERENCE_PLUGIN_DIRS.map((d) => under(root, d))]) {
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

export interface ConflistOptions {
  name: string;
  socket: string;
  logFile: string;
  portmap: boolean;
}

export function conflist(o: ConflistOptions): string {
  const plugins: object[] = [
    {
      type: 'membrane-cni',
      agentSocket: o.socket,
      logFile: o.logFile,
      capabilities: { portMappings: true, bandwidth: true, ips: true, mac: true, 'io.kubernetes.cri.pod-annotations': true },
    },
  ];
  if (o.portmap) plugins.push({ type: 'portmap', capabilities: { portMappings: true }, snat: true });
  return `${JSON.stringify({ cniVersion: '1.0.0', name: o.name, plugins }, null, 2)}\n`;
}

/** Writes `content` (or copies `from`) to `file` through a temp file and a rename. */
export function atomicWrite(file: string, content: string | { from: string }, mode = 0o644): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}`);
  if (typeof content === 'string') fs.writeFileSync(tmp, content, { mode });
  else fs.copyFileSync(content.from, tmp);
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
}

/** Conflists in `confDir` that sort before `file`: containerd loads only the first (max_conf_num 1). */
export function conflistsBefore(confDir: string, file: string): string[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(confDir);
  } catch {
    return [];
  }
  return names.filter((n) => /\.(conflist|conf|json)$/.test(n) && n < path.basename(file)).sort();
}
