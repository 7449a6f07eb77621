// The fixture of the replica shortcut tests (policy-endpoint-add, policy-endpoint-del): the policies,
// the apps the endpoints are spread over, and what they compare with, the maps one full sync over
// fresh maps leaves for the same endpoints and stored policies.
import type { MemoryStore } from '../../src/store/index.ts';
import { PolicyEngine } from '../../src/policy/engine.ts';
import type { Endpoint } from '../../src/types.ts';
import { MemoryPolicyOps } from './policy.ts';
import { FIRST_CIDR_IDENTITY, LAST_CIDR_IDENTITY } from '../../src/identity/reserved.ts';
import { decodePolicyKey } from '../../src/policy/map-codec.ts';

/** web admits client on 80 and any port from solo, reaches db on 5432 and two CIDRs (a /32 among
 *  them: an address whose ipcache entry has another source under an endpoint's); db admits web. */
export const REPLICA_POLICIES = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: solo}}]
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  - toCIDR: [198.18.0.0/24, 198.18.1.7/32]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
`;

/** Endpoint i gets app APPS[i % 4]. */
export const APPS = ['web', 'client', 'db', 'other'];
/** The node's own address. */
export const HOST = '192.0.2.1';

export const openEngine = (ops: MemoryPolicyOps, store: MemoryStore) =>
  PolicyEngine.open({ store, ops, hostAddresses: () => [HOST] });

export const snapshot = (ops: MemoryPolicyOps) => ({
  policy: new Map(ops.policy),
  ipcache: new Map(ops.ipcache),
  flags: new Map(ops.flags),
});

/** A snapshot with each CIDR identity as its prefix: two tables number a prefix differently once it
 *  lost its number and got another (a policy-named pod address comes and goes: desired.ts
 *  hiddenAddresses), and what they must agree on is which prefixes the entries name. */
export function byPrefix(s: ReturnType<typeof snapshot>) {
  const cidr = (id: number) => id >= FIRST_CIDR_IDENTITY && id <= LAST_CIDR_IDENTITY;
  const prefixOf = new Map([...s.ipcache].filter(([, id]) => cidr(id)).map(([p, id]) => [id, p]));
  const named = (id: number) => (cidr(id) ? `cidr ${prefixOf.get(id)}` : id);
  return {
    policy: new Map(
      [...s.policy].map(([k, v]) => {
        const key = decodePolicyKey(Buffer.from(k, 'hex'));
        return [JSON.stringify({ ...key, peer: named(key.peer) }), v];
      }),
    ),
    ipcache: new Map([...s.ipcache].map(([p, id]) => [p, named(id)])),
    flags: s.flags,
  };
}

/** The maps one full sync over fresh maps leaves for these endpoints and the stored policies. */
export async function fullSyncOf(eps: Endpoint[], store: MemoryStore): Promise<ReturnType<typeof snapshot>> {
  const fresh = new MemoryPolicyOps(10_000, 10_000);
  for (const ep of eps) fresh.flags.set(ep.hostIfIndex, 0);
  const engine = await openEngine(fresh, store);
  for (const ep of eps) await engine.endpointAttached(ep);
  await engine.start();
  return snapshot(fresh);
}
