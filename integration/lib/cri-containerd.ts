// A private containerd 1.6 with the CRI plugin pointed at a test's own CNI conf and bin dirs (runtimes.md
// §4): own root/state/socket/runc root/opt dir, started without NODE_EXTRA_CA_CERTS, stopped by its PID,
// its mounts and dirs removed afterwards. `ctr` talks to it with -a.
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { CriClient } from './cri.ts';
import { PAUSE_REF, buildImageTarball } from './images.ts';

const execFileP = promisify(execFile);

export interface Containerd {
  dir: string;
  socket: string;
  binDir: string;
  confDir: string;
  pid: number;
  cri: CriClient;
  ctr(args: string[], opts?: { namespace?: string; timeoutMs?: number }): Promise<string>;
  /** Removes every sandbox through CRI, stops containerd by PID, unmounts and deletes its dirs. */
  stop(): Promise<void>;
}

export interface ContainerdOptions {
  /** Test scratch dir; everything goes under <dir>/containerd. */
  dir: string;
  /** name -> file: executables linked into bin_dir (loopback is always added). */
  plugins: Record<string, string>;
  /** The conflist written as 10-<name>.conflist (may be written later with writeConfList). */
  confList?: { name: string } & Record<string, unknown>;
  /** Import the test images into the k8s.io namespace (default true). */
  images?: boolean;
}

export function writeConfList(confDir: string, confList: { name: string }): string {
  const file = path.join(confDir, `10-${confList.name}.conflist`);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(confList, null, 2));
  fs.renameSync(`${file}.tmp`, file);
  return file;
}

export async function startContainerd(o: ContainerdOptions): Promise<Containerd> {
  const dir = path.join(o.dir, 'containerd');
  const binDir = path.join(dir, 'cni/bin');
  const confDir = path.join(dir, 'cni/net.d');
  for (const d of [
    binDir,
    confDir,
    path.join(dir, 'root'),
    path.join(dir, 'state'),
    path.join(dir, 'runc'),
    path.join(dir, 'opt'),
  ])
    fs.mkdirSync(d, { recursive: true });
  for (const [name, file] of Object.entries({ loopback: '/usr/lib/cni/loopback', ...o.plugins }))
    fs.symlinkSync(file, path.join(binDir, name));
  if (o.confList) writeConfList(confDir, o.confList);
  const socket = path.join(dir, 'containerd.sock');
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(
    config,
    `version = 2
root = "${dir}/root"
state = "${dir}/state"
[grpc]
  address = "${socket}"
[ttrpc]
  address = "${socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_REF}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${binDir}"
    conf_dir = "${confDir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${dir}/runc"
`,
  );
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.NODE_OPTIONS;
  const log = fs.openSync(path.join(dir, 'containerd.log'), 'a');
  const child: ChildProcess = spawn('containerd', ['--config', config], { env, stdio: ['ignore', log, log], detached: false });
  fs.closeSync(log);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const cri = new CriClient(socket);
  const ctr = async (args: string[], opts: { namespace?: string; timeoutMs?: number } = {}) =>
    (
      await execFileP('ctr', ['-a', socket, '-n', opts.namespace ?? 'k8s.io', ...args], {
        env,
        timeout: opts.timeoutMs ?? 120_000,
        maxBuffer: 16 << 20,
      })
    ).stdout;

  const stop = async () => {
    try {
      if (child.exitCode === null) {
        for (const s of await cri.listPodSandbox().catch(() => [])) {
          await cri.stopPodSandbox(s.id).catch(() => undefined);
          await cri.removePodSandbox(s.id).catch(() => undefined);
        }
      }
    } finally {
      cri.close();
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      unmountUnder(dir);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };

  try {
    await waitFor(
      async () => {
        await cri.version();
        return true;
      },
      START_TIMEOUT_MS,
      () => `containerd did not answer on ${socket}:\n${tail(path.join(dir, 'containerd.log'))}`,
      exited,
    );
    if (o.images !== false) {
      const tarball = buildImageTarball(o.dir);
      await ctr(['images', 'import', tarball]);
      await ctr(['images', 'import', tarball], { namespace: 'default' });
      fs.rmSync(tarball, { force: true });
    }
  } catch (e) {
    await stop().catch(() => undefined);
    throw e;
  }
  return { dir, socket, binDir, confDir, pid: child.pid!, cri, ctr, stop };
}

/** Waits until CRI reports NetworkReady (containerd loads conf_dir asynchronously). */
export async function waitNetworkReady(c: Containerd): Promise<void> {
  await waitFor(
    async () => (await c.cri.conditions()).NetworkReady === true,
    START_TIMEOUT_MS,
    () => 'CRI never reported NetworkReady=true',
  );
}

/** Unmounts every mount at or below `dir`, deepest first (overlay rootfs, netns bind mounts, shm). */
export function unmountUnder(dir: string): void {
  const mounts = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => Boolean(m) && (m === dir || m.startsWith(`${dir}/`)))
    .map((m) => m.replace(/\\040/g, ' '));
  for (const m of mounts.sort((a, b) => b.length - a.length)) {
    try {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  }
}

/** How long containerd gets to answer and to report its network ready: 120 s as for the agents
 *  (lib/agent.ts). Only a start that never comes meets it (a containerd that exits is noticed at
 *  once); a loaded 2-vCPU machine (two heavy files at once, load 20-30) takes many seconds to start
 *  a process. */
const START_TIMEOUT_MS = 120_000;

async function waitFor(check: () => Promise<boolean>, ms: number, msg: () => string, exited?: Promise<void>): Promise<void> {
  const deadline = Date.now() + ms;
  let dead = false;
  void exited?.then(() => {
    dead = true;
  });
  for (;;) {
    if (dead) throw new Error(`containerd exited: ${msg()}`);
    try {
      if (await check()) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(msg());
    await new Promise((r) => setTimeout(r, 100));
  }
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '';
  }
}
