// What is wrong with the node's datapath as the agent sees it now: the host device (every network's
// gateway addresses; down, pods lose their gateway and the node) and the pinned maps (gone, e.g.
// bpffs unmounted, a restarted agent would start from nothing and the running programs would be
// orphaned). Endpoints' own attachments are checked per endpoint (endpoint/health.ts).
import fs from 'node:fs';
import path from 'node:path';
import type { Netlink } from '../netlink/index.ts';
import { hostDevicePeer } from '../endpoint/host-device.ts';

export function datapathProblems(host: Pick<Netlink, 'linkByName'>, hostDevice: string, pinDir: string): string[] {
  const problems: string[] = [];
  for (const name of [hostDevice, hostDevicePeer(hostDevice)]) {
    const link = host.linkByName(name);
    if (!link) problems.push(`host device ${name} is missing`);
    else if (!link.up) problems.push(`host device ${name} is down`);
  }
  // endpoints_cfg stands for every pin: they are made together at load.
  if (!fs.existsSync(path.join(pinDir, 'endpoints_cfg'))) problems.push(`pinned maps are gone from ${pinDir}`);
  return problems;
}
