// The agent's state-dir lock: processes that start at the same moment, exactly one wins; a SIGKILLed
// owner leaves no stale lock behind.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { acquirePidLock } from '../src/agent/pidlock.ts';

const PIDLOCK = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/agent/pidlock.ts');

/** A process that waits until `at` (ms since epoch), tries the lock, says "won" or "lost: why", and holds it. */
function contender(file: string, at: number) {
  const script = `import { acquirePidLock } from ${JSON.stringify(PIDLOCK)};
while (Date.now() < ${at}) {}
try { acquirePidLock(${JSON.stringify(file)}); console.log('won'); setTimeout(() => {}, 60000); }
catch (e) { console.log('lost: ' + e.message); }`;
  const env = { ...process.env };
  delete env.NODE_EXTRA_CA_CERTS;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env,
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const said = new Promise<string>((resolve) => {
    const iv = setInterval(() => {
      if (out.includes('\n')) {
        clearInterval(iv);
        resolve(out.trim());
      }
    }, 10);
    child.once('exit', () => {
      clearInterval(iv);
      resolve(out.trim());
    });
  });
  return { child, said };
}

t.test('contenders that start at once: exactly one holds the lock', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-pidlock-'));
  const file = path.join(dir, 'agent.pid');
  const all: ReturnType<typeof contender>[] = [];
  t.teardown(() => {
    for (const c of all) c.child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (let round = 0; round < 3; round++) {
    const at = Date.now() + 3000;
    const cs = Array.from({ length: 4 }, () => contender(file, at));
    all.push(...cs);
    const said = await Promise.all(cs.map((c) => c.said));
    const winners = cs.filter((_, i) => said[i] === 'won');
    t.equal(winners.length, 1, `round ${round}: one winner of ${cs.length} (${said.join(' | ')})`);
    t.ok(
      said
        .filter((s) => s !== 'won')
        .every((s) => /another membrane-agent \(pid \d+\) already uses this state dir/.test(s) || /\(starting\)/.test(s)),
      'the others name the owner',
    );
    t.equal(fs.readFileSync(file, 'utf8').trim(), String(winners[0]?.child.pid), 'the file names the winner');
    // SIGKILL: no chance to clean up, yet the next round's contenders are not blocked by a stale lock.
    winners[0]?.child.kill('SIGKILL');
    await new Promise((r) => winners[0]?.child.once('exit', r));
  }
});

t.test('in one process: release lets the next holder in; a second acquire is refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-pidlock-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'agent.pid');
  const a = acquirePidLock(file);
  t.throws(
    () => acquirePidLock(file),
    /already uses this state dir/,
    'flock is per open file: the same process cannot take it twice either',
  );
  a.release();
  a.release();
  const b = acquirePidLock(file);
  t.equal(fs.readFileSync(file, 'utf8').trim(), String(process.pid));
  b.release();
});
