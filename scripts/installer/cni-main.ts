// scripts/install-cni: membrane-cni for containerd/kubelet, podman, ctr, cri-o (see --help).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { layout } from './layout.ts';
import { installCni } from './install-cni.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const program = new Command('scripts/install-cni')
  .description(
    "Install membrane-cni into the CNI bin dir and write a conflist. The dirs: given, else containerd's CRI bin_dir/conf_dir from its config.toml, else /opt/cni/bin and /etc/cni/net.d.",
  )
  .argument('[bin-dir]', 'same as --bin-dir')
  .argument('[conf-dir]', 'same as --conf-dir')
  .option('--bin-dir <dir>', 'CNI plugin dir')
  .option('--conf-dir <dir>', 'CNI config dir')
  .option('--containerd-config <file>', "containerd's config, read for its CNI dirs", '/etc/containerd/config.toml')
  .option('--name <net>', 'network name (the conflist is <conf-dir>/10-<name>.conflist)', 'membrane')
  .option(
    '--socket <path>',
    "the agent's API socket (env MEMBRANE_SOCKET, as the CLI)",
    process.env.MEMBRANE_SOCKET ?? '/run/membrane/agent.sock',
  )
  .option('--log-file <path>', "membrane-cni's log file", '/var/log/membrane/cni.log')
  .option('--no-conf', 'install the executable only')
  .option('--force', 'overwrite an existing conflist')
  .option(
    '--launcher',
    "install membrane-cni.sea behind a /bin/sh launcher that drops the runtime's NODE_EXTRA_CA_CERTS and NODE_OPTIONS",
  )
  .option('--root <dir>', 'install under DIR (tests)')
  .showHelpAfterError();
program.parse(process.argv);
const o = program.opts();
const [binArg, confArg] = program.args;
const l = layout({ root: o.root });
try {
  installCni(
    {
      root: l.root,
      binDir: o.binDir ?? binArg,
      confDir: o.confDir ?? confArg,
      containerdConfig: o.root && o.containerdConfig === '/etc/containerd/config.toml' ? l.containerdConfig : o.containerdConfig,
      socket: o.socket,
      name: o.name,
      logFile: o.root && o.logFile === '/var/log/membrane/cni.log' ? undefined : o.logFile,
      source: path.join(REPO, 'dist/bin/membrane-cni'),
      noConf: o.conf === false,
      force: !!o.force,
      launcher: !!o.launcher,
    },
    (s) => process.stdout.write(`install-cni: ${s}\n`),
  );
} catch (e) {
  process.stderr.write(`install-cni: ${(e as Error).message}\n`);
  process.exit(1);
}
