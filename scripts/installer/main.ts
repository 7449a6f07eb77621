// scripts/install: Membrane on a node as a service (see --help and the README's "Install").
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { layout, type Layout } from './layout.ts';
import { agentUnit, defaultConfig, wrapper } from './files.ts';
import { copyPackages, dependencyClosure, externalRequires } from './runtime-deps.ts';
import { readManifest, removeEmptyDirs, removeEntries, sha256, writeManifest, type Entry } from './manifest.ts';
import { deleteEndpoints, installedAgentConfig, purgeAgentState } from './purge.ts';
import { installCni, type CniInstallOptions } from './install-cni.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = path.join(REPO, 'dist');
/** Bundles installed under <lib>/bin; all but the proxy and policy workers (the agent starts them) get a wrapper on PATH. */
const BUNDLES = [
  'membrane-agent', // runs membrane-agent.js with a code cache (scripts/compile-cache-launcher.cjs)
  'membrane-agent.js',
  'membrane',
  'membrane-operator',
  'membrane-relay',
  'membrane-proxy',
  'membrane-policy-worker',
  'membrane-dns-worker',
];
const ON_PATH = ['membrane-agent', 'membrane', 'membrane-operator', 'membrane-relay'];
const say = (s: string) => process.stdout.write(`install: ${s}\n`);

interface Options {
  root?: string;
  prefix: string;
  cni: boolean;
  cniBinDir?: string;
  cniConfDir?: string;
  start: boolean;
  uninstall: boolean;
  purge: boolean;
}

/** systemctl only on the real root of a machine whose PID 1 is systemd. */
function systemd(l: Layout): boolean {
  return !l.root && fs.existsSync('/run/systemd/system');
}

function systemctl(args: string[]): void {
  say(`systemctl ${args.join(' ')}`);
  execFileSync('systemctl', args, { stdio: 'inherit' });
}

function checkBuilt(): void {
  const missing = [...BUNDLES.map((b) => `bin/${b}`), 'bin/membrane-cni', 'bpf/endpoint.o'].filter(
    (f) => !fs.existsSync(path.join(DIST, f)),
  );
  if (missing.length) throw new Error(`dist/${missing.join(', dist/')} missing: run "npm run build" first`);
  if (Number(process.versions.node.split('.')[0]) < 20)
    throw new Error(`Node ${process.version} is too old for the bundles (20.12 or newer)`);
}

/** <lib>: bundles, the datapath object, the runtime node_modules; replaced as a whole (a running
 *  agent keeps the files it opened). */
function installLib(l: Layout): void {
  const tmp = `${l.libDir}.new-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(path.join(tmp, 'bin'), { recursive: true });
  fs.mkdirSync(path.join(tmp, 'bpf'));
  const externals = new Set<string>();
  for (const b of BUNDLES) {
    fs.copyFileSync(path.join(DIST, 'bin', b), path.join(tmp, 'bin', b));
    fs.chmodSync(path.join(tmp, 'bin', b), 0o755);
    for (const e of externalRequires(fs.readFileSync(path.join(DIST, 'bin', b), 'utf8'))) externals.add(e);
  }
  fs.copyFileSync(path.join(DIST, 'bin/membrane-cni'), path.join(tmp, 'bin/membrane-cni'));
  fs.chmodSync(path.join(tmp, 'bin/membrane-cni'), 0o755);
  fs.copyFileSync(path.join(DIST, 'bpf/endpoint.o'), path.join(tmp, 'bpf/endpoint.o'));
  fs.writeFileSync(path.join(tmp, 'package.json'), '{ "type": "commonjs" }\n');
  const packages = dependencyClosure(REPO, [...externals]);
  copyPackages(REPO, packages, tmp);
  const old = `${l.libDir}.old-${process.pid}`;
  if (fs.existsSync(l.libDir)) fs.renameSync(l.libDir, old);
  fs.renameSync(tmp, l.libDir);
  fs.rmSync(old, { recursive: true, force: true });
  say(
    `${l.libDir}: ${BUNDLES.join(', ')}, membrane-cni, bpf/endpoint.o, ${packages.length} runtime packages (${[...externals].join(', ')} and their dependencies)`,
  );
}

function writeFile(file: string, content: string, mode: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, content, { mode });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
}

async function install(o: Options, l: Layout): Promise<void> {
  checkBuilt();
  // Config files left as they are stay ours only if an earlier installation wrote them.
  const previous = readManifest(l.manifest)?.entries ?? [];
  const entries: Entry[] = [];
  installLib(l);
  entries.push({ path: l.libDir, kind: 'dir' });

  const node = fs.realpathSync(process.execPath);
  for (const name of ON_PATH) {
    writeFile(path.join(l.binDir, name), wrapper(name, node, path.join(l.libDir, 'bin', name)), 0o755);
    entries.push({ path: path.join(l.binDir, name), kind: 'file' });
  }
  // membrane-cni is a single executable (no Node needed): one copy in <lib>, linked on PATH.
  const cniOnPath = path.join(l.binDir, 'membrane-cni');
  fs.rmSync(cniOnPath, { force: true });
  fs.symlinkSync(path.join(l.libDir, 'bin/membrane-cni'), cniOnPath);
  entries.push({ path: cniOnPath, kind: 'file' });
  say(
    `${l.binDir}: ${[...ON_PATH, 'membrane-cni'].join(', ')} (wrappers running ${node} on the bundles; membrane-cni links to the single executable)`,
  );

  if (fs.existsSync(l.configFile)) {
    say(`${l.configFile} exists, left as it is`);
  } else {
    writeFile(l.configFile, defaultConfig(l), 0o644);
    entries.push({ path: l.configFile, kind: 'config', sha256: sha256(l.configFile) });
    say(`${l.configFile} (the agent's configuration)`);
  }
  writeFile(l.unitFile, agentUnit(l), 0o644);
  entries.push({ path: l.unitFile, kind: 'file' });
  say(`${l.unitFile}`);

  if (o.cni) {
    const cfg = installedAgentConfig(l);
    const cniOpts: CniInstallOptions = {
      root: l.root,
      binDir: o.cniBinDir,
      confDir: o.cniConfDir,
      containerdConfig: l.containerdConfig,
      socket: cfg.socket,
      name: 'membrane',
      source: path.join(DIST, 'bin/membrane-cni'),
      unchangedSinceInstall: (f) => previous.some((e) => e.path === f && e.kind === 'config' && e.sha256 === sha256(f)),
    };
    entries.push(...installCni(cniOpts, say));
  }
  for (const e of previous)
    if (e.kind === 'config' && !entries.some((n) => n.path === e.path) && fs.existsSync(e.path)) entries.push(e);
  writeManifest(l.manifest, entries);

  if (systemd(l)) {
    systemctl(['daemon-reload']);
    systemctl(o.start ? ['enable', '--now', 'membrane-agent.service'] : ['enable', 'membrane-agent.service']);
    say('membrane-agent runs; try: membrane status');
  } else {
    say(
      `systemd is not managing this ${l.root ? 'root' : 'machine'}: run the agent as the unit would: ${path.join(l.binDir, 'membrane-agent')} --config ${l.configFile}`,
    );
  }
}

