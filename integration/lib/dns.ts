// DNS for tests: dnsmasq (Debian) serving names from a hosts file inside a test netns, and clients that
// run inside a pod netns (a node child under nsenter): resolve a name through the pod's resolver path
// (UDP, or TCP with dns-packet) and connect to the first address at once, as an application would.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { TestNetns } from './netns.ts';
import { REPO } from './agent.ts';

export interface Dnsmasq {
  child: ChildProcess;
  /** Rewrites the hosts file ("ip name" lines) and makes dnsmasq read it again (SIGHUP). */
  setHosts(hosts: [string, string][]): Promise<void>;
  stop(): void;
}

export async function startDnsmasq(
  ns: TestNetns,
  dir: string,
  listen: string,
  opts: { hosts: [string, string][]; ttl: number; cnames?: [string, string][]; port?: number },
): Promise<Dnsmasq> {
  const hostsFile = path.join(dir, 'hosts');
  const write = (hosts: [string, string][]) => fs.writeFileSync(hostsFile, hosts.map(([ip, name]) => `${ip} ${name}\n`).join(''));
  write(opts.hosts);
  const child = spawn(
    'nsenter',
    [
      `--net=${ns.path}`,
      'dnsmasq',
      '--keep-in-foreground',
      '--conf-file=/dev/null',
      '--no-resolv',
      '--no-hosts',
      '--bind-interfaces',
      `--listen-address=${listen}`,
      `--port=${opts.port ?? 53}`,
      `--addn-hosts=${hostsFile}`,
      `--local-ttl=${opts.ttl}`,
      ...(opts.cnames ?? []).map(([alias, target]) => `--cname=${alias},${target}`),
      '--user=root',
      `--pid-file=${path.join(dir, 'dnsmasq.pid')}`,
      '--log-facility=-',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  const onLog = (d: Buffer) => {
    log += d.toString();
  };
  child.stdout!.on('data', onLog);
  child.stderr!.on('data', onLog);
  const deadline = Date.now() + 10_000;
  while (!/read .*hosts/.test(log)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`dnsmasq did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    child,
    async setHosts(hosts) {
      const before = (log.match(/read .*hosts/g) ?? []).length;
      write(hosts);
      child.kill('SIGHUP');
      const end = Date.now() + 5000;
      while ((log.match(/read .*hosts/g) ?? []).length <= before && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    },
    stop: () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

const RESOLVE_CONNECT = `
const dns = require('dns'), net = require('net');
const [server, name, port, ms, proto] = process.argv.slice(1);
const t0 = Date.now();
const out = (o) => { process.stdout.write(JSON.stringify({ ...o, ms: Date.now() - t0 })); process.exit(0); };
const connect = (ips, ttl) => {
  if (!Number(port)) out({ ips, ttl });
  const s = net.connect({ host: ips[0], port: Number(port) });
  // ms for the handshake; once through (past the policy), 10 s from the connect for the echo, which an
  // echo server a loaded machine leaves unscheduled can take (as lib/probe.ts). Each verdict waits one
  // turn for what already arrived.
  const timedOut = () => out({ ips, ttl, connect: 'timeout' });
  let timer = setTimeout(() => setImmediate(() => {
    if (s.connecting) timedOut();
    else timer = setTimeout(() => setImmediate(timedOut), Math.max(0, 10000 - Number(ms)));
  }), Number(ms));
  s.on('connect', () => s.write('ping'));
  s.on('data', () => { clearTimeout(timer); s.destroy(); out({ ips, ttl, connect: 'ok' }); });
  s.on('error', (e) => { clearTimeout(timer); out({ ips, ttl, connect: 'error ' + e.code }); });
};
if (proto === 'tcp') {
  const packet = require('dns-packet');
  const s = net.connect({ host: server, port: 53 });
  const timer = setTimeout(() => out({ error: 'timeout' }), 3000);
  s.on('connect', () => s.write(packet.streamEncode({ type: 'query', id: 4242, flags: packet.RECURSION_DESIRED, questions: [{ type: 'A', name }] })));
  let buf = Buffer.alloc(0);
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    if (buf.length < 2 || buf.length < 2 + buf.readUInt16BE(0)) return;
    clearTimeout(timer); s.destroy();
    const r = packet.streamDecode(buf);
    if (r.rcode !== 'NOERROR') out({ error: r.rcode === 'REFUSED' ? 'EREFUSED' : r.rcode });
    const a = r.answers.filter((x) => x.type === 'A');
    connect(a.map((x) => x.data), a.length ? a[0].ttl : 0);
  });
  s.on('error', (e) => out({ error: 'tcp ' + e.code }));
} else {
  const r = new dns.promises.Resolver({ timeout: 2000, tries: 1 });
  r.setServers([server]);
  r.resolve4(name, { ttl: true }).then((a) => connect(a.map((x) => x.address), a[0].ttl), (e) => out({ error: e.code }));
}
`;

export interface ResolveResult {
  ips?: string[];
  ttl?: number;
  connect?: string;
  error?: string;
  /** From the query to this result, timed in the client (its process start excluded). */
  ms?: number;
}

/** Resolves `name` at `server` from inside `ns` (UDP by default), then connects to the first address on
 *  `port` (0: no connection). error: "EREFUSED", "ETIMEOUT", ...; connect: "ok", "timeout", "error X". */
export function resolveAndConnect(
  ns: { path: string },
  server: string,
  name: string,
  port: number,
  opts: { tcp?: boolean; connectMs?: number } = {},
): Promise<ResolveResult> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(
    'nsenter',
    [
      `--net=${ns.path}`,
      process.execPath,
      '-e',
      RESOLVE_CONNECT,
      server,
      name,
      String(port),
      String(opts.connectMs ?? 2000),
      opts.tcp ? 'tcp' : 'udp',
    ],
    { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env },
  );
  let out = '',
    err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve) =>
    child.once('exit', () => {
      try {
        resolve(JSON.parse(out) as ResolveResult);
      } catch {
        resolve({ error: `no result: ${out} ${err}`.trim() });
      }
    }),
  );
}
