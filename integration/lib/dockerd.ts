// A private dockerd for tests and benches: its own data-root, exec-root, API socket, pidfile and
// (supervised) containerd, so it never touches a system daemon. `--bridge=none --iptables=false`: no
// default bridge, no firewall rules. Stopped by the PID we recorded; everything it created is removed.
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { alive } from './cleanup.ts';
import { waitUntil } from '../../shared/test/lib/poll.ts';

const execFileP = promisify(execFile);

export interface DockerdOptions {
  /** Parent for the daemon's directories; default a fresh mkdtemp under os.tmpdir(). Reused across restart(). */
  root?: string;
  /** Extra dockerd flags. */
  extraArgs?: string[];
  /** Seconds to wait for the API socket. */
  startTimeoutS?: number;
}

export interface Dockerd {
  root: string;
  socket: string;
  /** DOCKER_HOST value. */
  host: string;
  execRoot: string;
  dataRoot: string;
  pid: number;
  /** Environment for the docker CLI (DOCKER_HOST, no NODE_EXTRA_CA_CERTS, private DOCKER_CONFIG). */
  env: NodeJS.ProcessEnv;
  /** Run the docker CLI against this daemon. Rejects with stderr on a non-zero exit. */
  docker(args: string[], opts?: { timeoutMs?: number; input?: Buffer }): Promise<string>;
  /** Like docker() but never rejects. */
  dockerTry(args: string[], opts?: { timeoutMs?: number }): Promise<{ code: number; stdout: string; stderr: string }>;
  /** Stop the daemon (SIGTERM, then SIGKILL after timeoutS) and keep its directories. */
  stop(timeoutS?: number): Promise<void>;
  /** Start it again on the same directories (a dockerd restart). */
  restart(): Promise<void>;
  /** Stop and remove every directory and mount it created. Idempotent. */
  destroy(): Promise<void>;
}

function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  delete env.DOCKER_HOST;
  delete env.DOCKER_CONTEXT;
  return { ...env, ...extra };
}

function readPid(file: string): number | null {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

/** Mount points at or below `dir`, deepest first. */
function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const decoded = mp.replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (decoded === dir || decoded.startsWith(dir + '/')) out.push(decoded);
  }
  return out.sort((a, b) => b.length - a.length);
}

