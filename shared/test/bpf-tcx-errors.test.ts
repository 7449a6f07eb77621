// An attach that fails names the device it failed on (its name and netns) and the hook, not only an
// ifindex (which repeats in every netns and means nothing to whoever reads the error): tcx links
// (shared/src/bpf/tcx.ts) and classic tc filters (shared/src/bpf/libbpf/tc.ts), provoked for real on
// veths of our own, one of them in a netns of our own (root + bpffs needed; skipped otherwise).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import t from 'tap';
import * as bpf from '../src/bpf/libbpf.ts';
import { attachTcx, detachTcx, listTcxPins, tcxPinPath } from '../src/bpf/tcx.ts';
import { openNetns, withNetns } from '../src/netns/index.ts';
import { requireBpf } from './lib/bpf-harness.ts';
import { foreignPassProgram } from './lib/foreign-tcx.ts';

requireBpf();

const tag = randomBytes(3).toString('hex');
const dev = `mbte${tag}`;
const nsName = `mbte-${tag}`;
const pinDirs = [`/sys/fs/bpf/mbt-tcxerr-${tag}-a`, `/sys/fs/bpf/mbt-tcxerr-${tag}-b`];
const prog = foreignPassProgram();
t.teardown(() => {
  for (const cmd of [
    ['link', 'del', dev],
    ['netns', 'del', nsName],
  ]) {
    try {
      execFileSync('ip', cmd, { stdio: 'ignore' });
    } catch {
      /* gone */
    }
  }
  for (const dir of pinDirs) {
    if (!fs.existsSync(dir)) continue;
    for (const h of listTcxPins(dir)) fs.rmSync(tcxPinPath(dir, h), { force: true }); // detaches the link
    fs.rmdirSync(dir);
  }
  prog.close();
});
for (const dir of pinDirs) fs.mkdirSync(dir);
execFileSync('ip', ['link', 'add', dev, 'type', 'veth', 'peer', 'name', `${dev}p`]);
execFileSync('ip', ['netns', 'add', nsName]);
execFileSync('ip', ['-n', nsName, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
const ifindex = Number(fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8'));
const inNs = Number(
  (JSON.parse(execFileSync('ip', ['-n', nsName, '-j', 'link', 'show', 'eth0'], { encoding: 'utf8' })) as { ifindex: number }[])[0]
    .ifindex,
);
const ns = openNetns(`/run/netns/${nsName}`);
t.teardown(() => ns.close());

/** The message of what fn throws ('' when it does not). */
function failure(fn: () => void): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  return '';
}

t.test('a tcx link the kernel refuses: the device by name, its netns and the hook', async (t) => {
  const [a, b] = pinDirs;
  attachTcx(a, { ifindex, direction: 'ingress' }, prog.fd);
  // One program twice on a hook is refused (EEXIST): here through a second pin dir, as a second agent would.
  t.match(
    failure(() => attachTcx(b, { ifindex, direction: 'ingress' }, prog.fd)),
    new RegExp(
      `^bpf_link_create tcx ingress hook of ${dev} \\(ifindex ${ifindex}\\) in [^:]*net:\\[\\d+\\]\\)?: .*\\(EEXIST\\)$`,
    ),
  );
  t.ok(detachTcx(a, { ifindex, direction: 'ingress' }), 'the first link detaches');
});

t.test("in another netns: that netns's name", async (t) => {
  const [a, b] = pinDirs;
  withNetns(ns, () => attachTcx(a, { ifindex: inNs, direction: 'egress' }, prog.fd));
  t.match(
    failure(() => withNetns(ns, () => attachTcx(b, { ifindex: inNs, direction: 'egress' }, prog.fd))),
    new RegExp(
      `^bpf_link_create tcx egress hook of eth0 \\(ifindex ${inNs}\\) in netns ${nsName} \\(net:\\[\\d+\\]\\): .*\\(EEXIST\\)$`,
    ),
  );
  t.ok(withNetns(ns, () => detachTcx(a, { ifindex: inNs, direction: 'egress' })));
});

t.test('a device that does not exist says so', async (t) => {
  t.match(
    failure(() => attachTcx(pinDirs[0], { ifindex: 0x7ffffff0, direction: 'ingress' }, prog.fd)),
    /^bpf_link_create tcx ingress hook of no device \(ifindex 2147483632\) in .*\(ENODEV\)$/,
  );
});

t.test('a classic tc filter the kernel refuses names the device and the hook too', async (t) => {
  // No clsact qdisc on the veth: the filter has nowhere to go.
  t.match(
    failure(() => bpf.tcAttach(ifindex, bpf.BPF_TC_EGRESS, prog.fd, 0x4d42, 1)),
    new RegExp(`^bpf_tc_attach tc egress hook of ${dev} \\(ifindex ${ifindex}\\) in .*: .*\\(E[A-Z]+\\)$`),
  );
});
