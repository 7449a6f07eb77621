// Run inside a test's netns (nsenter): the steps of integration/routing-record.test.ts that must see
// that netns' links and tc hooks (libbpf's tc calls use the process's own netns).
//   attach PINDIR DEVICE [PIN]      our pinned from_tunnel (or the program pinned as PIN) on DEVICE's tc
//                                   ingress as a tcx link pinned in PINDIR, as ensureTunnelDevice does
//   single STATEDIR PINDIR          the single-node start's cleanup; prints what it removed as JSON
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { PROGRAM_PINS } from '../../shared/src/bpf/datapath.ts';
import { attachTcx } from '../../shared/src/bpf/tcx.ts';
import { openNetlink } from '../../shared/src/netlink/index.ts';
import { removeLeftClusterRouting } from '../../shared/src/routing/record.ts';

const [cmd, a, b, pin] = process.argv.slice(2);
const host = openNetlink();
if (cmd === 'attach') {
  const link = host.linkByName(b);
  if (!link) throw new Error(`no link ${b}`);
  const prog = bpf.objGet(path.join(a, pin ?? PROGRAM_PINS.from_tunnel));
  try {
    attachTcx(a, { ifindex: link.index, direction: 'ingress' }, prog);
  } finally {
    fs.closeSync(prog);
  }
} else if (cmd === 'single') {
  process.stdout.write(JSON.stringify(removeLeftClusterRouting(host, a, b)));
} else {
  throw new Error(`unknown step ${cmd}`);
}
host.close();
