// An agent restarted with another --bpffs-dir (a changed configuration, an install elsewhere) while the
// old dir's pinned tcx links stay: each dir's link holds its own program and maps, and a tcx chain runs
// in order until a program returns anything but TCX_NEXT. The restarted agent's link must decide, not
// the old one, whose maps nobody updates any more (a policy or endpoint change made since would not be
// enforced). Real frames through a veth: the old dir's to_container passes them (the endpoint is
// configured there), the new dir's drops them (not configured: DROP_NO_CONFIG); root + bpffs needed.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { loadDatapath, removePins } from '../src/bpf/datapath.ts';
import * as bpf from '../src/bpf/libbpf.ts';
import { attachTcx, listTcxPins, tcxPinPath } from '../src/bpf/tcx.ts';
import { eth, ETH_P, ipv4, PROTO, udp } from '../src/bpf/packets.ts';
import { requireBpf, ROOT } from './lib/bpf-harness.ts';

requireBpf();

const tag = randomBytes(3).toString('hex');
const dev = `mbmd${tag}`;
const peer = `${dev}p`;
const dirs = { old: `/sys/fs/bpf/mbt-md-old-${tag}`, now: `/sys/fs/bpf/mbt-md-new-${tag}` };
t.teardown(() => {
  try {
    execFileSync('ip', ['link', 'del', dev], { stdio: 'ignore' });
  } catch {
    /* gone */
  }
  for (const d of Object.values(dirs)) {
    if (!fs.existsSync(d)) continue;
    for (const h of listTcxPins(d)) fs.rmSync(tcxPinPath(d, h), { force: true });
    removePins(d);
  }
});
execFileSync('ip', ['link', 'add', dev, 'type', 'veth', 'peer', 'name', peer]);
// No IPv6 on the pair: its own router solicitations and MLD reports would count as frames too.
for (const d of [dev, peer]) execFileSync('sysctl', ['-qw', `net.ipv6.conf.${d}.disable_ipv6=1`]);
for (const d of [dev, peer]) execFileSync('ip', ['link', 'set', d, 'up']);
const ifindex = Number(fs.readFileSync(`/sys/class/net/${dev}/ifindex`, 'utf8'));
const mac = (d: string) => fs.readFileSync(`/sys/class/net/${d}/address`, 'utf8').trim();
const frame = eth(
  mac(peer),
  mac(dev),
  ETH_P.IPV4,
  ipv4({ src: '198.18.7.1', dst: '10.250.7.2', proto: PROTO.UDP }, udp(4000, 5000)),
);

/** Frames the peer received of `n` sent out of `dev` (AF_PACKET passes the egress hook). */
function delivered(n: number): number {
  const rx = () => Number(fs.readFileSync(`/sys/class/net/${peer}/statistics/rx_packets`, 'utf8'));
  const before = rx();
  const py = [
    'import socket',
    's = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)',
    `s.bind(("${dev}", 0))`,
    `for _ in range(${n}):`,
    '    try:',
    `        s.send(bytes.fromhex("${frame.toString('hex')}"))`,
    '    except OSError:',
    '        pass',
  ].join('\n');
  execFileSync('python3', ['-c', py]);
  return rx() - before;
}

function linkToContainer(dir: string): void {
  const prog = bpf.objGet(path.join(dir, 'prog_to_container'));
  try {
    attachTcx(dir, { ifindex, direction: 'egress' }, prog);
  } finally {
    fs.closeSync(prog);
  }
}

t.test("after a move of the bpffs dir, the new dir's link decides, not the old one's", (t) => {
  const objectPath = path.join(ROOT, 'dist/bpf/endpoint.o');
  const old = loadDatapath({ objectPath, pinDir: dirs.old });
  old.upsertEndpoint({
    hostIfindex: ifindex,
    endpointId: 77,
    identity: 5000,
    flags: 0,
    hostMac: mac(dev),
    containerMac: mac(peer),
    ips: ['10.250.7.2'],
  });
  linkToContainer(dirs.old);
  old.close();
  t.ok(delivered(5) >= 5, 'the old agent passes them (its endpoint, no policy)');

  const now = loadDatapath({ objectPath, pinDir: dirs.now });
  linkToContainer(dirs.now);
  t.equal(
    bpf.tcxProgramIds(ifindex, bpf.BPF_TCX_EGRESS, dev)[0],
    now.programIds.toContainer,
    "the restarted agent's program runs first on the hook",
  );
  t.equal(delivered(5), 0, 'its verdict holds (it knows no such endpoint: dropped)');
  now.close();
  t.end();
});
