// The test-subnet claims (integration/lib/subnets.ts) that keep two test files running at once off
// each other's addresses: a held claim is refused, a dead process's is taken over, and neither a
// claim being written nor one another process is taking over is taken. Claims in a directory of
// this test's own, so the suite's real claims are never touched.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { claimSubnet } from './lib/subnets.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'membrane-claims-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A pid no process has now (one that just exited). */
const deadPid = (): number => spawnSync('true').pid!;
const claim = (prefix: string) => {
  try {
    return claimSubnet(() => prefix, dir);
  } catch {
    return undefined;
  }
};

t.test('a live claim is refused; a dead claimer is taken over', async (t) => {
  fs.writeFileSync(path.join(dir, '10.1.1'), String(process.ppid));
  t.equal(claim('10.1.1'), undefined, "another live process's claim: refused");
  fs.writeFileSync(path.join(dir, '10.1.2'), String(deadPid()));
  t.equal(claim('10.1.2'), '10.1.2', "a dead process's claim: taken over");
  t.equal(fs.readFileSync(path.join(dir, '10.1.2'), 'utf8'), String(process.pid), 'now ours');
  t.equal(claim('10.1.3'), '10.1.3', 'a free one: claimed');
});

t.test('a claim being written (still empty) is not taken over; an old empty one is', async (t) => {
  fs.writeFileSync(path.join(dir, '10.2.1'), '');
  t.equal(claim('10.2.1'), undefined, 'a just created claim: its pid comes next, not stale');
  fs.writeFileSync(path.join(dir, '10.2.2'), '');
  const old = new Date(Date.now() - 60_000);
  fs.utimesSync(path.join(dir, '10.2.2'), old, old);
  t.equal(claim('10.2.2'), '10.2.2', 'empty for a minute: its claimer died before writing, taken over');
});

t.test('a dead claim another process is taking over is left to it', async (t) => {
  fs.writeFileSync(path.join(dir, '10.3.1'), String(deadPid()));
  fs.mkdirSync(path.join(dir, '10.3.1.takeover'));
  t.equal(claim('10.3.1'), undefined, 'not taken: the other one removes it and writes its own');
  fs.rmdirSync(path.join(dir, '10.3.1.takeover'));
  t.equal(claim('10.3.1'), '10.3.1', 'once it let go (here: without claiming), taken over');
  t.notOk(fs.existsSync(path.join(dir, '10.3.1.takeover')), 'and the takeover lock released');
});
