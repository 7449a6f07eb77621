// What a proxy worker knows of the policy: the local endpoints (addresses, identity), the ipcache, and
// for each endpoint direction a policy selects (default deny or any entry), the whole compiled table of
// that direction, L7 entries or not: after a policy change the proxy must tell "still allowed, now
// without L7 rules" from "now denied" on connections it already holds. Leaving out the directions that
// lost their last HTTP rule made them read as unrestricted, and a keep-alive connection accepted under
// the old policy went on reaching a server that L3/L4 now denied to its client (fail open).
// Built by the agent from the policy engine's compiled state; plain JSON so it crosses the control
// socket. Pure.
import type { DirectionPolicy, LabelPolicy } from '../../policy/compile.ts';
import type { HttpRuleRef, L7Set } from '../../policy/l7.ts';
import { canonicalLabels, type Labels } from '../../identity/labels.ts';

/** [peer identity (0 any), l4 code (proto << 16 | dport), action (0 allow, 1 deny), rule id, index into l7Sets or -1] */
export type SnapshotEntry = [number, number, 0 | 1, number, number];

export interface SnapshotDirection {
  defaultDeny: boolean;
  entries: SnapshotEntry[];
}

export interface SnapshotPolicy {
  ingress?: SnapshotDirection;
  egress?: SnapshotDirection;
}

export interface SnapshotEndpoint {
  id: number;
  identity: number;
  ips: string[];
  /** Index into policies; -1 when no policy selects this endpoint in either direction (unrestricted). */
  policy: number;
}

export interface ProxySnapshot {
  /** The policy repository revision this was built from. */
  revision: number;
  endpoints: SnapshotEndpoint[];
  policies: SnapshotPolicy[];
  l7Sets: HttpRuleRef[][];
  /** prefix -> identity, as in the datapath's ipcache. */
  ipcache: [string, number][];
}

export interface SnapshotInput {
  revision: number;
  endpoints: { id: number; identity: number; ips: string[] }[];
  labelsOf: (identity: number) => Labels | undefined;
  policyFor: (labels: Labels) => LabelPolicy;
  ipcache: Map<string, number>;
}

/** Whether a direction restricts anything: without a table the proxy lets a side's traffic through. */
function enforced(dp: DirectionPolicy): boolean {
  return dp.defaultDeny || dp.columns.size > 0;
}

/** Whether the snapshot has HTTP rules on some endpoint (the workers are wanted). */
export function hasHttpEntries(s: ProxySnapshot): boolean {
  return s.l7Sets.length > 0;
}

export function buildSnapshot(input: SnapshotInput): ProxySnapshot {
  const policies: SnapshotPolicy[] = [];
  const l7Sets: HttpRuleRef[][] = [];
  const setIndex = new Map<L7Set, number>();
  const policyIndex = new Map<string, number>();
  const direction = (dp: DirectionPolicy): SnapshotDirection => {
    const entries: SnapshotEntry[] = [];
    for (const [peer, col] of dp.columns) {
      for (const [code, e] of col) {
        let l7 = -1;
        // DNS entries are the agent's DNS proxy's (agent/dns.ts): to the HTTP workers they are plain allows.
        if (e.l7?.kind === 'http') {
          let i = setIndex.get(e.l7);
          if (i === undefined) {
            i = l7Sets.push(e.l7.rules) - 1;
            setIndex.set(e.l7, i);
          }
          l7 = i;
        }
        entries.push([peer, code, e.action === 'deny' ? 1 : 0, e.ruleId, l7]);
      }
    }
    return { defaultDeny: dp.defaultDeny, entries };
  };
  const endpoints = input.endpoints.map((ep): SnapshotEndpoint => {
    const labels = input.labelsOf(ep.identity) ?? { 'reserved:init': '' };
    const key = canonicalLabels(labels);
    let idx = policyIndex.get(key);
    if (idx === undefined) {
      const lp = input.policyFor(labels);
      const p: SnapshotPolicy = {};
      if (enforced(lp.ingress)) p.ingress = direction(lp.ingress);
      if (enforced(lp.egress)) p.egress = direction(lp.egress);
      idx = p.ingress || p.egress ? policies.push(p) - 1 : -1;
      policyIndex.set(key, idx);
    }
    return { id: ep.id, identity: ep.identity, ips: ep.ips, policy: idx };
  });
  return { revision: input.revision, endpoints, policies, l7Sets, ipcache: [...input.ipcache] };
}
