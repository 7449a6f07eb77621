// Fixtures the policy unit tests share: in-memory datapath maps, endpoints, policy records.
import type { PolicyDatapathOps } from '../../src/policy/apply.ts';
import type { Entry } from '../../src/policy/compile.ts';
import type { buildDesired } from '../../src/policy/desired.ts';
import { PolicyEngine } from '../../src/policy/engine.ts';
import { decodePolicyKey } from '../../src/policy/map-codec.ts';
import { parsePolicies } from '../../src/policy/parse.ts';
import type { PolicyRecord } from '../../src/policy/types.ts';
import { MemoryStore } from '../../src/store/index.ts';
import type { Endpoint } from '../../src/types.ts';
import { endpointRecord } from './endpoint-record.ts';

/** The pinned maps as Maps; a policy write can be made to fail half-way (an E2BIG from the kernel). */
export class MemoryPolicyOps implements PolicyDatapathOps {
  policy = new Map<string, Entry>();
  ipcache = new Map<string, number>();
  /** ifindex -> flags, for the endpoints whose config exists. */
  flags: Map<number, number>;
  failNextPolicyWrite = false;
  writes = 0;

  constructor(
    public policyCapacity = 1000,
    public ipcacheCapacity = 1000,
    endpointIfindexes: number[] = [],
  ) {
    this.flags = new Map(endpointIfindexes.map((i) => [i, 0]));
  }

  readPolicy() {
    return new Map(this.policy);
  }
  writePolicy(upsert: [string, Entry][], remove: string[]) {
    this.writes++;
    if (this.failNextPolicyWrite) {
      this.failNextPolicyWrite = false;
      for (const [k, v] of upsert.slice(0, 1)) this.policy.set(k, v);
      throw new Error('E2BIG');
    }
    for (const [k, v] of upsert) this.policy.set(k, v);
    for (const k of remove) this.policy.delete(k);
  }
  readIpcache() {
    return new Map(this.ipcache);
  }
  writeIpcache(upsert: [string, number][], remove: string[]) {
    for (const [k, v] of upsert) this.ipcache.set(k, v);
    for (const k of remove) this.ipcache.delete(k);
  }
  readEndpointFlags(ifindex: number) {
    return this.flags.get(ifindex);
  }
  writeEndpointFlags(ifindex: number, f: number) {
    if (this.flags.has(ifindex)) this.flags.set(ifindex, f);
  }
  /** The decoded policy entries of one endpoint. */
  entriesOf(endpointId: number) {
    return [...this.policy]
      .map(([k, v]) => ({ ...decodePolicyKey(Buffer.from(k, 'hex')), ...v }))
      .filter((e) => e.endpointId === endpointId);
  }
}

/** An endpoint as the endpoint manager would hand it to the engine (host ifindex 100 + id). */
export function testEndpoint(id: number, labels: Record<string, string>, identity: number, ip: string): Endpoint {
  return endpointRecord(id, {
    network: 'default',
    hostIfName: `h${id}`,
    ips: [{ address: `${ip}/32`, gateway: '10.0.0.1', family: 4, subnet: '10.0.0.0/24' }],
    labels,
    identity,
  });
}

/** Three pods as the compile takes them: web (1001), db (1002) and client (1003), one address each. */
export function webDbClient() {
  const labels = new Map([
    [1001, { app: 'web' }],
    [1002, { app: 'db' }],
    [1003, { app: 'client' }],
  ]);
  const endpoints = [...labels.keys()].map((identity, i) => ({
    key: `e${i}`,
    id: i + 1,
    hostIfIndex: 100 + i,
    identity,
    ips: [`10.0.0.${i + 2}`],
    audit: false,
  }));
  return { labels, endpoints };
}

/** "app: web" pods accept "app: client" on 80/TCP. */
export const WEB_FROM_CLIENT = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`;

/** Parsed policies as stored records (numbered in order); throws on any issue. */
export function toRecords(policies: PolicyRecord['policy'][]): PolicyRecord[] {
  return policies.map((policy, i) => ({ name: policy.name, revision: 1, number: i + 1, policy, source: null, updatedAt: '' }));
}

export function records(yaml: string): PolicyRecord[] {
  const r = parsePolicies(yaml);
  if (r.issues.length) throw new Error(JSON.stringify(r.issues));
  return toRecords(r.policies);
}

const HOST = () => ['192.0.2.1'];

/** A started engine over `ops` with one endpoint per app (ids 1, 2, ...; addresses 10.0.0.2, ...). */
export async function engineWithEndpoints(ops: MemoryPolicyOps, apps: string[], store = new MemoryStore(), hostAddresses = HOST) {
  const engine = await PolicyEngine.open({ store, ops, hostAddresses });
  const eps: Endpoint[] = [];
  for (const [i, app] of apps.entries()) {
    const labels = { app };
    const ep = testEndpoint(i + 1, labels, await engine.identityFor(labels), `10.0.0.${i + 2}`);
    ops.flags.set(ep.hostIfIndex, 0);
    await engine.endpointAttached(ep);
    eps.push(ep);
  }
  await engine.start();
  return { engine, eps, store };
}

/** What an engine restarted on the same store and maps (a full recompute) changes in them. */
export async function restartChanges(
  store: MemoryStore,
  ops: MemoryPolicyOps,
  eps: Endpoint[],
  hostAddresses = HOST,
  remote?: Map<string, number>,
) {
  const restarted = await PolicyEngine.open({ store, ops, hostAddresses });
  if (remote) void restarted.setRemoteEndpoints(remote); // taken by start()'s sync
  for (const ep of eps) await restarted.endpointAttached(ep);
  return restarted.start();
}

/** restartChanges() when the increments added up to the whole. */
export const NO_CHANGES = { policyUpserts: 0, policyRemovals: 0, ipcacheUpserts: 0, ipcacheRemovals: 0, flagChanges: 0 };

/** A desired state's policy entries, decoded, with CIDR peers as their prefixes (two tables number
 *  CIDR identities differently), in a stable order: comparable between two builds. */
export function entriesByPrefix(d: ReturnType<typeof buildDesired>) {
  const prefixOf = new Map([...d.ipcache].map(([p, id]) => [id, p]));
  return [...d.policy.values()]
    .flatMap((e) => [...e.entries])
    .map(([k, v]) => {
      const key = decodePolicyKey(Buffer.from(k, 'hex'));
      return { ...key, peer: prefixOf.get(key.peer) ?? key.peer, action: v.action, ruleId: v.ruleId };
    })
    .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
}
