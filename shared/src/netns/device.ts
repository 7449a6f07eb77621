// A network device as an error message should name it: its name and the netns it was looked up in,
// not only its ifindex (ifindexes repeat across netns and say nothing to whoever reads the log). Asked
// of the calling thread's netns (the agent's main thread: its own netns, or a pod's inside withNetns),
// and only when a message needs it: resolving a netns name reads every entry of /run/netns.
import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';

const IF_NAMESIZE = 16;
let ifIndexToName: ((index: number, buf: Buffer) => unknown) | undefined;

/** The device's name in the calling thread's netns, or undefined when there is no such device. */
export function deviceName(ifindex: number): string | undefined {
  ifIndexToName ??= koffi.load('libc.so.6').func('void *if_indextoname(unsigned int ifindex, _Out_ uint8_t *ifname)');
  const buf = Buffer.alloc(IF_NAMESIZE);
  if (!Number.isInteger(ifindex) || ifindex <= 0 || !ifIndexToName(ifindex, buf)) return undefined;
  const end = buf.indexOf(0);
  return buf.toString('utf8', 0, end < 0 ? IF_NAMESIZE : end);
}

/** The calling thread's netns as `ip netns` names it ("mbn-1a2b"), "the node's" for the init process's,
 *  else by its nsfs inode ("net:[4026532]"). */
export function netnsLabel(): string {
  let own: fs.BigIntStats;
  try {
    own = fs.statSync('/proc/thread-self/ns/net', { bigint: true });
  } catch {
    return 'an unknown netns';
  }
  const same = (p: string) => {
    try {
      const st = fs.statSync(p, { bigint: true });
      return st.ino === own.ino && st.dev === own.dev;
    } catch {
      return false; // gone meanwhile, or not ours to read
    }
  };
  const inode = `net:[${own.ino}]`;
  if (same('/proc/1/ns/net')) return `the node's netns (${inode})`;
  let names: string[] = [];
  try {
    names = fs.readdirSync('/run/netns');
  } catch {
    /* no named netns */
  }
  const name = names.find((n) => same(path.join('/run/netns', n)));
  return name ? `netns ${name} (${inode})` : `netns ${inode}`;
}

/** "mbr1a2b3c (ifindex 12) in netns mbn-1a2b (net:[4026532])"; an ifindex with no device says so. */
export function describeDevice(ifindex: number): string {
  const name = deviceName(ifindex);
  return `${name ?? 'no device'} (ifindex ${ifindex}) in ${netnsLabel()}`;
}
