// Where cluster state lives in etcd: every key under one prefix per cluster, each concern in its own
// subtree, values JSON. Pure: key builders, key parsers and the value shapes. The README's "Cluster
// store layout" section documents the same table for operators.
//
//   membrane/v1/<cluster>/nodes/<node>                       NodeRecord          node's lease
//   membrane/v1/<cluster>/identities/id/<id>                 IdentityRecord      none (operator GC)
//   membrane/v1/<cluster>/identities/labels/<sha256>         "<id>"              none (operator GC)
//   membrane/v1/<cluster>/identities/refs/<id>/<node>        IdentityRef         node's lease
//   membrane/v1/<cluster>/ipcache/<address>                  IpcacheRecord       owning node's lease
//   membrane/v1/<cluster>/policies/meta                      PolicyMeta          none
//   membrane/v1/<cluster>/policies/records/<name>            PolicyRecord        none
//   membrane/v1/<cluster>/podcidrs/nodes/<node>              PodCidrAllocation   none (operator)
//   membrane/v1/<cluster>/podcidrs/blocks/<v4|v6>/<cidr>     "<node>"            none (operator)
//   membrane/v1/<cluster>/podcidrs/quarantine/<v4|v6>/<cidr> "<node>" (gone)    none (operator)
//   membrane/v1/<cluster>/operator/leader/<lease hex>        operator id         candidate's lease
import crypto from 'node:crypto';
import type { Labels } from '../identity/labels.ts';
import { canonicalLabels } from '../identity/labels.ts';

export const ROOT = 'membrane/v1';

const CLUSTER_NAME = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/;
const NODE_NAME = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

export function validClusterName(name: string): boolean {
  return CLUSTER_NAME.test(name);
}
export function validNodeName(name: string): boolean {
  return NODE_NAME.test(name);
}

/** Key builders for one cluster. Prefixes end with '/' so "n1" never matches "n10". */
export function layout(cluster: string) {
  if (!validClusterName(cluster))
    throw new RangeError(`cluster name "${cluster}" must be 1-32 of a-z 0-9 - (starting and ending with a letter or digit)`);
  const base = `${ROOT}/${cluster}/`;
  return {
    base,
    nodes: `${base}nodes/`,
    node: (name: string) => `${base}nodes/${name}`,
    identityIds: `${base}identities/id/`,
    identityId: (id: number) => `${base}identities/id/${id}`,
    identityLabels: (labels: Labels) => `${base}identities/labels/${labelsDigest(labels)}`,
    identityRefs: `${base}identities/refs/`,
    identityRefsOf: (id: number) => `${base}identities/refs/${id}/`,
    identityRef: (id: number, node: string) => `${base}identities/refs/${id}/${node}`,
    ipcache: `${base}ipcache/`,
    ipcacheEntry: (address: string) => `${base}ipcache/${address}`,
    policies: `${base}policies/`,
    policyMeta: `${base}policies/meta`,
    policyRecords: `${base}policies/records/`,
    policyRecord: (name: string) => `${base}policies/records/${name}`,
    podCidrNodes: `${base}podcidrs/nodes/`,
    podCidrNode: (node: string) => `${base}podcidrs/nodes/${node}`,
    podCidrBlocks: `${base}podcidrs/blocks/`,
    podCidrBlock: (cidr: string) => `${base}podcidrs/blocks/${cidr.includes(':') ? 'v6' : 'v4'}/${cidr.replace('/', '_')}`,
    podCidrQuarantines: `${base}podcidrs/quarantine/`,
    podCidrQuarantine: (cidr: string) =>
      `${base}podcidrs/quarantine/${cidr.includes(':') ? 'v6' : 'v4'}/${cidr.replace('/', '_')}`,
    operatorLeader: `${base}operator/leader/`,
  };
}

export type Layout = ReturnType<typeof layout>;

/** The part of `key` after `prefix` (the caller listed or watched `prefix`). */
export function tail(key: string, prefix: string): string {
  if (!key.startsWith(prefix)) throw new RangeError(`key ${key} is not under ${prefix}`);
  return key.slice(prefix.length);
}

/** A fixed-length name for a label set (label values may hold '/' and be long). */
export function labelsDigest(labels: Labels): string {
  return crypto.createHash('sha256').update(canonicalLabels(labels)).digest('hex');
}

/** "10.1.0.0_24" (a block key's tail) -> "10.1.0.0/24". */
export function blockCidr(tailText: string): string {
  const slash = tailText.lastIndexOf('_');
  return `${tailText.slice(0, slash)}/${tailText.slice(slash + 1)}`;
}

// ---- values ------------------------------------------------------------------------------------

/** What every agent publishes about its node; what part 2's overlay needs to reach it. */
export interface NodeRecord {
  name: string;
  cluster: string;
  /** Underlay addresses other nodes reach this node at (the first is the tunnel endpoint). */
  addresses: { type: 'InternalIP'; ip: string }[];
  /** Pod CIDRs the operator allocated to this node (what its default network uses). */
  podCidrs: { ipv4?: string; ipv6?: string };
  /** Small cluster-unique number for this node (the position of its pod CIDR block); 0 = none yet. */
  nodeId: number;
  /** Pod CIDRs the node would like back (from its state dir after a restart). */
  requestedPodCidrs?: { ipv4?: string; ipv6?: string };
  /** Where the node's flow observer serves, for the relay: "host:port" over TCP (tls: certificates
   *  from the cluster CA), or "unix:///path" (a relay on the same machine, e.g. the test harness). */
  observer?: { address: string; tls: boolean };
  agentVersion: string;
  /** When this agent registered and when it last refreshed the record (ISO time). */
  registeredAt: string;
  updatedAt: string;
}

export interface IdentityRecord {
  id: number;
  labels: Labels;
  createdAt: string;
  /** The node whose agent allocated it first. */
  createdBy: string;
}

export interface IdentityRef {
  since: string;
}

/** An endpoint address and who it is: the identity the datapath classifies it as, and its node. */
export interface IpcacheRecord {
  identity: number;
  node: string;
  /** The node's underlay address (the tunnel endpoint part 2 sends to). */
  nodeIp: string;
  /** containerId/ifName on that node (for `membrane` output; not used by the datapath). */
  endpoint?: string;
}

export interface PolicyMeta {
  /** Bumped by every import or delete that changes the set (the "cluster revision"). */
  revision: number;
  /** Next small policy number to try (rule ids are derived from it, cluster-wide). */
  nextNumber: number;
  updatedAt: string;
  updatedBy: string;
}

export interface PodCidrAllocation {
  ipv4?: string;
  ipv6?: string;
  nodeId: number;
  allocatedAt: string;
}

export function encode(value: unknown): string {
  return JSON.stringify(value);
}

/** JSON value or undefined (a foreign or damaged value is skipped, never fatal). */
export function decode<T>(text: string | Buffer): T | undefined {
  try {
    return JSON.parse(text.toString()) as T;
  } catch {
    return undefined;
  }
}
