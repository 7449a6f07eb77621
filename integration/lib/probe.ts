// Connection probes run inside a test netns with short timeouts (a dropped SYN would otherwise cost
// seconds per check): policy, flow and restart tests.
import { spawn } from 'node:child_process';

const TCP_PROBE = `
const net = require('net');
const [ip, port, ms] = process.argv.slice(1);
const s = net.connect({ host: ip, port: Number(port) });
const done = (r) => { process.stdout.write(r); process.exit(0); };
const timer = setTimeout(() => done('timeout'), Number(ms));
s.on('connect', () => s.write('ping'));
s.on('data', () => { clearTimeout(timer); s.destroy(); done('ok'); });
s.on('error', (e) => { clearTimeout(timer); done(e.code === 'ECONNREFUSED' ? 'refused' : 'error ' + e.code); });
`;

const UDP_PROBE = `
const s = require('dgram').createSocket(process.argv[1].includes(':') ? 'udp6' : 'udp4');
const [ip, port, ms] = process.argv.slice(1);
const done = (r) => { process.stdout.write(r); process.exit(0); };
const timer = setTimeout(() => done('timeout'), Number(ms));
s.on('message', () => { clearTimeout(timer); done('ok'); });
s.on('error', (e) => done('error ' + e.code));
s.send('ping', Number(port), ip);
`;

function runIn(nsPath: string, script: string, args: string[]): Promise<string> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn('nsenter', [`--net=${nsPath}`, process.execPath, '-e', script, ...args], {
    stdio: ['ignore', 'pipe', 'ignore'],
    env,
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  return new Promise((resolve) => child.once('exit', () => resolve(out.trim() || 'no answer')));
}

/** One TCP connection with a request/echo: "ok", "timeout" (dropped), "refused" or "error CODE". */
export function probe(ns: { path: string }, ip: string, port: number, timeoutMs = 1000): Promise<string> {
  return runIn(ns.path, TCP_PROBE, [ip, String(port), String(timeoutMs)]);
}

/** One UDP datagram and its echo: "ok" or "timeout". */
export function udpProbe(ns: { path: string }, ip: string, port: number, timeoutMs = 1000): Promise<string> {
  return runIn(ns.path, UDP_PROBE, [ip, String(port), String(timeoutMs)]);
}
