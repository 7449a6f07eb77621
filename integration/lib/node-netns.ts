// A node of our own: a netns with a membrane-agent running inside it (nsenter --net), so whatever the
// agent does to "its" netns (host device, forwarding, routes) happens there and never on the machine.
// A "world" netns hangs off it on a veth with a 198.18.0.0/15 address (the node routes to it); the
// node has no default route, so nothing a test sends leaves the netns we made.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { randomId, startAgent, type StartAgentOptions, type TestAgent } from './agent.ts';
import { createNetns, type TestNetns } from './netns.ts';

export interface TestNode {
  ns: TestNetns;
  agent: TestAgent;
  /** Runs `ip ARGS` inside the node netns. */
  ip(args: string[]): string;
  /** A world netns routed through the node: its address, and a teardown. */
  world(): Promise<{ ns: TestNetns; ip: string }>;
  /** A link, an address and a default route towards an upstream netns of ours (198.18.x.1). */
  upstream(): Promise<{ ns: TestNetns; gateway: string }>;
  cleanup(): Promise<void>;
}

export async function startNode(opts: StartAgentOptions = {}): Promise<TestNode> {
  const ns = createNetns('mbn');
  const extra: TestNetns[] = [];
  const ip = (args: string[]) => execFileSync('nsenter', [`--net=${ns.path}`, 'ip', ...args], { encoding: 'utf8' });
  let agent: TestAgent;
  try {
    agent = await startAgent({ ...opts, netnsPath: ns.path });
  } catch (e) {
    ns.remove();
    throw e;
  }
  const r = () => crypto.randomInt(0, 512);
  return {
    ns,
    agent,
    ip,
    async world() {
      const w = createNetns('mbw');
      extra.push(w);
      const R = r();
      const addr = `198.${18 + (R >> 8)}.${R & 255}.10`;
      const link = `w${randomId(3)}`;
      ip(['link', 'add', link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', w.path]);
      ip(['link', 'set', link, 'up']);
      execFileSync('nsenter', [
        `--net=${ns.path}`,
        'sysctl',
        '-qw',
        `net.ipv4.conf.${link}.proxy_arp=1`,
        `net.ipv4.neigh.${link}.proxy_delay=0`,
      ]);
      ip(['route', 'add', `${addr}/32`, 'dev', link]);
      await w.exec('ip', ['addr', 'add', `${addr}/32`, 'dev', 'eth0']);
      await w.exec('ip', ['link', 'set', 'eth0', 'up']);
      await w.exec('ip', ['route', 'add', '10.0.0.0/8', 'dev', 'eth0']);
      return { ns: w, ip: addr };
    },
    async upstream() {
      const u = createNetns('mbu');
      extra.push(u);
      const R = r();
      const net = `198.${18 + (R >> 8)}.${R & 255}`;
      ip(['link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', u.path]);
      ip(['addr', 'add', `${net}.2/24`, 'dev', 'uplink0']);
      ip(['link', 'set', 'uplink0', 'up']);
      await u.exec('ip', ['addr', 'add', `${net}.1/24`, 'dev', 'eth0']);
      await u.exec('ip', ['link', 'set', 'eth0', 'up']);
      ip(['route', 'add', 'default', 'via', `${net}.1`]);
      return { ns: u, gateway: `${net}.1` };
    },
    async cleanup() {
      try {
        await agent.cleanup();
      } finally {
        for (const x of extra) x.remove();
        ns.remove();
      }
    },
  };
}
