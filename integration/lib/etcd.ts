// A real etcd (Debian's etcd-server 3.4) for tests and benchmarks, never the system service: its own
// data dir, its own ports, its own process (we kill only that PID). Either on loopback with free
// ports, or inside a netns of ours on an underlay address (the multi-node harness), where it also
// listens on a unix socket in its dir so the test process can reach it without a route.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { ownChild, signalAndWait } from './cleanup.ts';

export interface EtcdOptions {
  /** Directory of our own: data dir, log and socket go here (the caller removes it). */
  dir: string;
  /** Run inside this netns (path), listening on `ip`. Default: loopback of the current netns. */
  netns?: string;
  ip?: string;
  name?: string;
  /** Serve clients over TLS with client certificates (loopback mode only). */
  tls?: { ca: string; cert: string; key: string; clientCert: string; clientKey: string };
}

export interface TestEtcd {
  /** URL agents and operators use (the underlay address in netns mode). */
  clientUrl: string;
  /** URL the test process can use from its own netns (unix socket in netns mode). */
  localUrl: string;
  dataDir: string;
  logFile: string;
  pid(): number | undefined;
  running(): boolean;
  /** SIGKILL (an outage); data stays. */
  kill9(): Promise<void>;
  /** Start again on the same data dir and addresses. */
  start(): Promise<void>;
  /** SIGTERM and wait. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 120_000;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export async function startEtcd(opts: EtcdOptions): Promise<TestEtcd> {
  const name = opts.name ?? 'mbr';
  const dataDir = path.join(opts.dir, 'etcd-data');
  const logFile = path.join(opts.dir, 'etcd.log');
  let clientUrl: string, peerUrl: string, localUrl: string;
  if (opts.netns) {
    if (!opts.ip) throw new Error('startEtcd: a netns needs an ip');
    clientUrl = `http://${opts.ip}:2379`;
    peerUrl = `http://${opts.ip}:2380`;
    // etcd names the socket file after the URL's host:port, relative to its working directory.
    localUrl = `unix:${path.join(opts.dir, 'etcd.sock:0')}`;
  } else {
    const [c, p] = [await freePort(), await freePort()];
    clientUrl = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${c}`;
    peerUrl = `http://127.0.0.1:${p}`;
    localUrl = clientUrl;
  }
  const listenClient = opts.netns ? `${clientUrl},unix://etcd.sock:0` : clientUrl;
  const args = [
    '--name',
    name,
    '--data-dir',
    dataDir,
    '--listen-client-urls',
    listenClient,
    '--advertise-client-urls',
    clientUrl,
    '--listen-peer-urls',
    peerUrl,
    '--initial-advertise-peer-urls',
    peerUrl,
    '--initial-cluster',
    `${name}=${peerUrl}`,
    '--initial-cluster-state',
    'new',
    '--log-level',
    'warn',
    '--logger',
    'zap',
    ...(opts.tls
      ? ['--cert-file', opts.tls.cert, '--key-file', opts.tls.key, '--trusted-ca-file', opts.tls.ca, '--client-cert-auth']
      : []),
    // Small machine, short tests: no snapshot churn, quick elections on restart.
    '--heartbeat-interval',
    '100',
    '--election-timeout',
    '1000',
  ];
  let child: ChildProcess | undefined;
  const launch = async () => {
    // A killed etcd leaves its unix socket file behind; it would refuse to bind again.
    if (opts.netns) fs.rmSync(path.join(opts.dir, 'etcd.sock:0'), { force: true });
    const log = fs.openSync(logFile, 'a');
    const [cmd, argv] = opts.netns ? ['nsenter', [`--net=${opts.netns}`, 'etcd', ...args]] : ['etcd', args];
    child = spawn(cmd, argv, { cwd: opts.dir, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    ownChild(child);
    const c = child;
    // 120 s as for the agents (lib/agent.ts): only a start that never answers meets it, and a loaded
    // 2-vCPU machine (two heavy files at once, load 20-30) can take many seconds to start a process.
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (c.exitCode !== null || c.signalCode !== null) throw new Error(`etcd exited during start:\n${tail(logFile)}`);
      if (await (opts.tls ? healthyTls(localUrl, opts.tls) : healthy(localUrl))) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd did not answer within ${START_TIMEOUT_MS / 1000} s:\n${tail(logFile)}`);
  };
  const signal = (sig: NodeJS.Signals) => signalAndWait(child, sig);
  const etcd: TestEtcd = {
    clientUrl,
    localUrl,
    dataDir,
    logFile,
    pid: () => child?.pid,
    running: () => !!child && child.exitCode === null && child.signalCode === null,
    kill9: () => signal('SIGKILL'),
    start: launch,
    stop: () => signal('SIGTERM'),
  };
  try {
    await launch();
  } catch (e) {
    await etcd.kill9();
    throw e;
  }
  return etcd;
}

/** GET /health over HTTP (or the unix socket): etcd answers {"health":"true"} once it has a leader. */
function healthy(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const u = url.startsWith('unix:') ? undefined : new URL(url);
    const s = u ? net.connect(Number(u.port), u.hostname) : net.connect(url.slice('unix:'.length));
    s.once('connect', () => s.write('GET /health HTTP/1.0\r\n\r\n'));
    let body = '';
    s.setTimeout(1000, () => s.destroy());
    s.on('data', (d) => {
      body += d;
    });
    s.on('close', () => resolve(/"health":\s*"true"/.test(body)));
    s.on('error', () => resolve(false));
  });
}

function healthyTls(url: string, tls: NonNullable<EtcdOptions['tls']>): Promise<boolean> {
  return new Promise((resolve) => {
    const u = new URL(url);
    const req = https.get(
      {
        host: u.hostname,
        port: Number(u.port),
        path: '/health',
        timeout: 1000,
        ca: fs.readFileSync(tls.ca),
        cert: fs.readFileSync(tls.clientCert),
        key: fs.readFileSync(tls.clientKey),
      },
      (res) => {
        let body = '';
        res.on('data', (d) => {
          body += d;
        });
        res.on('end', () => resolve(/"health":\s*"true"/.test(body)));
      },
    );
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
  });
}

function tail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '(no log)';
  }
}
