// "The outside world" of a test: a netns of our own behind a host veth, holding addresses of
// 198.18.0.0/15 (the benchmarking range: never a real peer), each routed to it by a host /32 route;
// proxy ARP on the host side answers for them, so pods reach them through the host's routing like
// any address outside the node.
//
// Several test files build a world at once on this machine: the /24 is picked at random and claimed
// by adding its host routes; a route that already exists (another file's world holds that /24) gives
// the /24 back and another is tried, so two worlds never share an address.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { randomId } from './agent.ts';
import { ownLink } from './cleanup.ts';
import { createNetns, type TestNetns } from './netns.ts';

export interface TestWorld {
  ns: TestNetns;
  /** The host side of the veth. */
  link: string;
  /** The world's /24 without its last octet ("198.18.7"). */
  net: string;
  /** Every address of the world (`net` + each host octet asked for). */
  ips: string[];
  /** Deletes the routes, the link and the netns (each may already be gone). */
  remove(): void;
}

/** A world with the addresses `${net}.${h}` for each of `hosts`, up, with a route back to the node
 *  for `back` (default: a default route). */
export async function createWorld(hosts: number[], back = 'default'): Promise<TestWorld> {
  const link = `mbw${randomId(3)}`;
  const ns = createNetns('mbw');
  const releaseLink = ownLink(link);
  try {
    execFileSync('ip', ['link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.path]);
    execFileSync('ip', ['link', 'set', link, 'up']);
    execFileSync('sysctl', ['-qw', `net.ipv4.conf.${link}.proxy_arp=1`, `net.ipv4.neigh.${link}.proxy_delay=0`]);
    const net = claimRoutes(link, hosts);
    const ips = hosts.map((h) => `${net}.${h}`);
    for (const ip of ips) await ns.exec('ip', ['addr', 'add', `${ip}/32`, 'dev', 'eth0']);
    await ns.exec('ip', ['link', 'set', 'eth0', 'up']);
    await ns.exec('ip', ['route', 'add', back, 'dev', 'eth0']);
    return {
      ns,
      link,
      net,
      ips,
      remove() {
        for (const ip of ips) quiet(['route', 'del', `${ip}/32`, 'dev', link]);
        quiet(['link', 'del', link]);
        releaseLink();
        ns.remove();
      },
    };
  } catch (e) {
    quiet(['link', 'del', link]);
    releaseLink();
    ns.remove();
    throw e;
  }
}

/** Adds a host route for every address of a random free /24 via `link`; returns the /24. */
function claimRoutes(link: string, hosts: number[]): string {
  for (let attempt = 0; attempt < 16; attempt++) {
    const r = crypto.randomInt(0, 512);
    const net = `198.${18 + (r >> 8)}.${r & 255}`;
    const added: string[] = [];
    try {
      for (const h of hosts) {
        execFileSync('ip', ['route', 'add', `${net}.${h}/32`, 'dev', link], { stdio: ['ignore', 'ignore', 'pipe'] });
        added.push(`${net}.${h}/32`);
      }
      return net;
    } catch (e) {
      for (const dst of added) quiet(['route', 'del', dst, 'dev', link]);
      // Only "File exists" (another world's route) is worth another /24; anything else is a real failure.
      if (!/File exists/.test(String((e as { stderr?: Buffer }).stderr ?? ''))) throw e;
    }
  }
  throw new Error('createWorld: no free /24 in 198.18.0.0/15 after 16 tries');
}

function quiet(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
}
