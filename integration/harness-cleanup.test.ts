// A test file that tap kills on timeout (SIGALRM, then SIGKILL), that gets ^C (SIGINT), SIGTERM or
// SIGHUP, that is SIGKILLed or that crashes must not leave its netns, links, pin dirs, state dirs or
// processes behind on a shared machine (integration/lib/cleanup.ts). A fixture creates them through
// the real harness (an agent with an endpoint included) and is killed here.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { REPO, sleep } from './lib/agent.ts';
import { alive, LEDGER_DIR } from './lib/cleanup.ts';
import { linkExists } from './lib/netns.ts';

interface Created {
  netns: string[];
  bpffsDir: string;
  stateDir: string;
  hostDevice: string;
  hostVeth: string;
  pids: number[];
  /** The fixture's PID (names its ledger). */
  pid: number;
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
      if (nl >= 0) resolve({ ...JSON.parse(out.slice(0, nl)), pid: child.pid });
    });
    exited.then((code) => reject(new Error(`fixture exited ${code} before reporting:\n${err}`)));
  });
  if (signal) child.kill(signal);
  const code = await exited;
  return { created, code };
}

async function assertNothingLeft(t: Test, c: Created, waitMs = 15_000) {
  // After a SIGKILL the guardian does the removing, a moment after the fixture died.
  // The kernel removes a deleted netns's veths asynchronously (its cleanup workqueue): poll for them too.
  // Every item below is polled (a loaded CI machine can take seconds); each is then asserted on its own.
  const gone = () =>
    !c.netns.some((n) => fs.existsSync(`/var/run/netns/${n}`)) &&
    !fs.existsSync(c.stateDir) &&
    !fs.existsSync(c.bpffsDir) &&
    !linkExists(c.hostDevice) &&
    !linkExists(c.hostVeth);
  for (const deadline = Date.now() + waitMs; !gone() && Date.now() < deadline; ) await sleep(100);
  for (const n of c.netns) t.notOk(fs.existsSync(`/var/run/netns/${n}`), `netns ${n} deleted`);
  t.notOk(linkExists(c.hostDevice), `host device ${c.hostDevice} deleted`);
  t.notOk(linkExists(c.hostVeth), `the endpoint's host veth ${c.hostVeth} is gone`);
  t.notOk(fs.existsSync(c.bpffsDir), `pin dir ${c.bpffsDir} removed`);
  t.notOk(fs.existsSync(c.stateDir), `state dir ${c.stateDir} removed`);
  // Killed processes go once init reaped them.
  const deadline = Date.now() + 15_000;
  while (c.pids.some(alive) && Date.now() < deadline) await sleep(50);
  for (const pid of c.pids) t.notOk(alive(pid), `process ${pid} killed`);
  const ledgers = fs.existsSync(LEDGER_DIR) ? fs.readdirSync(LEDGER_DIR) : [];
  t.notOk(
    ledgers.some((l) => l.startsWith(`${c.pid}-`)),
    'its ledger is gone',
  );
}

t.test('a file killed by SIGTERM removes what it created and exits 143', async (t) => {
  const { created, code } = await runAndKill('wait', 'SIGTERM');
  t.ok(created.netns.length === 2 && created.pids.every((p) => p > 0), 'the fixture created netns and processes');
  t.equal(code, 143, 'exit code 143 (128 + SIGTERM)');
  await assertNothingLeft(t, created);
});

t.test("a file killed by tap's timeout (SIGALRM) removes what it created and exits 142", async (t) => {
  const { created, code } = await runAndKill('wait', 'SIGALRM');
  t.equal(code, 142, 'exit code 142 (128 + SIGALRM)');
  await assertNothingLeft(t, created);
});

t.test('a file whose terminal goes (SIGHUP) removes what it created and exits 129', async (t) => {
  const { created, code } = await runAndKill('wait', 'SIGHUP');
  t.equal(code, 129, 'exit code 129 (128 + SIGHUP)');
  await assertNothingLeft(t, created);
});

t.test('a file killed by SIGKILL (no handler runs): its guardian removes what it created', async (t) => {
  const { created, code } = await runAndKill('wait', 'SIGKILL');
  t.equal(code, null, 'killed by the signal');
  await assertNothingLeft(t, created, 15_000);
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
