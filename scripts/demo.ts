// npm run demo: an agent with embedded defaults, two "pods" (network namespaces) networked through
// its API, shown talking; everything removed on exit.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient } from '../shared/src/api/client.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const id = crypto.randomBytes(3).toString('hex');
const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `membrane-demo-${id}-`));
const socket = path.join(stateDir, 'agent.sock');
const bpffsDir = `/sys/fs/bpf/membrane-demo-${id}`;
const hostDevice = `mbrdemo${id}`;
const pods = [`demo-a-${id}`, `demo-b-${id}`];
const env = { ...process.env };
delete env.NODE_EXTRA_CA_CERTS;

const say = (s: string) => process.stdout.write(`\n\x1b[1m== ${s}\x1b[0m\n`);
const run = (cmd: string, args: string[]) => {
  process.stdout.write(`$ ${[cmd, ...args].join(' ')}\n`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', env });
  if (r.status !== 0) throw new Error(`${cmd} exited ${r.status}`);
};
const cli = (...args: string[]) => run(path.join(root, 'dist/bin/membrane'), ['--socket', socket, ...args]);

say(`starting membrane-agent (state ${stateDir}, pins ${bpffsDir}, default pool 10.200.0.0/16)`);
const logFile = path.join(stateDir, 'agent.log');
const agent = spawn(path.join(root, 'dist/bin/membrane-agent'),
  ['--state-dir', stateDir, '--socket', socket, '--bpffs-dir', bpffsDir, '--host-device', hostDevice],
  { stdio: ['ignore', fs.openSync(logFile, 'a'), fs.openSync(logFile, 'a')], env });

let cleaned = false;
function cleanup(): void {
  if (cleaned) return;
  cleaned = true;
  say('cleaning up');
  for (const p of pods) spawnSync('ip', ['netns', 'del', p], { stdio: 'ignore' });
  agent.kill('SIGTERM');
  spawnSync('ip', ['link', 'del', hostDevice], { stdio: 'ignore' });
  fs.rmSync(bpffsDir, { recursive: true, force: true });
  fs.rmSync(stateDir, { recursive: true, force: true });
  process.stdout.write('removed the pods, the agent, its host device, pins and state\n');
}
process.on('SIGINT', () => { cleanup(); process.exit(130); });
process.on('exit', cleanup);

async function main(): Promise<void> {
  const client = new AgentClient({ socketPath: socket });
  for (let i = 0; ; i++) {
    try { await client.healthz(); break; } catch {
      if (agent.exitCode !== null || i > 200) throw new Error(`agent did not start:\n${fs.readFileSync(logFile, 'utf8')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  cli('status');

  say('creating two pods (network namespaces) and networking them through the agent API');
  const eps = [];
  for (const p of pods) {
    execFileSync('ip', ['netns', 'add', p]);
    execFileSync('nsenter', [`--net=/var/run/netns/${p}`, 'ip', 'link', 'set', 'lo', 'up']);
    const t0 = process.hrtime.bigint();
    const ep = await client.createEndpoint({ containerId: p, netns: `/var/run/netns/${p}`, ifName: 'eth0', labels: { app: p.split('-')[1] } });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    process.stdout.write(`POST /v1/endpoints ${p}: ${ep.ips.map((i) => i.address).join(', ')} via ${ep.ips[0].gateway}, host side ${ep.hostIfName} (${ms.toFixed(1)} ms)\n`);
    eps.push(ep);
  }
  const ipB = eps[1].ips[0].address.split('/')[0];
  const ipA = eps[0].ips[0].address.split('/')[0];

  say('inside pod A');
  run('nsenter', [`--net=/var/run/netns/${pods[0]}`, 'ip', '-br', 'addr']);
  run('nsenter', [`--net=/var/run/netns/${pods[0]}`, 'ip', 'route']);

  say('pod A -> pod B, pod B -> pod A, pod A -> the node (its gateway)');
  run('nsenter', [`--net=/var/run/netns/${pods[0]}`, 'ping', '-c', '3', '-i', '0.2', ipB]);
  run('nsenter', [`--net=/var/run/netns/${pods[1]}`, 'ping', '-c', '3', '-i', '0.2', ipA]);
  run('nsenter', [`--net=/var/run/netns/${pods[0]}`, 'ping', '-c', '2', '-i', '0.2', eps[0].ips[0].gateway]);

  say('TCP: pod B serves, pod A connects (iperf3, 2 s)');
  const server = spawn('nsenter', [`--net=/var/run/netns/${pods[1]}`, 'iperf3', '-s', '-1', '-B', ipB], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 500));
  run('nsenter', [`--net=/var/run/netns/${pods[0]}`, 'iperf3', '-c', ipB, '-t', '2', '-f', 'g']);
  server.kill();

  say('the endpoints, as the agent sees them');
  cli('endpoint', 'list');
  cli('ipam', 'list');

  say('deleting the endpoints');
  for (const ep of eps) {
    const r = await client.deleteEndpoint(ep.containerId, ep.ifName);
    process.stdout.write(`DELETE ${ep.containerId}/eth0: ${JSON.stringify(r)}\n`);
  }
  cli('endpoint', 'list');
}

main().then(() => process.exit(0), (e) => { process.stderr.write(`demo failed: ${(e as Error).message}\n`); process.exit(1); });
