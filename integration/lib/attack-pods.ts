// The cast of the attack tests: an agent of our own with a dual-stack pool, pods in netns of our own
// (labels app=<name>), the frames they can craft (with their real MACs and addresses) and the
// agent's drop counters by reason. Everything is removed at teardown, also after a failure.
import t from 'tap';
import { startAgent, type StartAgentOptions, type TestAgent } from './agent.ts';
import { createNetns, type TestNetns } from './netns.ts';
import { randomId } from './agent.ts';
import { PolicyClient } from '../../shared/src/policy/client.ts';
import { dropReasonName } from '../../shared/src/flows/codes.ts';
import { eth, ETH_P, ipv4, ipv6, withChecksum, type Ipv4Opts } from '../../shared/src/bpf/packets.ts';
import type { Endpoint } from '../../shared/src/types.ts';

export interface Pod {
  name: string;
  ns: TestNetns;
  ep: Endpoint;
  ip4: string;
  ip6: string;
  /** The container's MAC and the host veth's (the gateway, by proxy ARP/NDP). */
  mac: string;
  gwMac: string;
}

export interface Cast {
  agent: TestAgent;
  pc: PolicyClient;
  pods: Record<string, Pod>;
  /** Packets the datapath dropped so far, by Hubble's reason name (INVALID_SOURCE_IP, ...). */
  drops(): Promise<Record<string, number>>;
  /** The counters once every reason in `least` grew by at least that much over `before`, or as they
   *  are after `ms` (the caller asserts): a sent frame reaches the datapath from the kernel's backlog,
   *  which a loaded machine runs late, so one read right after sending can miss it. */
  dropsReaching(before: Record<string, number>, least: Record<string, number>, ms?: number): Promise<Record<string, number>>;
}

export const reasonName = dropReasonName;

/** Starts the agent and the pods in t.before; everything goes in t.teardown. */
export function castOf(names: string[], opts: StartAgentOptions = {}): Cast {
  const cast = { pods: {} } as Cast;
  const nss: TestNetns[] = [];
  t.before(async () => {
    cast.agent = await startAgent({ ipv6: true, ...opts });
    cast.pc = new PolicyClient(cast.agent.client);
    for (const name of names) {
      const ns = createNetns('mba');
      nss.push(ns);
      const ep = await cast.agent.client.createEndpoint({
        containerId: `atk-${name}-${randomId()}`,
        netns: ns.path,
        ifName: 'eth0',
        labels: { app: name },
      });
      const ip = (f: 4 | 6) => ep.ips.find((x) => x.family === f)!.address.split('/')[0];
      cast.pods[name] = { name, ns, ep, ip4: ip(4), ip6: ip(6), mac: ep.mac, gwMac: ep.hostMac };
    }
  });
  t.teardown(async () => {
    await cast.agent?.cleanup();
    for (const ns of nss) ns.remove();
  });
  cast.drops = async () => (await cast.agent.client.request<{ drops: Record<string, number> }>('GET', '/v1/policy/status')).drops;
  cast.dropsReaching = async (before, least, ms = 15_000) => {
    let now = await cast.drops();
    const met = () => Object.entries(least).every(([r, n]) => (now[r] ?? 0) - (before[r] ?? 0) >= n);
    for (const end = Date.now() + ms; !met() && Date.now() < end; now = await cast.drops())
      await new Promise((r) => setTimeout(r, 100));
    return now;
  };
  return cast;
}

/** An IPv4 frame from `p`'s eth0 (its MAC unless `srcMac`), L4 checksum filled. */
export function frame4(
  p: Pod,
  o: Omit<Ipv4Opts, 'src'> & { src?: string; srcMac?: string },
  l4: Buffer,
  checksum = true,
): Buffer {
  const src = o.src ?? p.ip4;
  const body = checksum ? withChecksum(4, src, o.dst, o.proto, l4) : l4;
  return eth(p.gwMac, o.srcMac ?? p.mac, ETH_P.IPV4, ipv4({ ...o, src }, body));
}

/** An IPv6 frame from `p`'s eth0; `chain` (extension headers) goes between the header and L4. */
export function frame6(
  p: Pod,
  o: {
    src?: string;
    dst: string;
    next: number;
    hopLimit?: number;
    dstMac?: string;
    srcMac?: string;
    chain?: { first: number; bytes: Buffer };
  },
  l4: Buffer,
): Buffer {
  const src = o.src ?? p.ip6;
  const body = withChecksum(6, src, o.dst, o.next, l4);
  const payload = o.chain ? Buffer.concat([o.chain.bytes, body]) : body;
  return eth(
    o.dstMac ?? p.gwMac,
    o.srcMac ?? p.mac,
    ETH_P.IPV6,
    ipv6({ src, dst: o.dst, next: o.chain ? o.chain.first : o.next, hopLimit: o.hopLimit }, payload),
  );
}

/** The policy "<app>-closed": the pods labelled app=<app> accept no new connection (an empty ingress
 *  rule allows nothing); replies to their own flows still pass. */
export function closedIngress(app: string): string {
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${app}-closed}
spec:
  endpointSelector: {matchLabels: {app: ${app}}}
  ingress: [{}]
`;
}

/** Waits until `probe` finds what it looks for (a flow in the observer arrives within a drain period). */
export { pollFor as waitFor } from '../../shared/test/lib/poll.ts';
