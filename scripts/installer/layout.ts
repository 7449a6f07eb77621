// Where an installation puts its files. `root` relocates all of them (and the paths written into
// them, so an installation under a scratch root runs in place: the installer's own tests use that).
// Pure.
import path from 'node:path';

export interface Layout {
  /** '' for the real root. */
  root: string;
  /** Wrappers on PATH: membrane-agent, membrane, membrane-operator, membrane-cni. */
  binDir: string;
  /** The bundles, the datapath object and the runtime node_modules. */
  libDir: string;
  unitDir: string;
  unitFile: string;
  configDir: string;
  configFile: string;
  /** Optional MEMBRANE_* variables for the unit (EnvironmentFile=-). Never written by the installer. */
  envFile: string;
  /** What this installation wrote: uninstall removes exactly that. */
  manifest: string;
  /** containerd's config, read for its CNI dirs. */
  containerdConfig: string;
}

export interface LayoutOptions {
  root?: string;
  prefix?: string;
}

/** `p` (an absolute path of the installed system) under the root. */
export function under(root: string, p: string): string {
  return root ? path.join(root, p) : p;
}

export function layout(o: LayoutOptions = {}): Layout {
  const root = o.root ? path.resolve(o.root) : '';
  const prefix = o.prefix ?? '/usr/local';
  const at = (p: string) => under(root, p);
  const libDir = at(path.join(prefix, 'lib/membrane'));
  const unitDir = at('/etc/systemd/system');
  const configDir = at('/etc/membrane');
  return {
    root,
    binDir: at(path.join(prefix, 'bin')),
    libDir,
    unitDir,
    unitFile: path.join(unitDir, 'membrane-agent.service'),
    configDir,
    configFile: path.join(configDir, 'agent.yaml'),
    envFile: at('/etc/default/membrane-agent'),
    manifest: path.join(libDir, 'install-manifest.json'),
    containerdConfig: at('/etc/containerd/config.toml'),
  };
}
