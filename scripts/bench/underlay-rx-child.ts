// Run inside a node's netns (nsenter; tcx links are made from the device's netns): BPFFS_DIR on|off.
// on: the agent's pinned from_underlay on eth0's ingress, as the agent attaches it (bpf/tcx.ts);
// off: removed (its tcx link, or an earlier version's classic filter), so the stack forwards instead.
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { PROGRAM_PINS, TC_HANDLE, TC_PRIORITY } from '../../shared/src/bpf/datapath.ts';
import { attachTcx, detachTcx } from '../../shared/src/bpf/tcx.ts';
import { openNetlink } from '../../shared/src/netlink/index.ts';

const [bpffsDir, state] = process.argv.slice(2);
const host = openNetlink();
const link = host.linkByName('eth0');
host.close();
if (!link) throw new Error('no eth0 in this netns');
const hook = { ifindex: link.index, direction: 'ingress' } as const;
if (state === 'on') {
  const prog = bpf.objGet(path.join(bpffsDir, PROGRAM_PINS.from_underlay));
  try {
    attachTcx(bpffsDir, hook, prog);
  } finally {
    fs.closeSync(prog);
  }
} else {
  detachTcx(bpffsDir, hook);
  bpf.tcDetach(link.index, bpf.BPF_TC_INGRESS, TC_HANDLE, TC_PRIORITY);
}
