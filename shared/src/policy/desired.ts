// What the datapath maps should hold for a set of policies and endpoints: policy entries (by encoded
// key), ipcache prefixes and endpoint flags. Pure; the engine diffs it against the maps.
import type { Labels } from '../identity/labels.ts';
import { RESERVED, reservedLabels } from '../identity/reserved.ts';
import type { CidrIdentities } from '../identity/cidr.ts';
import { desiredIpcache } from '../identity/ipcache.ts';
import { PolicyCompiler, l4decode, type Entry, type Universe } from './compile.ts';
import { encodePolicyKey } from './map-codec.ts';
import { endpointFlags, selectionFor } from './selection.ts';
import type { Peer, PolicyRecord } from './types.ts';
import type { L7Set } from './l7.ts';

export interface EngineEndpoint {
  /** containerId/ifName */
  key: string;
  id: number;
  hostIfIndex: number;
  identity: number;
  ips: string[];
  audit: boolean;
}

export interface DesiredInput {
  records: PolicyRecord[];
  endpoints: EngineEndpoint[];
  labelsOf: (identity: number) => Labels | undefined;
  hostAddresses: string[];
  /** Synced to the prefixes the records name (mutated: pass a copy when the result may be dropped). */
  cidrs: CidrIdentities;
  /** Where each kind of L7 proxy listens; L7 entries without one are refused (never opened). */
  proxyPorts?: Partial<Record<L7Set['kind'], number>>;
  /** Other nodes' endpoint addresses (cluster mode): prefix -> identity. */
  remote?: Map<string, number>;
}

export interface Desired {
  policy: Map<string, Entry>;
  ipcache: Map<string, number>;
  /** host ifindex -> policy flag bits */
  flags: Map<number, number>;
  compiler: PolicyCompiler;
}

/** Every prefix a policy names, including `except` ones (they need their own ipcache entry). */
export function prefixesOf(records: PolicyRecord[]): Set<string> {
  const out = new Set<string>();
  const visit = (p: Peer) => {
    if (p.kind !== 'cidr') return;
    out.add(p.cidr);
    for (const e of p.except) out.add(e);
  };
  for (const r of records) for (const s of r.policy.specs) for (const rule of s.rules) if (rule.peers !== 'all') rule.peers.forEach(visit);
  return out;
}

/** The identities endpoint selectors choose from: those of live endpoints, plus init and health. */
export function universeOf(endpoints: { identity: number }[], labelsOf: (id: number) => Labels | undefined, cidrs: CidrIdentities): Universe {
  const ids = new Map<number, Labels>([[RESERVED.init, reservedLabels('init')], [RESERVED.health, reservedLabels('health')]]);
  for (const ep of endpoints) {
    if (ids.has(ep.identity)) continue;
    const labels = labelsOf(ep.identity);
    if (labels) ids.set(ep.identity, labels);
  }
  return { identities: [...ids].map(([id, labels]) => ({ id, labels })), cidrs };
}

/** An L7 entry as the datapath holds it: allow, redirected to its proxy's port. Without a proxy
 *  (imports are refused then, but the agent may have been restarted without it) it fails closed. */
function withProxy(entry: Entry, ports: DesiredInput['proxyPorts']): Entry {
  const port = ports?.[entry.l7!.kind];
  return port ? { ...entry, proxyPort: port } : { action: 'deny', ruleId: entry.ruleId };
}

/** The L7 proxy kinds a set of policies needs. */
export function l7KindsOf(records: { policy: PolicyRecord['policy'] }[]): Set<L7Set['kind']> {
  const out = new Set<L7Set['kind']>();
  for (const r of records) for (const s of r.policy.specs) for (const rule of s.rules) if (rule.l7?.length) out.add('http');
  return out;
}

/** A compiler and what it was built from: reused while records, peer identities and prefixes stay. */
export interface CompileCache { records: PolicyRecord[]; key: string; compiler: PolicyCompiler }

export function buildDesired(input: DesiredInput, cache?: { current?: CompileCache }): Desired {
  input.cidrs.sync(prefixesOf(input.records));
  // Peers selectors choose from: local endpoints, plus other nodes' endpoints in cluster mode.
  let peers: { identity: number }[] = input.endpoints;
  if (input.remote?.size) {
    const seen = new Set(input.endpoints.map((e) => e.identity));
    peers = [...input.endpoints];
    for (const id of input.remote.values()) if (!seen.has(id)) { seen.add(id); peers.push({ identity: id }); }
  }
  const universe = universeOf(peers, input.labelsOf, input.cidrs);
  const key = `${input.cidrs.version}|${universe.identities.map((i) => i.id).sort((a, b) => a - b).join(',')}`;
  let compiler: PolicyCompiler;
  if (cache?.current && cache.current.records === input.records && cache.current.key === key) {
    compiler = cache.current.compiler; // e.g. a new endpoint with an identity we know: no recompile
  } else {
    compiler = new PolicyCompiler(input.records, universe);
    if (cache) cache.current = { records: input.records, key, compiler };
  }
  const policy = new Map<string, Entry>();
  const flags = new Map<number, number>();
  for (const ep of input.endpoints) {
    const labels = input.labelsOf(ep.identity) ?? reservedLabels('init');
    flags.set(ep.hostIfIndex, endpointFlags(selectionFor(input.records, labels), ep.audit));
    const lp = compiler.forLabels(labels);
    for (const direction of ['ingress', 'egress'] as const) {
      for (const [peer, col] of lp[direction].columns) {
        for (const [code, entry] of col) {
          const { proto, dport } = l4decode(code);
          policy.set(encodePolicyKey({ endpointId: ep.id, peer, direction, proto, dport }).toString('hex'), entry.l7 ? withProxy(entry, input.proxyPorts) : entry);
        }
      }
    }
  }
  const ipcache = desiredIpcache({ endpoints: input.endpoints, hostAddresses: input.hostAddresses, cidrs: input.cidrs, remote: input.remote });
  return { policy, ipcache, flags, compiler };
}
