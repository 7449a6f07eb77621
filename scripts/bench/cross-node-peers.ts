// bench:cross-node's peers (cross-node.ts measures them against Membrane in one interleaved run): two
// plain node netns on an underlay bridge of our own (198.18.0.0/15) and the pods between them, wired
//   (a) as plain kernel VXLAN: an iproute2 vxlan device per node, static route, neighbour and FDB
//       entries, pods on veth with host routes, no BPF;
//   (b) Flannel's way: kernel vxlan (flannel.1, static neighbour + FDB as flanneld writes them) and a
//       bridge (cni0) the pods hang on;
//   (e) with plain routing, no tunnel (routes via the other node's address): the ceiling.
import { execFileSync } from 'node:child_process';
import { randomId } from '../../integration/lib/agent.ts';
import { randomUnderlay } from '../../integration/lib/cluster.ts';
import { createNetns, type TestNetns } from '../../integration/lib/netns.ts';

/** Two pods for one measurement: the client (a) and the server (b) at ipB. */
export interface PodPair {
  a: TestNetns;
  b: TestNetns;
  ipB: string;
  /** Membrane's: the tc programs attached on both nodes (their run time is reported, bpf-stats.ts). */
  programs?: number[];
  /** The plain peers': the client's and the server's node netns paths (device-parity.ts). */
  nodeNs?: [string, string];
  cleanup(): Promise<void>;
}
export interface Topology {
  name: string;
  pods(): Promise<PodPair>;
  close(): Promise<void>;
}

/** Two pods as a pair for one measurement, both removed by its cleanup. */
function pair(a: { ns: TestNetns }, b: { ns: TestNetns; ip: string }, nodes: [PlainNode, PlainNode]): PodPair {
  return {
    a: a.ns,
    b: b.ns,
    ipB: b.ip,
    nodeNs: [nodes[0].ns.path, nodes[1].ns.path],
    cleanup: async () => {
      a.ns.remove();
      b.ns.remove();
    },
  };
}

const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
const inNs = (ns: TestNetns, cmd: string, args: string[]) => sh('nsenter', [`--net=${ns.path}`, cmd, ...args]);

// ---- the plain peers: two node netns on an underlay bridge ------------------------------------------

interface PlainNode {
  ns: TestNetns;
  ip: string;
  podBase: string;
  index: number;
}

