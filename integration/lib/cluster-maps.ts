// What a node's pinned BPF maps hold, read with bpftool (not through the agent): the ipcache
// (prefix -> identity) and the policy map (endpoint, peer identity, direction, port -> verdict); and
// the policy the cluster tests and benchmark import, and the wait for a policy to reach the datapath.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import {
  decodeIpcacheKey,
  decodeIpcacheValue,
  decodePolicyKey,
  decodePolicyValue,
  type PolicyKey,
} from '../../shared/src/policy/map-codec.ts';
import type { TestCluster, TestPod } from './cluster.ts';
import { eventually } from './proc.ts';
import type { TestNetns } from './netns.ts';
import { handshake } from './probe.ts';

interface DumpEntry {
  key: string[];
  value: string[];
}

function dump(file: string): { key: Buffer; value: Buffer }[] {
  const out = execFileSync('bpftool', ['-j', 'map', 'dump', 'pinned', file], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
  return (JSON.parse(out) as DumpEntry[]).map((e) => ({
    key: Buffer.from(e.key.map((x) => parseInt(x, 16))),
    value: Buffer.from(e.value.map((x) => parseInt(x, 16))),
  }));
}

/** Every other node's ipcache maps the pod's address to its identity (the pod is known cluster-wide). */
export function knownOnOtherNodes(c: TestCluster, pod: TestPod): boolean {
  return c.nodes
    .filter((n) => n !== pod.node)
    .every((n) => readIpcache(n.bpffsDir).get(`${pod.ip4}/32`) === pod.endpoint.identity);
}

/** prefix ("10.1.0.5/32") -> identity */
export function readIpcache(bpffsDir: string): Map<string, number> {
  return new Map(dump(path.join(bpffsDir, 'ipcache')).map((e) => [decodeIpcacheKey(e.key), decodeIpcacheValue(e.value)]));
}

/** tunnel_map: prefix ("10.1.0.0/24") -> the node id its entry names. */
export function readTunnelMap(bpffsDir: string): Map<string, number> {
  return new Map(dump(path.join(bpffsDir, 'tunnel_map')).map((e) => [decodeIpcacheKey(e.key), e.value.readUInt32LE(4)]));
}

export function readPolicy(bpffsDir: string): (PolicyKey & { action: string; ruleId: number })[] {
  return dump(path.join(bpffsDir, 'policy')).map((e) => {
    const v = decodePolicyValue(e.value);
    return { ...decodePolicyKey(e.key), action: String(v.action), ruleId: v.ruleId };
  });
}

/** The policy the cluster tests and the benchmark import: app=web accepts TCP `port` from app=client. */
export function webFromClient(name = 'web-from-client', port = 80): string {
  return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ${name}
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "${port}"
        protocol: TCP
`;
}

/** Until a TCP handshake from `from` to ip:port times out: the policy just imported that denies it
 *  has reached the datapath (20 s at most; returns the ms it took). Not a probe's timeout: on a
 *  loaded machine that can be an echo server not yet scheduled while the connection still passes. */
export function untilDropped(what: string, from: TestNetns, ip: string, port: number): Promise<number> {
  return eventually(what, async () => (await handshake(from, ip, port)) === 'timeout', 20_000, 200);
}