export async function startDockerd(opts: DockerdOptions = {}): Promise<Dockerd> {
  const root = opts.root ?? (await fsp.mkdtemp(path.join(os.tmpdir(), 'mbr-dockerd-')));
  const dataRoot = path.join(root, 'data');
  const execRoot = path.join(root, 'exec');
  const socket = path.join(root, 'docker.sock');
  const pidfile = path.join(root, 'docker.pid');
  const configFile = path.join(root, 'daemon.json');
  const cliConfig = path.join(root, 'cli');
  const logFile = path.join(root, 'dockerd.log');
  const startTimeoutS = opts.startTimeoutS ?? 60;
  await fsp.mkdir(cliConfig, { recursive: true });
  // deprecated-key-path: keep 20.10's trust key out of /etc/docker.
  await fsp.writeFile(configFile, JSON.stringify({ 'deprecated-key-path': path.join(root, 'key.json') }) + '\n');
  const host = `unix://${socket}`;
  const env = cleanEnv({ DOCKER_HOST: host, DOCKER_CONFIG: cliConfig, DOCKER_CLI_HINTS: 'false' });
  let pid = 0;
  let destroyed = false;

  async function start(): Promise<void> {
    try {
      fs.unlinkSync(socket);
    } catch {
      /* absent */
    }
    const args = [
      '--data-root',
      dataRoot,
      '--exec-root',
      execRoot,
      '-H',
      host,
      '--pidfile',
      pidfile,
      '--config-file',
      configFile,
      '--bridge=none',
      '--iptables=false',
      '--ip-masq=false',
      '--userland-proxy=false',
      '--log-level=warn',
      ...(opts.extraArgs ?? []),
    ];
    const log = fs.openSync(logFile, 'a');
    // detached: its own process group, so a test runner's Ctrl-C does not hit it before cleanup does.
    const spawned = spawn('dockerd', args, { env: cleanEnv(), stdio: ['ignore', log, log], detached: true });
    fs.closeSync(log);
    let exited: string | null = null;
    spawned.once('exit', (code, sig) => {
      exited = `dockerd exited (code ${code}, signal ${sig})`;
    });
    spawned.once('error', (e) => {
      exited = `cannot run dockerd (${e.message}); install Debian's docker.io`;
    });
    spawned.unref();
    pid = spawned.pid ?? 0;
    try {
      await waitUntil(
        `dockerd API on ${socket}`,
        async () => {
          if (exited) throw new Error(`${exited} while starting; log ${logFile}:\n${tail(logFile)}`);
          if (!fs.existsSync(socket)) return false;
          const r = await dockerTry(['version', '--format', '{{.Server.Version}}'], { timeoutMs: 5000 });
          return r.code === 0;
        },
        startTimeoutS * 1000,
      );
    } catch (e) {
      await stop(5);
      throw e;
    }
  }

  async function dockerTry(args: string[], o: { timeoutMs?: number; input?: Buffer } = {}) {
    return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      const p = spawn('docker', args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '',
        stderr = '';
      p.stdout.on('data', (d) => {
        stdout += d;
      });
      p.stderr.on('data', (d) => {
        stderr += d;
      });
      const timer = setTimeout(() => {
        stderr += `\n(timed out after ${o.timeoutMs} ms)`;
        p.kill('SIGKILL');
      }, o.timeoutMs ?? 120_000);
      p.on('error', (e) => {
        stderr += String(e);
      });
      p.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code: code ?? -1, stdout, stderr });
      });
      if (o.input) p.stdin.end(o.input);
      else p.stdin.end();
    });
  }

  async function docker(args: string[], o: { timeoutMs?: number; input?: Buffer } = {}): Promise<string> {
    const r = await dockerTry(args, o);
    if (r.code !== 0) throw new Error(`docker ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  async function stop(timeoutS = 30): Promise<void> {
    const p = pid || readPid(pidfile);
    if (p && alive(p)) {
      process.kill(p, 'SIGTERM');
      try {
        await waitUntil(`dockerd ${p} to exit`, () => !alive(p), timeoutS * 1000);
      } catch {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* gone */
        }
        await waitUntil(`dockerd ${p} to die`, () => !alive(p), 5000).catch(() => {});
      }
    }
    // The supervised containerd normally exits with dockerd; after a SIGKILL it may not.
    const ctrd = readPid(path.join(execRoot, 'containerd', 'containerd.pid'));
    if (ctrd && alive(ctrd) && isOurs(ctrd)) {
      process.kill(ctrd, 'SIGTERM');
      await waitUntil(`containerd ${ctrd} to exit`, () => !alive(ctrd), 10_000).catch(() => {
        try {
          process.kill(ctrd, 'SIGKILL');
        } catch {
          /* gone */
        }
      });
    }
    pid = 0;
  }

  /** A pid from our pidfiles is only ours if its command line names our root. */
  function isOurs(p: number): boolean {
    try {
      return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(root);
    } catch {
      return false;
    }
  }

  async function destroy(): Promise<void> {
    if (destroyed) return;
    destroyed = true;
    await stop(20);
    for (const mp of mountsUnder(root)) {
      await execFileP('umount', ['-l', mp]).catch(() => {});
    }
    await fsp.rm(root, { recursive: true, force: true, maxRetries: 3 });
  }

  await start();
  const d: Dockerd = {
    root,
    socket,
    host,
    execRoot,
    dataRoot,
    env,
    get pid() {
      return pid;
    },
    docker,
    dockerTry,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    destroy,
  } as Dockerd;
  return d;
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
