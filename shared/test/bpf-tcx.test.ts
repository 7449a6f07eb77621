// tcx attachments as pinned links (shared/src/bpf/tcx.ts): enforcement holds from a node's classic
// filter through the swap to tcx, across the agent's fds closing (a restart) and a program upgrade;
// detaching leaves no pin, and a pin whose device went is swept. The enforcing program: to_container
// on a veth end with no endpoint configured drops every frame leaving it (DROP_NO_CONFIG, fail closed),
// so a frame the peer receives is one that passed unenforced (root + bpffs needed; skipped otherwise).

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { loadDatapath, removePins, TC_HANDLE, TC_PRIORITY } from '../src/bpf/datapath.ts';
import * as bpf from '../src/bpf/libbpf.ts';
import { attachTcx, detachTcx, listTcxPins, sweepStaleTcx, tcxPinPath, tcxProgramId, type TcxHook } from '../src/bpf/tcx.ts';
import { requireBpf, ROOT as root } from './lib/bpf-harness.ts';

requireBpf();

const tag = randomBytes(3).toString('hex');
const dev = `mbtx${tag}`;
const peer = `${dev}p`;
const pinDir = `/sys/fs/bpf/mbt-tcx-${tag}`;
const objDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbt-tcx-'));
t.teardown(() => {
  try {
    execFileSync('ip', ['link', 'del', dev], { stdio: 'ignore' });
  } catch {
    /* gone */
  }
  if (fs.existsSync(pinDir)) {
    for (const h of listTcxPins(pinDir)) fs.rmSync(tcxPinPath(pinDir, h), { force: true });
    removePins(pinDir);
  }
  fs.rmSync(objDir, { recursive: true, force: true });
});
execFileSync('ip', ['link', 'add', dev, 'type', 'veth', 'peer', 'name', peer]);
execFileSync('ip', ['link', 'set', dev, 'up']);
execFileSync('ip', ['link', 'set', peer, 'up']);
const ifindex = Number(fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8'));
const hook: TcxHook = { ifindex, direction: 'egress' };

/** Frames the peer received of `n` raw frames sent out of `dev` (AF_PACKET passes the egress hooks). */
function delivered(n: number): number {
  const rx = () => Number(fs.readFileSync(`/sys/class/net/${peer}/statistics/rx_packets`, 'utf8'));
  const before = rx();
  // A frame dropped at egress fails its send with ENOBUFS: expected, so ignored.
  const frame = 'b"\\xff"*6+b"\\x02\\x00\\x00\\x00\\x00\\x01"+b"\\x88\\xb5"+b"membrane-tcx-test"*4';
  const py = [
    'import socket',
    'socket_ = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)',
    `socket_.bind(("${dev}", 0))`,
    `for _ in range(${n}):`,
    '    try:',
    `        socket_.send(${frame})`,
    '    except OSError:',
    '        pass',
  ].join('\n');
  execFileSync('python3', ['-c', py]);
  return rx() - before;
}

function load(objectPath = path.join(root, 'dist/bpf/endpoint.o')) {
  return loadDatapath({ objectPath, pinDir });
}

function toContainer(): number {
  return bpf.objGet(path.join(pinDir, 'prog_to_container'));
}

t.test('enforcement holds from classic tc through tcx, restart and upgrade; detach leaves no pin', (t) => {
  execFileSync('bash', [path.join(root, 'scripts/build-bpf.sh')], { stdio: 'ignore' });
  t.ok(delivered(5) >= 5, 'without a program the frames arrive (the test sees a pass)');

  let dp = load();
  let prog = toContainer();
  // A node of the previous version: our classic filter.
  bpf.tcHookCreate(ifindex);
  bpf.tcAttach(ifindex, bpf.BPF_TC_EGRESS, prog, TC_HANDLE, TC_PRIORITY);
  t.equal(delivered(5), 0, 'classic filter drops');

  attachTcx(pinDir, hook, prog);
  fs.closeSync(prog);
  t.equal(
    bpf.tcQuery(ifindex, bpf.BPF_TC_EGRESS, TC_HANDLE, TC_PRIORITY),
    undefined,
    'the classic filter is gone after the swap',
  );
  t.equal(tcxProgramId(pinDir, hook), dp.programIds.toContainer, 'the tcx link runs to_container');
  t.equal(delivered(5), 0, 'tcx drops');

  // Restart: every fd of the agent closed; the pinned link keeps the program attached.
  dp.close();
  t.equal(delivered(5), 0, 'still dropped with no agent running');
  dp = load();
  prog = toContainer();
  attachTcx(pinDir, hook, prog); // the restarted agent re-attaches: the live pin is updated in place
  fs.closeSync(prog);
  t.equal(listTcxPins(pinDir).length, 1, 'one pin for the hook');
  t.equal(delivered(5), 0, 'still dropped after the restart');
  dp.close();

  // Upgrade: another object, its program swapped into the same link.
  const upgraded = path.join(objDir, 'endpoint.o');
  fs.writeFileSync(upgraded, Buffer.concat([fs.readFileSync(path.join(root, 'dist/bpf/endpoint.o')), Buffer.alloc(1)]));
  dp = load(upgraded);
  const newId = dp.programIds.toContainer;
  prog = toContainer();
  attachTcx(pinDir, hook, prog);
  fs.closeSync(prog);
  t.equal(tcxProgramId(pinDir, hook), newId, 'the link runs the upgraded program');
  t.equal(delivered(5), 0, 'still dropped after the upgrade');

  // DEL: detached and unpinned.
  t.ok(detachTcx(pinDir, hook), 'detached');
  t.notOk(fs.existsSync(tcxPinPath(pinDir, hook)), 'no pinned link left');
  t.equal(detachTcx(pinDir, hook), false, 'a second DEL finds nothing (and succeeds)');
  t.ok(delivered(5) >= 5, 'frames pass again');
  dp.close();
  t.end();
});

t.test('a pin whose device went is stale: swept, never reused for a new device of that ifindex', (t) => {
  const dp = load();
  const prog = toContainer();
  attachTcx(pinDir, hook, prog);
  fs.closeSync(prog);
  t.ok(fs.existsSync(tcxPinPath(pinDir, hook)));
  execFileSync('ip', ['link', 'del', dev]);
  t.same(sweepStaleTcx(pinDir), [hook], 'the kernel detached the link with its device: its pin is swept');
  t.notOk(fs.existsSync(tcxPinPath(pinDir, hook)), 'no pin left');
  t.equal(tcxProgramId(pinDir, hook), undefined, 'nothing of ours on that ifindex');
  dp.close();
  t.end();
});
