// Run inside a node's netns (nsenter): attaches the agent's pinned endpoint programs to DEVICE with
// pinned tcx links, as an ADD does before the agent is killed (what a crashed ADD leaves).
//   PIN_DIR DEVICE
import fs from 'node:fs';
import path from 'node:path';
import * as bpf from '../../shared/src/bpf/libbpf.ts';
import { PROGRAM_PINS } from '../../shared/src/bpf/layout.ts';
import { attachTcx } from '../../shared/src/bpf/tcx.ts';
import { openNetlink } from '../../shared/src/netlink/index.ts';

const [pinDir, dev] = process.argv.slice(2);
const host = openNetlink();
const link = host.linkByName(dev);
host.close();
if (!link) throw new Error(`no device ${dev} in this netns`);
for (const [direction, pin] of [
  ['ingress', PROGRAM_PINS.from_container],
  ['egress', PROGRAM_PINS.to_container],
] as const) {
  const prog = bpf.objGet(path.join(pinDir, pin));
  try {
    attachTcx(pinDir, { ifindex: link.index, direction }, prog);
  } finally {
    fs.closeSync(prog);
  }
}