/** Two nodes on an underlay bridge, pod CIDRs 10.x.<1|2>.0/24, forwarding on. */
function twoNodes(): { nodes: [PlainNode, PlainNode]; close(): void } {
  const { prefix } = randomUnderlay();
  const pod = `10.${64 + Math.floor(Math.random() * 128)}`;
  const underlay = createNetns('mbbu');
  const all = [underlay];
  inNs(underlay, 'ip', ['link', 'add', 'br0', 'type', 'bridge']);
  inNs(underlay, 'ip', ['link', 'set', 'br0', 'up']);
  const nodes = [1, 2].map((index) => {
    const ns = createNetns('mbbn');
    all.push(ns);
    const ip = `${prefix}.${10 + index}`;
    inNs(underlay, 'ip', ['link', 'add', `n${index}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.name]);
    inNs(underlay, 'ip', ['link', 'set', `n${index}`, 'master', 'br0', 'up']);
    inNs(ns, 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    inNs(ns, 'ip', ['link', 'set', 'eth0', 'up']);
    inNs(ns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
    return { ns, ip, podBase: `${pod}.${index}`, index };
  }) as [PlainNode, PlainNode];
  return {
    nodes,
    close: () => {
      for (const ns of all) ns.remove();
    },
  };
}

/** A pod on a node the plain way: veth, /32 route to it, proxy ARP for its gateway. */
function plainPod(node: PlainNode, mtu: number, host: number): { ns: TestNetns; ip: string } {
  const ns = createNetns('mbbp');
  const ip = `${node.podBase}.${host}`,
    gw = `${node.podBase}.1`,
    veth = `p${randomId(3)}`;
  inNs(node.ns, 'ip', ['link', 'add', veth, 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.name]);
  inNs(node.ns, 'ip', ['link', 'set', veth, 'up']);
  inNs(node.ns, 'sysctl', ['-q', '-w', `net.ipv4.conf.${veth}.proxy_arp=1`, `net.ipv4.neigh.${veth}.proxy_delay=0`]);
  inNs(node.ns, 'ip', ['route', 'add', `${ip}/32`, 'dev', veth, 'scope', 'link']);
  inNs(ns, 'ip', ['link', 'set', 'eth0', 'mtu', String(mtu), 'up']);
  inNs(ns, 'ip', ['addr', 'add', `${ip}/32`, 'dev', 'eth0']);
  inNs(ns, 'ip', ['route', 'add', `${gw}/32`, 'dev', 'eth0', 'scope', 'link']);
  inNs(ns, 'ip', ['route', 'add', 'default', 'via', gw, 'dev', 'eth0']);
  return { ns, ip };
}

/** Pod pairs on two plain nodes: the gateway address on a veth stub, pods routed /32 (a, e). */
function plainPods(nodes: [PlainNode, PlainNode], mtu: number): () => Promise<PodPair> {
  for (const n of nodes) {
    inNs(n.ns, 'ip', ['link', 'add', 'gw0', 'type', 'veth', 'peer', 'name', 'gw0_n']); // no dummy driver everywhere
    inNs(n.ns, 'ip', ['link', 'set', 'gw0_n', 'up']);
    inNs(n.ns, 'ip', ['link', 'set', 'gw0', 'up']);
    inNs(n.ns, 'ip', ['addr', 'add', `${n.podBase}.1/32`, 'dev', 'gw0']);
  }
  let host = 2;
  return async () => {
    const a = plainPod(nodes[0], mtu, host),
      b = plainPod(nodes[1], mtu, host);
    host = host >= 250 ? 2 : host + 1;
    return pair(a, b, nodes);
  };
}

/** The other node's VXLAN endpoint the way flanneld programs it: route via its device address (onlink),
 *  a permanent neighbour entry for that address and an FDB entry for its MAC. */
function staticVxlanPeer(local: PlainNode, dev: string, remote: PlainNode, remoteDevIp: string, remoteMac: string): void {
  inNs(local.ns, 'ip', ['route', 'add', `${remote.podBase}.0/24`, 'via', remoteDevIp, 'dev', dev, 'onlink']);
  inNs(local.ns, 'ip', ['neigh', 'add', remoteDevIp, 'lladdr', remoteMac, 'dev', dev, 'nud', 'permanent']);
  inNs(local.ns, 'bridge', ['fdb', 'append', remoteMac, 'dev', dev, 'dst', remote.ip]);
}

function vxlanDevice(n: PlainNode, name: string): string {
  const mac = `02:00:00:00:0${n.index}:01`;
  inNs(n.ns, 'ip', [
    'link',
    'add',
    name,
    'address',
    mac,
    'type',
    'vxlan',
    'id',
    '1',
    'local',
    n.ip,
    'dev',
    'eth0',
    'dstport',
    '8472',
    'nolearning',
    // The README's fairness list says both VXLAN kinds send zero outer UDP checksums, as Membrane's
    // (RFC 7348 over IPv4); without this the kernel's default computes one for the plain peer.
    'noudpcsum',
  ]);
  inNs(n.ns, 'ip', ['addr', 'add', `${n.podBase}.0/32`, 'dev', name]);
  inNs(n.ns, 'ip', ['link', 'set', name, 'up']);
  return mac;
}

/** (a) kernel VXLAN between the nodes, pods routed like Membrane's (veth + /32 routes). */
export async function plainVxlan(): Promise<Topology> {
  const t = twoNodes();
  const [n1, n2] = t.nodes;
  const macs = [vxlanDevice(n1, 'vx0'), vxlanDevice(n2, 'vx0')];
  staticVxlanPeer(n1, 'vx0', n2, `${n2.podBase}.0`, macs[1]);
  staticVxlanPeer(n2, 'vx0', n1, `${n1.podBase}.0`, macs[0]);
  return { name: '(a) plain kernel VXLAN', pods: plainPods(t.nodes, 1450), close: async () => t.close() };
}

/** (b) Flannel's vxlan backend: flannel.1 with static neighbour/FDB entries, pods on the cni0 bridge. */
export async function flannel(): Promise<Topology> {
  const t = twoNodes();
  const [n1, n2] = t.nodes;
  const macs = [vxlanDevice(n1, 'flannel.1'), vxlanDevice(n2, 'flannel.1')];
  staticVxlanPeer(n1, 'flannel.1', n2, `${n2.podBase}.0`, macs[1]);
  staticVxlanPeer(n2, 'flannel.1', n1, `${n1.podBase}.0`, macs[0]);
  for (const n of t.nodes) {
    inNs(n.ns, 'ip', ['link', 'add', 'cni0', 'type', 'bridge']);
    inNs(n.ns, 'ip', ['link', 'set', 'cni0', 'mtu', '1450', 'up']);
    inNs(n.ns, 'ip', ['addr', 'add', `${n.podBase}.1/24`, 'dev', 'cni0']);
  }
  let host = 2;
  const pod = (n: PlainNode) => {
    const ns = createNetns('mbbp');
    const ip = `${n.podBase}.${host}`,
      veth = `f${randomId(3)}`;
    inNs(n.ns, 'ip', ['link', 'add', veth, 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns.name]);
    inNs(n.ns, 'ip', ['link', 'set', veth, 'master', 'cni0', 'up']);
    inNs(ns, 'ip', ['link', 'set', 'eth0', 'up']);
    inNs(ns, 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    inNs(ns, 'ip', ['route', 'add', 'default', 'via', `${n.podBase}.1`]);
    return { ns, ip };
  };
  return {
    name: '(b) Flannel (vxlan + bridge)',
    pods: async () => {
      const a = pod(n1),
        b = pod(n2);
      host = host >= 250 ? 2 : host + 1;
      return pair(a, b, t.nodes);
    },
    close: async () => t.close(),
  };
}

/** (e) routes via the other node's address, no tunnel, no BPF: the ceiling. */
export async function plainRouting(): Promise<Topology> {
  const t = twoNodes();
  const [n1, n2] = t.nodes;
  inNs(n1.ns, 'ip', ['route', 'add', `${n2.podBase}.0/24`, 'via', n2.ip]);
  inNs(n2.ns, 'ip', ['route', 'add', `${n1.podBase}.0/24`, 'via', n1.ip]);
  return { name: '(e) plain routing, no tunnel', pods: plainPods(t.nodes, 1500), close: async () => t.close() };
}
