// The three ways to connect two pods that the datapath benchmark compares.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';
import { randomId, randomSubnet24, startAgent, type TestAgent } from '../../integration/lib/agent.ts';
import { encodeTraceEvent, EventType } from '../../shared/src/flows/event.ts';

export interface Pods {
  name: string;
  a: TestNetns;
  b: TestNetns;
  ipA: string;
  ipB: string;
  agent?: TestAgent;
  cleanup(): Promise<void>;
}

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });

/** (a) plain veth + host /32 routes, no BPF: the same L3 model as Membrane, without the program. */
export async function plainVeth(): Promise<Pods> {
  const id = randomId(3);
  const base = randomSubnet24().replace(/0\/24$/, '');
  const gw = `${base}1`,
    dummy = `pgw${id}`;
  const a = createNetns('mbb'),
    b = createNetns('mbb');
  const links: string[] = [dummy];
  sh('ip', ['link', 'add', dummy, 'type', 'veth', 'peer', 'name', `${dummy}_n`]); // no dummy driver in every kernel
  sh('ip', ['link', 'set', `${dummy}_n`, 'up']);
  sh('ip', ['link', 'set', dummy, 'up']);
  sh('ip', ['addr', 'add', `${gw}/32`, 'dev', dummy]);
  sh('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
  const pods: [TestNetns, string][] = [
    [a, `${base}2`],
    [b, `${base}3`],
  ];
  for (const [i, [ns, ip]] of pods.entries()) {
    const host = `pv${id}${i}`;
    links.push(host);
    sh('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.path]);
    sh('ip', ['link', 'set', host, 'up']);
    sh('sysctl', ['-q', '-w', `net.ipv4.conf.${host}.proxy_arp=1`, `net.ipv4.neigh.${host}.proxy_delay=0`]);
    sh('ip', ['route', 'add', `${ip}/32`, 'dev', host, 'scope', 'link']);
    await ns.exec('ip', ['link', 'set', 'eth0', 'up']);
    await ns.exec('ip', ['addr', 'add', `${ip}/32`, 'dev', 'eth0']);
    await ns.exec('ip', ['route', 'add', `${gw}/32`, 'dev', 'eth0', 'scope', 'link']);
    await ns.exec('ip', ['route', 'add', 'default', 'via', gw, 'dev', 'eth0']);
  }
  return {
    name: 'plain veth + host routes',
    a,
    b,
    ipA: pods[0][1],
    ipB: pods[1][1],
    async cleanup() {
      a.remove();
      b.remove();
      for (const l of links) {
        try {
          sh('ip', ['link', 'del', l]);
        } catch {
          /* gone with its netns */
        }
      }
    },
  };
}

/** (b) the reference bridge plugin (Debian's containernetworking-plugins) with host-local IPAM. */
export async function referenceBridge(): Promise<Pods> {
  const id = randomId(3);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mbr-bench-bridge-'));
  const bridge = `bb${id}`;
  const conf = JSON.stringify({
    cniVersion: '1.0.0',
    name: `bench${id}`,
    type: 'bridge',
    bridge,
    isGateway: true,
    ipMasq: false,
    ipam: { type: 'host-local', subnet: randomSubnet24(), dataDir: path.join(dir, 'ipam'), routes: [{ dst: '0.0.0.0/0' }] },
  });
  const a = createNetns('mbb'),
    b = createNetns('mbb');
  const cni = (cmd: string, ns: TestNetns) =>
    execFileSync('/usr/lib/cni/bridge', [], {
      input: conf,
      encoding: 'utf8',
      env: {
        PATH: process.env.PATH,
        CNI_COMMAND: cmd,
        CNI_CONTAINERID: ns.name,
        CNI_NETNS: ns.path,
        CNI_IFNAME: 'eth0',
        CNI_PATH: '/usr/lib/cni',
      },
    });
  const ipOf = (out: string) => JSON.parse(out).ips[0].address.split('/')[0] as string;
  const ipA = ipOf(cni('ADD', a));
  const ipB = ipOf(cni('ADD', b));
  return {
    name: 'reference bridge plugin',
    a,
    b,
    ipA,
    ipB,
    async cleanup() {
      for (const ns of [a, b]) {
        try {
          cni('DEL', ns);
        } catch {
          /* best effort */
        }
        ns.remove();
      }
      try {
        sh('ip', ['link', 'del', bridge]);
      } catch {
        /* gone */
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** (c) Membrane endpoints created through the agent's API. `labeled`: the client pod gets bench=client
 *  and the server bench=server (what membranePolicy selects). */
export async function membrane(agent?: TestAgent, labeled = false): Promise<Pods> {
  const own = !agent;
  const ag = agent ?? (await startAgent());
  const a = createNetns('mbb'),
    b = createNetns('mbb');
  const labels = (role: string) => (labeled ? { labels: { bench: role } } : {});
  const ea = await ag.client.createEndpoint({
    containerId: `bench-${a.name}`,
    netns: a.path,
    ifName: 'eth0',
    ...labels('client'),
  });
  const eb = await ag.client.createEndpoint({
    containerId: `bench-${b.name}`,
    netns: b.path,
    ifName: 'eth0',
    ...labels('server'),
  });
  return {
    name: 'Membrane',
    a,
    b,
    ipA: ea.ips[0].address.split('/')[0],
    ipB: eb.ips[0].address.split('/')[0],
    agent: ag,
    async cleanup() {
      await ag.client.deleteEndpoint(ea.containerId, 'eth0').catch(() => undefined);
      await ag.client.deleteEndpoint(eb.containerId, 'eth0').catch(() => undefined);
      a.remove();
      b.remove();
      if (own) await ag.cleanup();
    },
  };
}

/** The i-th address of 198.18.0.0/15 (never the benchmark pods' addresses). */
export const fake = (i: number) => `198.${18 + ((i >> 16) & 1)}.${(i >> 8) & 255}.${i & 255}`;

/** N rules on the server pod's ingress (labels bench=server): N-1 that never match, the last admits the
 *  client (bench=client). As JSON (the agent reads JSON ~10x faster than YAML). */
export function membranePolicy(n: number): string {
  const ingress: object[] = [];
  for (let i = 1; i < n; i++)
    ingress.push({ fromCIDR: [`${fake(i)}/32`], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] });
  ingress.push({ fromEndpoints: [{ matchLabels: { bench: 'client' } }] });
  return JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: `bench-${n}` },
    spec: { endpointSelector: { matchLabels: { bench: 'server' } }, ingress },
  });
}

/** The same N rules as `parts` policies (bench-part-0 ...), one JSON array: how a cluster with many
 *  CiliumNetworkPolicies holds them. The last rule (in the last part) admits the client. `change`:
 *  part 0's first rule names this address instead (a one-rule change). */
export function membranePolicyParts(n: number, parts: number, change?: string): { all: string; part: (i: number) => string } {
  const per = Math.ceil(n / parts);
  const part = (p: number) => {
    const ingress: object[] = [];
    for (let i = p * per + 1; i <= Math.min(n, (p + 1) * per); i++) {
      if (i === n) ingress.push({ fromEndpoints: [{ matchLabels: { bench: 'client' } }] });
      else {
        const cidr = p === 0 && i === 1 && change ? change : fake(i);
        ingress.push({ fromCIDR: [`${cidr}/32`], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] });
      }
    }
    return {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: `bench-part-${p}` },
      spec: { endpointSelector: { matchLabels: { bench: 'server' } }, ingress },
    };
  };
  return {
    all: JSON.stringify(Array.from({ length: parts }, (_, p) => part(p))),
    part: (p) => JSON.stringify(part(p)),
  };
}

/** A realistic flow-event record for the synthetic producer: a new TCP connection from the pair's
 *  first pod to its second, seen at the second's hook (the flows benches' per-event cost). */
export function podPairFlowNew(eps: { id: number; hostIfIndex: number; identity: number }[], pods: Pods): Buffer {
  return encodeTraceEvent({
    type: EventType.FLOW_NEW,
    endpointId: eps[1].id,
    ifindex: eps[1].hostIfIndex,
    srcIdentity: eps[0].identity,
    dstIdentity: eps[1].identity,
    saddr: pods.ipA,
    daddr: pods.ipB,
    proto: 6,
    sport: 40000,
    dport: 8080,
    tcpFlags: 2,
    len: 60,
  });
}