async function uninstall(o: Options, l: Layout): Promise<void> {
  const manifest = readManifest(l.manifest);
  if (!manifest && !o.purge) throw new Error(`no installation found (${l.manifest} is missing)`);
  // After a plain uninstall, --purge still finds what the agent left through its kept config file.
  const entries = manifest?.entries ?? [];
  if (o.purge && !entries.some((e) => e.path === l.configFile)) entries.push({ path: l.configFile, kind: 'config' });
  const cfg = o.purge ? installedAgentConfig(l) : undefined;
  if (cfg) {
    const n = await deleteEndpoints(cfg);
    if (n) say(`deleted ${n} endpoint(s) through the agent`);
  }
  if (systemd(l)) {
    systemctl(['disable', '--now', 'membrane-agent.service']);
  }
  const purged = cfg ? purgeAgentState(cfg, l) : [];
  const { removed, kept } = removeEntries(entries, o.purge);
  for (const p of removed) say(`removed ${p}`);
  for (const p of purged) say(`purged ${p}`);
  for (const p of kept) say(`kept ${p}: changed since it was installed (--purge removes it)`);
  for (const e of entries) removeEmptyDirs(path.dirname(e.path), l.root || '/');
  if (systemd(l)) systemctl(['daemon-reload']);
  if (!o.purge) say('the datapath state stays (pinned maps, host device, state dir): --uninstall --purge removes it too');
}

async function main(): Promise<void> {
  const program = new Command('scripts/install')
    .description(
      "Install Membrane on this node as a service: the executables on PATH, the agent's systemd unit and configuration, membrane-cni for the CNI runtimes.",
    )
    .option('--root <dir>', 'install under DIR (every path prefixed, also in the files written): for tests and images')
    .option('--prefix <dir>', 'executables in PREFIX/bin, the rest in PREFIX/lib/membrane', '/usr/local')
    .option('--no-cni', 'do not install membrane-cni into the CNI bin dir or write a conflist')
    .option('--cni-bin-dir <dir>', "CNI plugin dir (default: containerd's bin_dir, else /opt/cni/bin)")
    .option('--cni-conf-dir <dir>', "CNI config dir (default: containerd's conf_dir, else /etc/cni/net.d)")
    .option('--no-start', 'enable the unit without starting it')
    .option('--uninstall', 'remove what the installation wrote (a changed agent.yaml or conflist stays)')
    .option(
      '--purge',
      "with --uninstall: also the agent's endpoints, pinned maps, host device, sockets, state and /var/log/membrane",
    )
    .showHelpAfterError();
  program.parse(process.argv);
  const o = program.opts<Options>();
  if (o.purge && !o.uninstall) program.error('--purge goes with --uninstall');
  const l = layout({ root: o.root, prefix: o.prefix });
  if (o.uninstall) await uninstall(o, l);
  else await install(o, l);
}

main().catch((e) => {
  process.stderr.write(`install: ${(e as Error).message}\n`);
  process.exit(1);
});
