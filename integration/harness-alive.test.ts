// lib/cleanup.ts alive(pid), which tests use to wait for a process they killed to be gone: "gone"
// must mean its sockets are closed. /proc/PID/stat is the main thread's, which exits first; the other
// threads hold the process's files until the last one has exited. l7-restart once took a killed L7
// worker's zombie main thread for the worker being gone while its listener still accepted a SYN.
// Loopback only, no root needed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import t from 'tap';
import { alive } from './lib/cleanup.ts';
import { waitUntil } from '../shared/test/lib/poll.ts';

/** Whether a TCP connection to 127.0.0.1:port is accepted (else refused). */
const accepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });

const zombieStat = (pid: number) => {
  try {
    return /^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

/** Starts `argv` and resolves with it and the port it prints once listening. */
async function listener(argv: string[]) {
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', r));
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  await waitUntil('the listener to print its port', () => /^\d+\n/.test(out), 30_000);
  return { child, port: Number(out.trim()), exited };
}

// Its main thread leaves with pthread_exit; a second thread keeps the process and its listener.
const LEADER_EXITS = `
import ctypes, socket, threading, time
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
threading.Thread(target=lambda: time.sleep(3600)).start()
ctypes.CDLL(None).pthread_exit(None)
`;

t.test('a process whose main thread has exited, its other thread still running: alive', async (t) => {
  const { child, port, exited } = await listener(['python3', '-c', LEADER_EXITS]);
  t.teardown(() => child.kill('SIGKILL'));
  await waitUntil('its main thread to exit (Z in /proc/PID/stat)', () => zombieStat(child.pid!), 30_000);
  t.ok(await accepts(port), 'its listener still accepts a connection');
  t.ok(alive(child.pid!), 'so alive() says it runs');
  child.kill('SIGKILL');
  await waitUntil('alive() to say it is gone', () => !alive(child.pid!), 30_000);
  t.notOk(await accepts(port), 'once it says gone, the listener refuses');
  await exited;
});

// A killed Node process with a listener and busy threadpool threads, as an L7 worker is: its threads
// exit one by one, and each time alive() says gone, its listener must be closed already.
const NODE_LISTENER = `
const net = require('net'), crypto = require('crypto');
net.createServer(() => {}).listen(0, '127.0.0.1', function () { process.stdout.write(this.address().port + '\\n'); });
setInterval(() => { for (let k = 0; k < 8; k++) crypto.pbkdf2(String(k), 's', 20000, 32, 'sha256', () => {}); }, 5);
`;
const KILLS = 10;

t.test(`${KILLS} SIGKILLed Node processes with busy threads: once alive() says gone, nothing accepts`, async (t) => {
  const accepted: number[] = [];
  for (let i = 0; i < KILLS; i++) {
    const { child, port, exited } = await listener([process.execPath, '-e', NODE_LISTENER]);
    child.kill('SIGKILL');
    // Checked in a tight loop (no timer between): the first moment it says gone is the one that counts.
    while (alive(child.pid!)) await new Promise((r) => setImmediate(r));
    if (await accepts(port)) accepted.push(i);
    await exited;
  }
  t.same(accepted, [], `no listener accepted a connection after alive() said its process was gone (${KILLS} kills)`);
});
