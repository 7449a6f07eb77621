// Connection probes run inside a test netns with short timeouts (a dropped SYN would otherwise cost
// seconds per check): policy, flow and restart tests.
import { spawn } from 'node:child_process';

// The deadline's verdict waits one turn (setImmediate): a probe process that was not scheduled for a
// while (a loaded machine) first handles what arrived meanwhile, instead of calling an echo that
// is already there a timeout. With "handshake" it only asks whether the connection was made: a slow
// server cannot delay that (its kernel answers the SYN), a drop of the SYN or of its answer does.
// Once the handshake is through, the echo gets ECHO_MS: the connection got past the policy, and an
// echo server not scheduled for a second (a loaded machine) is not a drop. Every policy drop these
// probes look for drops the SYN, so their "timeout" still comes after timeoutMs.
const ECHO_MS = 10_000;
const TCP_PROBE = `
const net = require('net');
const [ip, port, ms, mode] = process.argv.slice(1);
const s = net.connect({ host: ip, port: Number(port) });
const done = (r) => { process.stdout.write(r); process.exit(0); };
let timer = setTimeout(() => setImmediate(() => {
  if (mode === 'handshake') done(s.connecting ? 'timeout' : 'connected');
  else if (s.connecting) done('timeout');
  else timer = setTimeout(() => setImmediate(() => done('timeout')), Math.max(0, ${ECHO_MS} - Number(ms)));
}), Number(ms));
s.on('connect', () => { if (mode === 'handshake') { clearTimeout(timer); s.destroy(); done('connected'); } else s.write('ping'); });
s.on('data', () => { clearTimeout(timer); s.destroy(); done('ok'); });
s.on('error', (e) => { clearTimeout(timer); done(e.code === 'ECONNREFUSED' ? 'refused' : 'error ' + e.code); });
`;

const UDP_PROBE = `
const s = require('dgram').createSocket(process.argv[1].includes(':') ? 'udp6' : 'udp4');
const [ip, port, ms] = process.argv.slice(1);
const done = (r) => { process.stdout.write(r); process.exit(0); };
const timer = setTimeout(() => setImmediate(() => done('timeout')), Number(ms));
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

/** One TCP connection with a request/echo: "ok", "timeout" (no handshake within timeoutMs, or no echo
 *  within ECHO_MS of the start), "refused" or "error CODE". */
export function probe(ns: { path: string }, ip: string, port: number, timeoutMs = 1000): Promise<string> {
  return runIn(ns.path, TCP_PROBE, [ip, String(port), String(timeoutMs)]);
}

/** One TCP handshake and nothing more: "connected", "timeout" (the SYN or its answer was dropped: a
 *  slow server does not delay a handshake), "refused" or "error CODE". What a test waiting for a
 *  policy's drop asks: a probe's "timeout" on a loaded machine can also be an echo not yet sent. */
export function handshake(ns: { path: string }, ip: string, port: number, timeoutMs = 1000): Promise<string> {
  return runIn(ns.path, TCP_PROBE, [ip, String(port), String(timeoutMs), 'handshake']);
}

/** One UDP datagram and its echo: "ok" or "timeout". */
export function udpProbe(ns: { path: string }, ip: string, port: number, timeoutMs = 1000): Promise<string> {
  return runIn(ns.path, UDP_PROBE, [ip, String(port), String(timeoutMs)]);
}
