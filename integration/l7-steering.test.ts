// The L7 proxy's socket lookup program (bpf/lib/proxy.h proxy_steer) sits on the whole network
// namespace the agent runs in, as a pinned link: it must be attached once however often the agent
// starts, follow the program an upgrade loads, and leave with the datapath's pins (removePins), so
// that no agent leaves a program behind in the node's every TCP lookup.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { LINK_PINS, loadDatapath, PROGRAM_PINS, removePins } from '../shared/src/bpf/datapath.ts';
import * as bpf from '../shared/src/bpf/libbpf.ts';
import { attachProxySteering } from '../shared/src/l7/datapath.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const objectPath = path.join(root, 'dist/bpf/endpoint.o');
const pinDir = `/sys/fs/bpf/mbt-steer-${randomBytes(4).toString('hex')}`;

function progIdOf(pin: string): number {
  const fd = bpf.objGet(pin);
  try {
    return bpf.progId(fd, pin);
  } finally {
    fs.closeSync(fd);
  }
}

/** Program ids of the sk_lookup links on this netns. */
function skLookupLinks(): number[] {
  const links = JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' }) || '[]') as {
    attach_type?: string;
    prog_id: number;
  }[];
  return links.filter((l) => l.attach_type === 'sk_lookup').map((l) => l.prog_id);
}

t.test('proxy_steer: one link per datapath, following the loaded program, gone with the pins', async (t) => {
  let dp = loadDatapath({ objectPath, pinDir });
  t.teardown(() => {
    dp.close();
    if (fs.existsSync(pinDir)) removePins(pinDir);
  });
  attachProxySteering(dp);
  const first = progIdOf(path.join(pinDir, PROGRAM_PINS.proxy_steer));
  t.ok(fs.existsSync(path.join(pinDir, LINK_PINS.proxy_steer)), 'the link is pinned next to the programs');
  t.equal(skLookupLinks().filter((id) => id === first).length, 1, 'the loaded program is attached to this netns once');
  attachProxySteering(dp);
  t.equal(skLookupLinks().filter((id) => id === first).length, 1, 'attaching again adds no second link');

  // An agent restart loads the object again (the same one reuses the pinned programs, a new one
  // replaces them): the pinned link runs the program pinned now, once.
  dp.close();
  dp = loadDatapath({ objectPath, pinDir });
  attachProxySteering(dp);
  const second = progIdOf(path.join(pinDir, PROGRAM_PINS.proxy_steer));
  const ids = skLookupLinks();
  t.equal(ids.filter((id) => id === second).length, 1, 'after a restart the link runs the pinned program, once');
  if (second !== first) t.notOk(ids.includes(first), 'and no longer the old one');

  dp.close();
  removePins(pinDir);
  t.notOk(skLookupLinks().includes(second), 'removePins detaches it: nothing of ours stays in the netns');
  dp = { close() {} } as unknown as typeof dp;
});
