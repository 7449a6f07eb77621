// A test file that tap kills on timeout (SIGTERM), that gets ^C (SIGINT) or that crashes must not
// leave its netns, pin dirs, state dirs or processes behind on a shared machine
// (integration/lib/cleanup.ts). A fixture creates them through the real harness and is killed here.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { REPO, sleep } from './lib/agent.ts';
import { alive } from './lib/cleanup.ts';

interface Created {
  netns: string[];
  bpffsDir: string;
  stateDir: string;
  hostDevice: string;
  pids: number[];
}

const FIXTURE = path.join(REPO, 'integration/lib/killed-harness.ts');

async function runAndKill(mode: 'wait' | 'crash', signal?: NodeJS.Signals) {
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, mode], {
    cwd: REPO,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const created = await new Promise<Created>((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
    });
    exited.then((code) => reject(new Error(`fixture exited ${code} before reporting:\n${err}`)));
  });
  if (signal) child.kill(signal);
  const code = await exited;
  return { created, code };
}

async function assertNothingLeft(t: Test, c: Created) {
  for (const n of c.netns) t.notOk(fs.existsSync(`/var/run/netns/${n}`), `netns ${n} deleted`);
  t.notOk(fs.existsSync(c.bpffsDir), `pin dir ${c.bpffsDir} removed`);
  t.notOk(fs.existsSync(c.stateDir), `state dir ${c.stateDir} removed`);
  // Killed processes go once init reaped them.
  const deadline = Date.now() + 5000;
  while (c.pids.some(alive) && Date.now() < deadline) await sleep(50);
  for (const pid of c.pids) t.notOk(alive(pid), `process ${pid} killed`);
}

t.test('a file killed by SIGTERM (tap timeout) removes what it created and exits 143', async (t) => {
  const { created, code } = await runAndKill('wait', 'SIGTERM');
  t.ok(created.netns.length === 2 && created.pids.every((p) => p > 0), 'the fixture created netns and processes');
  t.equal(code, 143, 'exit code 143 (128 + SIGTERM)');
  await assertNothingLeft(t, created);
});

t.test('a file interrupted by SIGINT removes what it created and exits 130', async (t) => {
  const { created, code } = await runAndKill('wait', 'SIGINT');
  t.equal(code, 130, 'exit code 130 (128 + SIGINT)');
  await assertNothingLeft(t, created);
});

t.test('a file that crashes (uncaught exception) removes what it created', async (t) => {
  const { created, code } = await runAndKill('crash');
  t.equal(code, 1, 'exit code 1 (uncaught exception)');
  await assertNothingLeft(t, created);
});
