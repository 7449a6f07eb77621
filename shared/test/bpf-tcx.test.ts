// tcx attachments as pinned links (shared/src/bpf/tcx.ts): enforcement holds from a node's classic
// filter through the swap to tcx, across the agent's fds closing (a restart) and a program upgrade;
// detaching leaves no pin, and a pin whose device went is swept. The enforcing program: to_container
// on a veth end with no endpoint configured drops every frame leaving it (DROP_NO_CONFIG, fail closed),
// so a frame the peer receives is one that passed unenforced (root + bpffs needed; skipped otherwise).
// Our links go to the head of the chain: another tool's passing program attached earlier runs after
// ours; one inserted ahead later is reported (tcxAhead, tcxHooksBehind).

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { loadDatapath, removePins, TC_HANDLE, TC_PRIORITY } from '../src/bpf/datapath.ts';
import * as bpf from '../src/bpf/libbpf.ts';
import {
  attachTcx,
  detachTcx,
  listTcxPins,
  sweepStaleTcx,
  tcxAhead,
  tcxHooksBehind,
  tcxPinPath,
  tcxProgramId,
  type TcxHook,
} from '../src/bpf/tcx.ts';
import { requireBpf, ROOT as root } from './lib/bpf-harness.ts';
import { foreignPassProgram, linkForeign } from './lib/foreign-tcx.ts';

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
function delivered(n: number, out = dev): number {
  const rx = () => Number(fs.readFileSync(`/sys/class/net/${out}p/statistics/rx_packets`, 'utf8'));
  const before = rx();
  // A frame dropped at egress fails its send with ENOBUFS: expected, so ignored.
  const frame = 'b"\\xff"*6+b"\\x02\\x00\\x00\\x00\\x00\\x01"+b"\\x88\\xb5"+b"membrane-tcx-test"*4';
  const py = [
    'import socket',
    'socket_ = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)',
    `socket_.bind(("${out}", 0))`,
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

t.test("another tool's passing program attached first does not get packets past ours", (t) => {
  const fdev = `mbtf${tag}`;
  execFileSync('ip', ['link', 'add', fdev, 'type', 'veth', 'peer', 'name', `${fdev}p`]);
  t.teardown(() => {
    try {
      execFileSync('ip', ['link', 'del', fdev], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  });
  execFileSync('ip', ['link', 'set', fdev, 'up']);
  execFileSync('ip', ['link', 'set', `${fdev}p`, 'up']);
  const fHook: TcxHook = { ifindex: Number(fs.readFileSync(`/sys/class/net/${fdev}/ifindex`, 'utf8')), direction: 'egress' };
  const send = (n: number) => delivered(n, fdev);

  // Another tool was there first: its link passes every frame.
  const foreign = foreignPassProgram();
  const foreignLink = linkForeign(foreign, fHook.ifindex, 'egress');
  t.teardown(() => fs.closeSync(foreignLink));
  t.ok(send(5) >= 5, "the other tool's program passes the frames");

  let dp = load();
  let prog = toContainer();
  attachTcx(pinDir, fHook, prog);
  fs.closeSync(prog);
  t.same(
    bpf.tcxProgramIds(fHook.ifindex, bpf.BPF_TCX_EGRESS, 'order'),
    [dp.programIds.toContainer, foreign.id],
    'ours runs first, the other tool after it',
  );
  t.equal(send(5), 0, 'ours drops: the passing program after it never decides');

  // Restart: fds closed, the pin re-attached in place (the position is the link's: kept).
  dp.close();
  t.equal(send(5), 0, 'still dropped with no agent running');
  dp = load();
  prog = toContainer();
  attachTcx(pinDir, fHook, prog);
  fs.closeSync(prog);
  t.same(tcxAhead(pinDir, fHook), [], 'still first after the restart');
  t.equal(send(5), 0, 'still dropped after the restart');

  // A root tool inserting itself ahead later cannot be prevented: it is reported. The same program
  // twice on one hook is refused, which is why we do not move back to the head (bpf/tcx.ts).
  t.throws(() => linkForeign(foreign, fHook.ifindex, 'egress', true), { code: 'EEXIST' });
  const later = foreignPassProgram();
  const laterLink = linkForeign(later, fHook.ifindex, 'egress', true);
  t.teardown(() => fs.closeSync(laterLink));
  t.same(tcxAhead(pinDir, fHook), [later.id], 'the program ahead of ours is named');
  t.same(tcxHooksBehind(pinDir), [{ hook: fHook, ahead: [later.id] }], 'and counted for the metric');
  t.ok(send(5) >= 5, 'it does pass frames past ours: what the report is for');

  t.ok(detachTcx(pinDir, fHook));
  dp.close();
  foreign.close();
  later.close();
  t.end();
});

t.test("from_underlay hands the node's own traffic on to the next program (TCX_NEXT)", (t) => {
  const udev = `mbtu${tag}`;
  execFileSync('ip', ['link', 'add', udev, 'type', 'veth', 'peer', 'name', `${udev}p`]);
  t.teardown(() => {
    try {
      execFileSync('ip', ['link', 'del', udev], { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  });
  execFileSync('ip', ['link', 'set', udev, 'up']);
  execFileSync('ip', ['link', 'set', `${udev}p`, 'up']);
  // The program does not look at the direction: on egress the peer's counter shows what went through.
  const uHook: TcxHook = { ifindex: Number(fs.readFileSync(`/sys/class/net/${udev}/ifindex`, 'utf8')), direction: 'egress' };
  const drop = foreignPassProgram('drop');
  const dropLink = linkForeign(drop, uHook.ifindex, 'egress');
  t.teardown(() => fs.closeSync(dropLink));
  t.equal(delivered(5, udev), 0, "the other tool's program drops every frame");

  const dp = load();
  const prog = bpf.objGet(path.join(pinDir, 'prog_from_underlay'));
  attachTcx(pinDir, uHook, prog);
  fs.closeSync(prog);
  t.same(tcxAhead(pinDir, uHook), [], 'ours first');
  t.equal(delivered(5, udev), 0, 'frames for no pod of ours reach the program after ours (which drops them)');
  t.ok(detachTcx(pinDir, uHook));
  dp.close();
  drop.close();
  t.end();
});
