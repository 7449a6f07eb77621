// Agent events (Hubble's GetAgentEvents): the agent's start, policy imports and deletions, endpoint
// creations and deletions, kept in a small ring and streamed to followers. Pure: the agent wiring
// (agent/flows-extension.ts) records the events.
import { timestampMs } from './flow.ts';
import type { AgentEvent, Timestamp } from './types.ts';

export interface AgentEventRecord {
  time: Timestamp;
  event: AgentEvent;
}

export interface AgentEventSelect {
  number?: number;
  first?: boolean;
  sinceMs?: number;
  untilMs?: number;
}

export class AgentEventLog {
  private readonly items: AgentEventRecord[] = [];
  private readonly subscribers = new Set<(r: AgentEventRecord) => void>();

  constructor(
    readonly capacity = 1024,
    private readonly now: () => number = Date.now,
  ) {}

  record(event: AgentEvent, at = this.now()): AgentEventRecord {
    const r = { time: { seconds: Math.floor(at / 1000), nanos: (at % 1000) * 1_000_000 }, event };
    this.items.push(r);
    if (this.items.length > this.capacity) this.items.shift();
    for (const s of this.subscribers) s(r);
    return r;
  }

  select(o: AgentEventSelect = {}): AgentEventRecord[] {
    const inWindow = this.items.filter((r) => {
      const t = timestampMs(r.time);
      return (o.sinceMs === undefined || t >= o.sinceMs) && (o.untilMs === undefined || t <= o.untilMs);
    });
    if (!o.number) return inWindow;
    return o.first ? inWindow.slice(0, o.number) : inWindow.slice(-o.number);
  }

  subscribe(fn: (r: AgentEventRecord) => void): () => void {
    this.subscribers.add(fn);
    return () => {
      this.subscribers.delete(fn);
    };
  }

  get size(): number {
    return this.items.length;
  }
}

/** Cilium-style labels of a policy (what PolicyUpdateNotification.labels carries). */
export function policyEventLabels(p: { name: string; namespace?: string; kind?: string }): string[] {
  const short = p.namespace && p.name.startsWith(`${p.namespace}/`) ? p.name.slice(p.namespace.length + 1) : p.name;
  const out = [
    `k8s:io.cilium.k8s.policy.derived-from=${p.kind ?? 'CiliumNetworkPolicy'}`,
    `k8s:io.cilium.k8s.policy.name=${short}`,
  ];
  if (p.namespace) out.push(`k8s:io.cilium.k8s.policy.namespace=${p.namespace}`);
  return out;
}

export interface PolicySnapshot {
  name: string;
  namespace?: string;
  kind?: string;
  revision: number;
  rules: number;
}

/** Policy events for the difference between two snapshots of the policy list. */
export function policyChanges(before: PolicySnapshot[], after: PolicySnapshot[], revision: number): AgentEvent[] {
  const old = new Map(before.map((p) => [p.name, p]));
  const now = new Map(after.map((p) => [p.name, p]));
  const out: AgentEvent[] = [];
  for (const p of after) {
    const prev = old.get(p.name);
    if (prev && prev.revision === p.revision) continue;
    out.push({ type: 'POLICY_UPDATED', policyUpdate: { labels: policyEventLabels(p), revision, ruleCount: p.rules } });
  }
  for (const p of before) {
    if (!now.has(p.name))
      out.push({ type: 'POLICY_DELETED', policyUpdate: { labels: policyEventLabels(p), revision, ruleCount: p.rules } });
  }
  return out;
}
