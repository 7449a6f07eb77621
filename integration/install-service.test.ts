// scripts/install on a scratch root laid out like a Debian node (containerd's config naming
// /usr/lib/cni, the reference plugins there): the executables on PATH, the unit (systemd-analyze
// verify), its ExecStart run for real from the installed files (not the repo), a pod networked by the
// installed membrane-cni through the installed conflist, then --uninstall and --uninstall --purge
// leaving nothing of ours behind.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO, randomId, randomSubnet24, sleep } from './lib/agent.ts';
import { createNetns, linkExists } from './lib/netns.ts';

const env = { ...process.env };
delete env.NODE_EXTRA_CA_CERTS;

function run(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(cmd, args, { cwd: '/', encoding: 'utf8', input: opts.input, env: opts.env ?? env, timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
const install = (args: string[]) => run('bash', [path.join(REPO, 'scripts/install'), ...args]);

/** Every file (not dir) under `dir`, relative. */
function files(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

t.test('scripts/install: a service from the installed files, uninstalled and purged', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-install-'));
  const id = randomId();
  const bpffsDir = `/sys/fs/bpf/mbt-${id}`;
  const hostDevice = `mbh${id}`;
  let agent: ChildProcess | undefined;
  t.teardown(async () => {
    if (agent && agent.exitCode === null && agent.signalCode === null) {
      agent.kill('SIGTERM');
      await new Promise((r) => agent!.once('exit', r));
    }
    spawnSync('ip', ['link', 'del', hostDevice], { stdio: 'ignore' });
    fs.rmSync(bpffsDir, { recursive: true, force: true });
    fs.rmSync(root, { recursive: true, force: true });
  });
  // A Debian node: the reference plugins in /usr/lib/cni, and containerd's CRI told so.
  fs.mkdirSync(path.join(root, 'usr/lib/cni'), { recursive: true });
  for (const p of ['portmap', 'loopback']) fs.symlinkSync(`/usr/lib/cni/${p}`, path.join(root, 'usr/lib/cni', p));
  fs.mkdirSync(path.join(root, 'etc/containerd'), { recursive: true });
  fs.writeFileSync(
    path.join(root, 'etc/containerd/config.toml'),
    `version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
`,
  );
  const before = files(root);

  const inst = install(['--root', root]);
  t.equal(inst.code, 0, `install exits 0: ${inst.stderr}`);
  const bin = path.join(root, 'usr/local/bin');
  for (const name of ['membrane-agent', 'membrane', 'membrane-operator', 'membrane-relay', 'membrane-cni']) {
    t.ok(fs.statSync(path.join(bin, name)).mode & 0o111, `${name} on PATH (${bin}), executable`);
  }
  t.match(inst.stdout, /CNI bin dir \S+\/usr\/lib\/cni \(containerd's/, "the CNI bin dir is containerd's bin_dir");
  t.ok(fs.existsSync(path.join(root, 'usr/lib/cni/membrane-cni')), 'membrane-cni installed where containerd looks');
  const conf = JSON.parse(fs.readFileSync(path.join(root, 'etc/cni/net.d/10-membrane.conflist'), 'utf8'));
  t.same(
    conf.plugins.map((p: { type: string }) => p.type),
    ['membrane-cni', 'portmap'],
    'the conflist chains portmap, found in /usr/lib/cni',
  );

  // The unit: ordering, restart policy, config file; valid for systemd.
  const unitFile = path.join(root, 'etc/systemd/system/membrane-agent.service');
  const unit = fs.readFileSync(unitFile, 'utf8');
  t.match(unit, /^Before=.*docker\.service.*containerd\.service/m, 'ordered before docker.service and containerd.service');
  t.match(unit, /^Restart=always$/m, 'restarted when it dies');
  const analyze = run('sh', ['-c', 'command -v systemd-analyze']);
  if (analyze.code === 0) {
    const v = run('systemd-analyze', ['verify', unitFile]);
    t.same([v.code, v.stderr.trim()], [0, ''], `systemd-analyze verify accepts the unit: ${v.stderr}`);
  } else t.comment('systemd-analyze not installed: unit not verified');

  // Configure it as an operator would (private dirs for this shared machine), then run ExecStart.
  const configFile = path.join(root, 'etc/membrane/agent.yaml');
  const socket = path.join(root, 'run/membrane/agent.sock');
  const pool = randomSubnet24();
  fs.writeFileSync(
    configFile,
    fs.readFileSync(configFile, 'utf8').replace(/^dockerPlugin: membrane$/m, `dockerPlugin: mbt${id}`) +
      [
        `bpffsDir: ${bpffsDir}`,
        `socket: ${socket}`,
        `observerSocket: ${path.join(root, 'run/membrane/observer.sock')}`,
        `hostDevice: ${hostDevice}`,
        `pools: [${pool}]`,
        'metricsAddress: 127.0.0.1:0',
        `dockerPluginDir: ${path.join(root, 'run/docker/plugins')}`,
        `dockerSocket: ${path.join(root, 'run/docker.sock')}`,
        'l7Proxy: false',
        '',
      ].join('\n'),
  );
  // Installing again after the change: the conflist (unchanged since installed) follows the socket.
  const again = install(['--root', root]);
  t.equal(again.code, 0, `install again: ${again.stderr}`);
  t.match(again.stdout, /agent\.yaml exists, left as it is/, 'the changed agent.yaml stays as it is');
  const conf2 = JSON.parse(fs.readFileSync(path.join(root, 'etc/cni/net.d/10-membrane.conflist'), 'utf8'));
  t.equal(conf2.plugins[0].agentSocket, socket, 'the conflist names the configured agent socket');
  const execStart = /^ExecStart=(.*)$/m.exec(unit)![1].split(' ');
  t.equal(execStart[0], path.join(bin, 'membrane-agent'), 'ExecStart runs the installed agent');
  const log = fs.openSync(path.join(root, 'agent.log'), 'a');
  agent = spawn(execStart[0], execStart.slice(1), { cwd: '/', env, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const cli = (args: string[]) => run(path.join(bin, 'membrane'), ['--socket', socket, ...args]);
  let status = cli(['status', '--brief']);
  // As long as lib/agent.ts waits for an agent: a loaded 2-vCPU runner starts one slowly.
  for (const end = Date.now() + 120_000; status.stdout.trim() !== 'OK' && agent.exitCode === null && Date.now() < end; ) {
    await sleep(250);
    status = cli(['status', '--brief']);
  }
  t.equal(
    status.stdout.trim(),
    'OK',
    `membrane status --brief answers OK${status.stdout.trim() === 'OK' ? '' : ` (agent ${agent.exitCode === null ? 'running' : `exited ${agent.exitCode}`}; log: ${fs.readFileSync(path.join(root, 'agent.log'), 'utf8').slice(-2000)})`}`,
  );
  t.match(
    cli(['status']).stdout,
    new RegExp(`State:\\s+${path.join(root, 'var/lib/membrane')}`),
    'the agent uses the state dir of the installed config',
  );
  const maps = fs.readFileSync(`/proc/${agent.pid}/maps`, 'utf8');
  t.match(
    maps,
    new RegExp(`${root}/usr/local/lib/membrane/node_modules/\\S*koffi\\S*\\.node`),
    'koffi loads from the installed node_modules, not the repo',
  );

  // The installed membrane-cni through the installed conflist networks a pod.
  const ns = createNetns('mbt-inst');
  t.teardown(() => ns.remove());
  const cniEnv = (cmd: string) => ({
    ...env,
    CNI_COMMAND: cmd,
    CNI_CONTAINERID: `inst-${id}`,
    CNI_NETNS: ns.path,
    CNI_IFNAME: 'eth0',
    CNI_PATH: path.join(root, 'usr/lib/cni'),
  });
  const netconf = JSON.stringify({ ...conf2.plugins[0], cniVersion: conf2.cniVersion, name: conf2.name });
  const add = run(path.join(root, 'usr/lib/cni/membrane-cni'), [], { input: netconf, env: cniEnv('ADD') });
  t.equal(add.code, 0, `CNI ADD through the installed plugin: ${add.stdout}${add.stderr}`);
  t.match(
    JSON.parse(add.stdout || '{}').ips?.[0]?.address ?? '',
    new RegExp(`^${pool.split('.').slice(0, 3).join('\\.')}\\.`),
    'the pod gets an address from the configured pool',
  );
  t.match(cli(['endpoint', 'list']).stdout, `inst-${id}`.slice(0, 12), 'membrane endpoint list shows it');

  // Purge refuses while the agent runs; a plain uninstall keeps the datapath and a changed config.
  const early = install(['--root', root, '--uninstall', '--purge']);
  t.equal(early.code, 1, 'uninstall --purge refuses while the agent runs');
  t.match(early.stderr, /still runs/, early.stderr);
  t.ok(fs.existsSync(path.join(bin, 'membrane')) && fs.existsSync(bpffsDir), 'removed no file and no pin');
  t.notOk(
    cli(['endpoint', 'list']).stdout.includes(`inst-${id}`.slice(0, 12)),
    'but deleted the endpoints through the agent (they hold addresses and links)',
  );
  agent.kill('SIGTERM');
  await new Promise((r) => agent!.once('exit', r));
  const un = install(['--root', root, '--uninstall']);
  t.equal(un.code, 0, `uninstall exits 0: ${un.stderr}`);
  t.match(un.stdout, /kept \S+agent\.yaml: changed/, 'the changed agent.yaml stays');
  t.ok(linkExists(hostDevice) && fs.existsSync(bpffsDir), 'plain uninstall leaves the datapath (host device, pins)');
  const purge = install(['--root', root, '--uninstall', '--purge']);
  t.equal(purge.code, 0, `uninstall --purge exits 0: ${purge.stderr}`);
  t.notOk(linkExists(hostDevice), 'the host device is gone');
  t.notOk(fs.existsSync(bpffsDir), 'the pinned maps are gone');
  t.notOk(fs.existsSync(path.join(root, 'var/lib/membrane')), 'the state dir is gone');
  t.same(
    files(root).filter((f) => f !== 'agent.log'),
    before,
    'no file of the installation is left',
  );
});

t.test('scripts/install-cni: dirs as arguments, containerd 2.x bin_dirs, no portmap, an earlier conflist', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-install-cni-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const r1 = run('bash', [path.join(REPO, 'scripts/install-cni'), path.join(root, 'b'), path.join(root, 'c')]);
  t.equal(r1.code, 0, `install-cni BIN CONF: ${r1.stderr}`);
  t.ok(
    fs.existsSync(path.join(root, 'b/membrane-cni')) && fs.existsSync(path.join(root, 'c/10-membrane.conflist')),
    'positional bin and conf dirs',
  );

  fs.mkdirSync(path.join(root, 'etc/containerd'), { recursive: true });
  fs.writeFileSync(
    path.join(root, 'etc/containerd/config.toml'),
    `version = 3
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['/opt/k8s/cni']
  conf_dir = '/etc/k8s/cni'
`,
  );
  fs.mkdirSync(path.join(root, 'etc/k8s/cni'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc/k8s/cni/05-other.conflist'), '{}');
  const r2 = run('bash', [path.join(REPO, 'scripts/install-cni'), '--root', root]);
  t.equal(r2.code, 0, `install-cni --root: ${r2.stderr}`);
  t.ok(fs.existsSync(path.join(root, 'opt/k8s/cni/membrane-cni')), "containerd 2.x's bin_dirs[0]");
  const conf = JSON.parse(fs.readFileSync(path.join(root, 'etc/k8s/cni/10-membrane.conflist'), 'utf8'));
  t.same(
    conf.plugins.map((p: { type: string }) => p.type),
    ['membrane-cni'],
    'no portmap chained where none is installed',
  );
  t.match(r2.stdout, /portmap not found .*hostPort mappings will not work/, 'and it says so');
  t.match(r2.stdout, /05-other\.conflist sorts before it/, 'an earlier conflist is pointed out');
  const bad = run('bash', [path.join(REPO, 'scripts/install-cni'), '--bogus']);
  t.equal(bad.code, 1, 'an unknown option fails');
  t.match(bad.stderr, /unknown option '--bogus'/, bad.stderr);
});
